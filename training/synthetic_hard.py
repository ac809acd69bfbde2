"""The hard synthetic benchmark (preset ``hard-v1``): faults that are quiet, short or small, under a domain shift.

Why: the plain synthetic set (:func:`soundwatch.simulator.write_dcase_dataset`) is easy — an untrained
encoder with the kNN score reaches ~0.94 AUC on it — so it cannot rank methods. ``hard-v1`` keeps
the simulator's machines (:class:`soundwatch.simulator.MachineSound`) and makes the task look like a
plant's:

* **DCASE 2022+ layout with a domain shift**: ``<type>/{train,test}/section_XX_{source,target}_
  {train,test}_{normal,anomaly}_NNNN_<attributes>.wav``. Many source training clips, a few target
  ones; the target domain runs at another speed (operating condition) over another background.
* **normal variation that looks like faults**: per-clip speed jitter, a background machine at a
  random level, and in a share of clips one random, loud, one-off impact (a door, a dropped tool):
  a lone loud event is normal, so "any transient" is no detector.
* **faults that are hard to hear**: ``clicks`` (20-120 ms band-limited bursts repeating every
  1-2.5 s, 6-12 dB below the machine's RMS), ``dropout`` (repeating 0.1-0.3 s level dips of 5-8 dB),
  ``harmonic`` (one harmonic 4.5-6.5 dB louder or softer), ``tone`` (a faint inter-harmonic tone,
  16-22 dB down), ``resonance`` (the structural resonance 6-10 % higher).

Measured (seed 0, no training): per-band max + 1-NN 0.586 AUC, per-band mean + 1-NN 0.583, an
untrained encoder + kNN 0.596 (the source domain is learnable, ~0.5-1.0 per fault; the target
domain, with 4 training clips per section, is near chance for all three).

Everything derives from ``(preset, seed, type, section, clip)`` through SHA-256, so the same seed
writes the same bytes (16-bit PCM) on every machine. A preset never changes once published: a
harder or different set is a new version (``hard-v2``), so numbers measured on ``hard-v1`` stay
comparable. The attribute string names the domain's condition (``spd_<percent>_bg_<A|B>``) and,
for anomalies, the fault (``..._flt_<kind>``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from soundwatch.simulator import Fault, MachineSound, signature_for

FAULT_KINDS: tuple[str, ...] = ("clicks", "dropout", "harmonic", "tone", "resonance")


@dataclass(frozen=True)
class HardPreset:
    """Sizes and difficulty of one benchmark version (values are part of the version: never edit one)."""

    name: str
    machine_types: tuple[str, ...] = ("fan", "valve")
    sections: int = 2
    n_train_source: int = 16
    n_train_target: int = 4
    n_test: int = 10  # normal and anomalous test clips per section and domain, each
    seconds: float = 10.0
    sample_rate: int = 16_000
    target_speed: float = 1.07
    speed_jitter: float = 0.01
    background_db: tuple[float, float] = (-16.0, -12.0)
    target_background_extra_db: float = 4.0
    impact_share: float = 0.3
    impact_db: tuple[float, float] = (-8.0, -2.0)
    click_db: tuple[float, float] = (-12.0, -6.0)
    dropout_db: tuple[float, float] = (5.0, 8.0)
    harmonic_db: tuple[float, float] = (4.5, 6.5)
    tone_db: tuple[float, float] = (-22.0, -16.0)
    resonance_shift: tuple[float, float] = (0.06, 0.10)


PRESETS: dict[str, HardPreset] = {"hard-v1": HardPreset("hard-v1")}
BACKGROUND_TYPES = {"source": "gearbox", "target": "pump"}


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def _db(v: float) -> float:
    return float(10.0 ** (v / 20.0))


def _bandpass(x: np.ndarray, centre: float, sr: int, q: float = 3.0) -> np.ndarray:
    from scipy.signal import lfilter  # deferred: loads scipy

    w0 = 2 * math.pi * min(centre, 0.45 * sr) / sr
    alpha = math.sin(w0) / (2 * q)
    b = np.array([alpha, 0.0, -alpha]) / (1 + alpha)
    a = np.array([1.0, -2 * math.cos(w0) / (1 + alpha), (1 - alpha) / (1 + alpha)])
    return lfilter(b, a, x)


def _events(n: int, sr: int, r: np.random.Generator, period: tuple[float, float]) -> list[int]:
    """Start samples of events repeating every ``period`` s (jittered), from a random phase."""
    starts, pos = [], r.uniform(0.1, period[1]) * sr
    while pos < n:
        starts.append(int(pos))
        pos += r.uniform(*period) * sr
    return starts


def _clicks(n: int, sr: int, level: float, r: np.random.Generator, centre: float) -> np.ndarray:
    """Short band-limited bursts (20-120 ms, Hann envelope) repeating every 1-2.5 s at ``level`` RMS."""
    out = np.zeros(n)
    dur = int(r.uniform(0.02, 0.12) * sr)
    for s in _events(n, sr, r, (1.0, 2.5)):
        burst = _bandpass(r.standard_normal(dur), centre, sr) * np.hanning(dur)
        burst *= level / max(_rms(burst), 1e-12)
        end = min(n, s + dur)
        out[s:end] += burst[: end - s]
    return out


def _dropout_gain(n: int, sr: int, depth_db: float, r: np.random.Generator) -> np.ndarray:
    """A gain curve with repeating 0.1-0.3 s dips of ``depth_db`` (smoothed edges)."""
    gain = np.ones(n)
    dur = int(r.uniform(0.1, 0.3) * sr)
    dip = 1.0 - (1.0 - _db(-depth_db)) * np.hanning(dur)
    for s in _events(n, sr, r, (1.2, 2.5)):
        end = min(n, s + dur)
        gain[s:end] *= dip[: end - s]
    return gain


def _impact(n: int, sr: int, level: float, r: np.random.Generator) -> np.ndarray:
    """One decaying resonant impact at a random time and frequency (a normal plant event)."""
    out = np.zeros(n)
    dur = int(0.15 * sr)
    t = np.arange(dur) / sr
    hit = np.sin(2 * math.pi * r.uniform(400, 5000) * t) * np.exp(-t / r.uniform(0.01, 0.04))
    s = int(r.uniform(0, max(1, n - dur)))
    out[s : s + dur] = hit * level / max(_rms(hit[: int(0.03 * sr)]), 1e-12)
    return out


@dataclass(frozen=True)
class ClipSpec:
    machine_type: str
    section: int
    domain: str  # "source" | "target"
    split: str  # "train" | "test"
    label: str  # "normal" | "anomaly"
    index: int
    fault: str | None = None

    def speed_percent(self, preset: HardPreset) -> int:
        return int(round(100 * (preset.target_speed if self.domain == "target" else 1.0)))

    def file_name(self, preset: HardPreset) -> str:
        bg = "A" if self.domain == "source" else "B"
        attrs = f"spd_{self.speed_percent(preset)}_bg_{bg}" + (f"_flt_{self.fault}" if self.fault else "")
        return f"section_{self.section:02d}_{self.domain}_{self.split}_{self.label}_{self.index:04d}_{attrs}.wav"


def clip_specs(preset: HardPreset) -> list[ClipSpec]:
    """Every clip of the preset (anomalies cycle through :data:`FAULT_KINDS`)."""
    specs: list[ClipSpec] = []
    for mtype in preset.machine_types:
        for sec in range(preset.sections):
            idx = 0
            for domain, n_train in (("source", preset.n_train_source), ("target", preset.n_train_target)):
                for _ in range(n_train):
                    specs.append(ClipSpec(mtype, sec, domain, "train", "normal", idx))
                    idx += 1
            for d_i, domain in enumerate(("source", "target")):
                for _ in range(preset.n_test):
                    specs.append(ClipSpec(mtype, sec, domain, "test", "normal", idx))
                    idx += 1
                for j in range(preset.n_test):
                    fault = FAULT_KINDS[(j + d_i + sec) % len(FAULT_KINDS)]
                    specs.append(ClipSpec(mtype, sec, domain, "test", "anomaly", idx, fault))
                    idx += 1
    return specs


def render_hard_clip(spec: ClipSpec, preset: HardPreset, seed: int = 0) -> np.ndarray:
    """The audio (float32 mono) of one clip of ``preset``."""
    sr, n = preset.sample_rate, int(round(preset.seconds * preset.sample_rate))
    key = (preset.name, seed, spec.machine_type, spec.section, spec.index)
    r = _rng("clip", *key)
    machine_id = f"section_{spec.section:02d}"
    sig = signature_for(spec.machine_type, machine_id, seed)
    fr = _rng("fault", *key)
    if spec.fault == "harmonic":
        amps = list(sig.harmonic_amps)
        k = int(fr.integers(1, min(5, len(amps))))
        amps[k] *= _db(float(fr.choice([-1.0, 1.0])) * fr.uniform(*preset.harmonic_db))
        sig = replace(sig, harmonic_amps=tuple(amps))
    sound = MachineSound(sig, sr, instance=spec.index, seed=seed)
    base_speed = preset.target_speed if spec.domain == "target" else 1.0
    sound.set_speed(base_speed * (1.0 + r.uniform(-preset.speed_jitter, preset.speed_jitter)))
    if spec.fault == "resonance":
        sound.set_fault(Fault.RESONANCE_SHIFT, float(fr.uniform(*preset.resonance_shift)))
    machine = sound.render(n).astype(np.float64)
    level = _rms(machine)
    if spec.fault == "dropout":
        machine *= _dropout_gain(n, sr, float(fr.uniform(*preset.dropout_db)), fr)
    bg_type = BACKGROUND_TYPES[spec.domain]
    background = MachineSound(
        signature_for(bg_type, f"plant_{spec.section}", seed), sr, instance=spec.index, seed=seed
    ).render(n)
    bg_db = r.uniform(*preset.background_db) + (preset.target_background_extra_db if spec.domain == "target" else 0.0)
    out = machine + background * (level * _db(bg_db) / max(_rms(background), 1e-12))
    if r.random() < preset.impact_share:
        out += _impact(n, sr, level * _db(r.uniform(*preset.impact_db)), r)
    if spec.fault == "clicks":
        centre = float(_rng("click-band", preset.name, seed, spec.machine_type, spec.section).uniform(1500, 4500))
        out += _clicks(n, sr, level * _db(fr.uniform(*preset.click_db)), fr, centre)
    elif spec.fault == "tone":
        f0 = sig.f0_hz * base_speed
        freq = f0 * (int(fr.integers(2, 6)) + 0.5)
        t = np.arange(n) / sr
        out += (
            math.sqrt(2)
            * level
            * _db(fr.uniform(*preset.tone_db))
            * np.sin(2 * math.pi * freq * t + fr.uniform(0, 6.3))
        )
    return np.clip(out, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class HardSummary:
    root: Path
    preset: str
    seed: int
    files: int


def write_hard_dataset(root: Path | str, preset: str | HardPreset = "hard-v1", seed: int = 0) -> HardSummary:
    """Write the benchmark (16-bit PCM wav) under ``root`` and return what was written."""
    import soundfile as sf  # deferred: loads soundfile

    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    p = PRESETS[preset] if isinstance(preset, str) else preset
    root = Path(root)
    specs = clip_specs(p)
    for spec in specs:
        folder = root / spec.machine_type / spec.split
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / spec.file_name(p), render_hard_clip(spec, p, seed), p.sample_rate, subtype="PCM_16")
    return HardSummary(root, p.name, seed, len(specs))
