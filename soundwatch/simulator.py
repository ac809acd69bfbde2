"""Deterministic synthetic machine sounds: for tests, the simulator gateway and demos.

Why synthetic audio at all: the real recordings we can ship (real-mini) have no train split, so
tests that must show "a model learns normal and flags anomalies" need data whose ground truth we
control. The generator mimics what makes ASD hard on real machines — every machine *ID* of a
type sounds similar (same family of harmonic sounds) but has its own signature — and injects the
fault physics the literature describes:

* ``BEARING_TICKS``: periodic impacts (a defect frequency of a few to ~20 Hz) exciting a
  high-frequency structural resonance (a decaying sinusoid per tick).
* ``IMBALANCE``: amplitude modulation at the shaft rate plus extra energy at the 1x harmonic.
* ``RESONANCE_SHIFT``: the structural resonance that shapes the harmonic envelope moves up
  (loose mount, crack), so the relative harmonic amplitudes change while the pitch stays.
* ``RUB``: intermittent broadband friction bursts (band-limited noise gated on and off).

A :class:`MachineSound` is a *stateful streaming* generator: consecutive ``render(n)`` calls
continue every oscillator phase, the noise filter state and the tick schedule, so
``render(a) ++ render(b)`` equals ``render(a + b)`` for the same generator state (bit-exact
apart from float rounding), which is what a gateway streaming 1 s chunks needs.

Determinism: everything derives from ``(machine_type, machine_id, seed)`` through SHA-256, never
from Python's salted ``hash``; the same arguments give the same audio in every process.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

#: Machine types with a family character (fundamental range, harmonic count, noise colour range).
#: Any other type name works too: it gets a generic family derived from its name.
MACHINE_FAMILIES: dict[str, dict[str, tuple[float, float]]] = {
    "fan": {"f0": (45.0, 75.0), "harmonics": (6, 10), "noise_level": (0.25, 0.45), "colour": (0.6, 0.9)},
    "pump": {"f0": (90.0, 150.0), "harmonics": (5, 9), "noise_level": (0.15, 0.3), "colour": (0.3, 0.7)},
    "slider": {"f0": (140.0, 220.0), "harmonics": (4, 8), "noise_level": (0.1, 0.25), "colour": (0.0, 0.4)},
    "valve": {"f0": (200.0, 320.0), "harmonics": (3, 6), "noise_level": (0.1, 0.2), "colour": (0.2, 0.6)},
    "gearbox": {"f0": (60.0, 110.0), "harmonics": (8, 14), "noise_level": (0.1, 0.25), "colour": (0.4, 0.8)},
}


class Fault(str, Enum):
    """Fault physics the generator can inject (value = the name used in schedules and CLIs)."""

    BEARING_TICKS = "bearing_ticks"
    IMBALANCE = "imbalance"
    RESONANCE_SHIFT = "resonance_shift"
    RUB = "rub"

    @classmethod
    def parse(cls, text: str) -> Fault:
        try:
            return cls(text.strip().lower())
        except ValueError:
            valid = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown fault {text!r}; valid faults: {valid}") from None


def _rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from a stable digest of ``parts`` (process-independent)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Signature:
    """The acoustic identity of one machine.

    ``harmonic_amps[i]`` is the amplitude of harmonic ``i+1`` *before* the resonance envelope;
    ``resonance_hz``/``resonance_q`` describe the structural resonance that shapes it.
    ``noise_colour`` in [0, 1): the pole of a one-pole low-pass on white noise (0 = white,
    0.9 = strongly red). ``am_rate_hz``/``am_depth`` give the normal amplitude modulation (blade
    pass, pulsing flow); ``fm_rate_hz``/``fm_depth`` a slow speed wobble.
    """

    machine_type: str
    machine_id: str
    f0_hz: float
    harmonic_amps: tuple[float, ...]
    resonance_hz: float
    resonance_q: float
    am_rate_hz: float
    am_depth: float
    fm_rate_hz: float
    fm_depth: float
    noise_level: float
    noise_colour: float
    tick_rate_hz: float
    tick_resonance_hz: float
    level: float = 0.25


def _family(machine_type: str) -> dict[str, tuple[float, float]]:
    if machine_type in MACHINE_FAMILIES:
        return MACHINE_FAMILIES[machine_type]
    r = _rng("family", machine_type)
    lo = float(r.uniform(40, 250))
    return {
        "f0": (lo, lo * 1.6),
        "harmonics": (4, 10),
        "noise_level": (0.1, 0.35),
        "colour": (0.0, 0.85),
    }


def signature_for(machine_type: str, machine_id: str, seed: int = 0) -> Signature:
    """The deterministic signature of ``machine_type``/``machine_id`` (different IDs differ clearly)."""
    fam = _family(machine_type)
    r = _rng("signature", machine_type, machine_id, seed)
    n_harm = int(r.integers(int(fam["harmonics"][0]), int(fam["harmonics"][1]) + 1))
    # Harmonic amplitudes: a decaying envelope with ID-specific ripples (missing/strong partials).
    decay = r.uniform(0.6, 1.4)
    amps = np.array([(1.0 / (k + 1) ** decay) * r.uniform(0.2, 1.0) for k in range(n_harm)])
    amps /= amps.max()
    f0 = float(r.uniform(*fam["f0"]))
    return Signature(
        machine_type=machine_type,
        machine_id=machine_id,
        f0_hz=f0,
        harmonic_amps=tuple(float(a) for a in amps),
        resonance_hz=float(f0 * r.uniform(2.0, n_harm)),
        resonance_q=float(r.uniform(1.5, 4.0)),
        am_rate_hz=float(r.uniform(0.5, 8.0)),
        am_depth=float(r.uniform(0.0, 0.25)),
        fm_rate_hz=float(r.uniform(0.05, 0.5)),
        fm_depth=float(r.uniform(0.001, 0.008)),
        noise_level=float(r.uniform(*fam["noise_level"])),
        noise_colour=float(r.uniform(*fam["colour"])),
        tick_rate_hz=float(r.uniform(6.0, 18.0)),
        tick_resonance_hz=float(r.uniform(2500.0, 5500.0)),
    )


def _resonance_gain(freqs: np.ndarray, centre: float, q: float) -> np.ndarray:
    """Magnitude of a second-order resonance (peak 1 at ``centre``) plus a floor, per frequency."""
    ratio = freqs / centre
    return 0.35 + 1.0 / np.sqrt((1 - ratio**2) ** 2 + (ratio / q) ** 2) / q


@dataclass
class _State:
    harmonic_phase: np.ndarray
    am_phase: float = 0.0
    fm_phase: float = 0.0
    shaft_phase: float = 0.0
    noise_y: float = 0.0
    tick_countdown: float = 0.0  # samples until the next tick
    tick_tail: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rub_gate: float = 0.0
    rub_countdown: float = 0.0
    rub_last: float = 0.0
    res_zi: np.ndarray = field(default_factory=lambda: np.zeros(2))


class MachineSound:
    """Stateful, phase-continuous generator of one machine's sound.

    ``variation`` (0..1) scales the per-instance jitter of pitch, level and noise — different
    clips of the same machine (different ``instance`` numbers) are never identical, like real
    recordings taken on different days.
    """

    def __init__(
        self,
        signature: Signature,
        sample_rate: int = 16_000,
        *,
        instance: int = 0,
        seed: int = 0,
        variation: float = 1.0,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.signature = signature
        self.sample_rate = int(sample_rate)
        r = _rng("instance", signature.machine_type, signature.machine_id, seed, instance)
        # One RNG per random process, so the draws (and hence the audio) do not depend on how
        # the caller splits the stream into render() calls.
        key = (signature.machine_type, signature.machine_id, seed, instance)
        self._noise_rng = _rng("noise", *key)
        self._tick_rng = _rng("ticks", *key)
        self._gate_rng = _rng("rub-gate", *key)
        self._rub_rng = _rng("rub-noise", *key)
        v = float(variation)
        self._f0 = signature.f0_hz * (1.0 + v * r.uniform(-0.01, 0.01))
        self._level = signature.level * (1.0 + v * r.uniform(-0.1, 0.1))
        self._noise_level = signature.noise_level * (1.0 + v * r.uniform(-0.15, 0.15))
        self._harm_jitter = 1.0 + v * r.uniform(-0.1, 0.1, size=len(signature.harmonic_amps))
        self._speed = 1.0
        self._fault: Fault | None = None
        self._severity = 0.0
        n = len(signature.harmonic_amps)
        self._state = _State(harmonic_phase=r.uniform(0, 2 * math.pi, size=n))
        self._state.am_phase = float(r.uniform(0, 2 * math.pi))
        self._state.fm_phase = float(r.uniform(0, 2 * math.pi))

    # -- control ---------------------------------------------------------------------------
    @property
    def fault(self) -> Fault | None:
        return self._fault

    @property
    def severity(self) -> float:
        return self._severity

    @property
    def speed(self) -> float:
        return self._speed

    def set_fault(self, fault: Fault | None, severity: float = 1.0) -> None:
        """Inject (or clear, with ``None``) a fault; ``severity`` 0..~2 scales its strength."""
        if severity < 0:
            raise ValueError(f"severity must be >= 0, got {severity}")
        self._fault = Fault(fault) if fault is not None else None
        self._severity = float(severity) if fault is not None else 0.0

    def set_speed(self, factor: float) -> None:
        """Scale the running speed (all rotational frequencies), e.g. 1.03 for slow drift tests."""
        if not (0.1 <= factor <= 10.0):
            raise ValueError(f"speed factor must be within 0.1..10, got {factor}")
        self._speed = float(factor)

    # -- synthesis -------------------------------------------------------------------------
    def render(self, n_samples: int) -> np.ndarray:
        """The next ``n_samples`` of audio, float32 in [-1, 1], continuing the previous call."""
        if n_samples < 0:
            raise ValueError(f"n_samples must be >= 0, got {n_samples}")
        if n_samples == 0:
            return np.zeros(0, dtype=np.float32)
        sig, st, sr = self.signature, self._state, self.sample_rate
        t = np.arange(1, n_samples + 1, dtype=np.float64) / sr
        two_pi = 2 * math.pi

        # Slow speed wobble (FM) -> instantaneous fundamental; phases integrate it, so chunk
        # boundaries are seamless.
        fm = np.sin(st.fm_phase + two_pi * sig.fm_rate_hz * t)
        f0_inst = self._f0 * self._speed * (1.0 + sig.fm_depth * fm)
        cum = np.cumsum(f0_inst) / sr  # cycles of the fundamental since the start of this block

        centre = sig.resonance_hz * self._speed
        if self._fault is Fault.RESONANCE_SHIFT:
            centre *= 1.0 + self._severity
        n_harm = len(sig.harmonic_amps)
        k = np.arange(1, n_harm + 1)
        envelope = _resonance_gain(k * self._f0, centre, sig.resonance_q)
        gains = np.asarray(sig.harmonic_amps) * self._harm_jitter * envelope
        if self._fault is Fault.IMBALANCE:
            gains = gains.copy()
            gains[0] *= 1.0 + 1.5 * self._severity
        nyquist_ok = k * self._f0 * self._speed * 1.02 < sr / 2
        tonal = np.zeros(n_samples)
        for i in np.flatnonzero(nyquist_ok):
            tonal += gains[i] * np.sin(st.harmonic_phase[i] + two_pi * (i + 1) * cum)
        st.harmonic_phase = np.mod(st.harmonic_phase + two_pi * k * cum[-1], two_pi)
        tonal /= max(float(np.sum(gains[nyquist_ok])), 1e-9) ** 0.5 * 2.0

        am = 1.0 + sig.am_depth * np.sin(st.am_phase + two_pi * sig.am_rate_hz * self._speed * t)
        shaft_cycles = cum  # shaft rotates at the fundamental
        if self._fault is Fault.IMBALANCE:
            am = am * (1.0 + 0.45 * self._severity * np.sin(st.shaft_phase + two_pi * shaft_cycles / 2.0))
        st.am_phase = float(np.mod(st.am_phase + two_pi * sig.am_rate_hz * self._speed * t[-1], two_pi))
        st.fm_phase = float(np.mod(st.fm_phase + two_pi * sig.fm_rate_hz * t[-1], two_pi))
        st.shaft_phase = float(np.mod(st.shaft_phase + two_pi * cum[-1] / 2.0, two_pi))

        noise = self._coloured_noise(n_samples, centre) * self._noise_level
        out = self._level * (tonal * am + noise)
        if self._fault is Fault.BEARING_TICKS:
            out += self._level * self._ticks(n_samples)
        if self._fault is Fault.RUB:
            out += self._level * self._rub(n_samples)
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _coloured_noise(self, n: int, centre_hz: float) -> np.ndarray:
        """Broadband noise of the signature's colour plus the structure's resonance ringing in it.

        The structural resonance shapes the noise floor as well as the harmonics (a hump of
        roughly +8 dB around ``centre_hz``), so a moved resonance is visible even when no
        harmonic sits near it — as on real machines.
        """
        from scipy.signal import lfilter  # deferred: loads scipy

        a = self.signature.noise_colour
        white = self._noise_rng.standard_normal(n)
        # one-pole low-pass y[n] = a*y[n-1] + (1-a)*x[n], gain-normalised to unit variance-ish
        y, _ = lfilter([1.0 - a], [1.0, -a], white, zi=[a * self._state.noise_y])
        self._state.noise_y = float(y[-1])
        # RBJ band-pass (0 dB peak) at the resonance, Q 4, state carried across calls
        fc = min(max(centre_hz, 50.0), 0.45 * self.sample_rate)
        w0 = 2 * math.pi * fc / self.sample_rate
        alpha = math.sin(w0) / (2 * 4.0)
        b_res = np.array([alpha, 0.0, -alpha]) / (1 + alpha)
        a_res = np.array([1.0, -2 * math.cos(w0) / (1 + alpha), (1 - alpha) / (1 + alpha)])
        ring, self._state.res_zi = lfilter(b_res, a_res, white, zi=self._state.res_zi)
        return y / math.sqrt((1.0 - a) / (1.0 + a)) + 5.0 * ring

    def _ticks(self, n: int) -> np.ndarray:
        """Bearing impacts: decaying resonant bursts at the defect rate, continued across calls."""
        sig, st, sr = self.signature, self._state, self.sample_rate
        burst_len = int(0.012 * sr)
        tb = np.arange(burst_len) / sr
        burst = np.sin(2 * math.pi * sig.tick_resonance_hz * tb) * np.exp(-tb / 0.0025)
        amp = 1.2 * self._severity
        buf = np.zeros(n + burst_len)
        carried = st.tick_tail[: n + burst_len]
        buf[: carried.size] += carried
        period = sr / (sig.tick_rate_hz * self._speed)
        pos = st.tick_countdown
        while pos < n:
            i = int(pos)
            jitter = 0.7 + 0.6 * self._tick_rng.random()
            buf[i : i + burst_len] += amp * jitter * burst
            pos += period * (0.95 + 0.1 * self._tick_rng.random())
        st.tick_countdown = pos - n
        st.tick_tail = buf[n:].copy()
        return buf[:n]

    def _rub(self, n: int) -> np.ndarray:
        """Friction bursts: high-passed noise gated on for ~50-200 ms every few hundred ms."""
        st, sr, r = self._state, self.sample_rate, self._gate_rng
        gate = np.empty(n)
        i = 0
        while i < n:
            if st.rub_countdown <= 0:
                st.rub_gate = 1.0 - st.rub_gate
                st.rub_countdown = sr * (r.uniform(0.05, 0.2) if st.rub_gate else r.uniform(0.2, 0.6))
            take = int(min(n - i, math.ceil(st.rub_countdown)))
            gate[i : i + take] = st.rub_gate
            st.rub_countdown -= take
            i += take
        white = self._rub_rng.standard_normal(n)
        hp = np.diff(white, prepend=st.rub_last)  # first difference: a gentle high-pass
        st.rub_last = float(white[-1])
        return 0.3 * self._severity * gate * hp


def render_clip(
    machine_type: str,
    machine_id: str,
    seconds: float = 10.0,
    sample_rate: int = 16_000,
    *,
    fault: Fault | None = None,
    severity: float = 1.0,
    seed: int = 0,
    instance: int = 0,
    speed: float = 1.0,
) -> np.ndarray:
    """One clip (float32 mono) of a machine, optionally faulty; ``instance`` picks the recording."""
    sound = MachineSound(signature_for(machine_type, machine_id, seed), sample_rate, instance=instance, seed=seed)
    sound.set_speed(speed)
    sound.set_fault(fault, severity)
    return sound.render(int(round(seconds * sample_rate)))


@dataclass(frozen=True)
class SyntheticDatasetSummary:
    root: Path
    files: int
    machine_types: tuple[str, ...]
    machine_ids: tuple[str, ...]


def machine_ids_for(ids_per_type: int) -> list[str]:
    """DCASE-style ID names ``id_00, id_02, ...`` (even numbers, like the 2020 dev set)."""
    return [f"id_{2 * i:02d}" for i in range(ids_per_type)]


def write_dcase_dataset(
    root: Path | str,
    machine_types: Sequence[str] | Iterable[str] = ("fan", "pump"),
    ids_per_type: int = 3,
    n_train: int = 20,
    n_test_normal: int = 10,
    n_test_anomaly: int = 10,
    seconds: float = 10.0,
    sample_rate: int = 16_000,
    seed: int = 0,
    faults: Sequence[Fault] = tuple(Fault),
    severity: float = 1.0,
) -> SyntheticDatasetSummary:
    """Write a DCASE 2020 Task 2 layout of 16-bit wav files and return what was written.

    ``<root>/<type>/train/normal_id_XX_NNNNNNNN.wav`` and
    ``<root>/<type>/test/{normal,anomaly}_id_XX_NNNNNNNN.wav``. Anomalous clips cycle through
    ``faults``; train and test clips use disjoint instance numbers.
    """
    import soundfile as sf  # deferred: loads soundfile

    root = Path(root)
    types = tuple(machine_types)
    ids = machine_ids_for(ids_per_type)
    count = 0
    for mtype in types:
        for split in ("train", "test"):
            (root / mtype / split).mkdir(parents=True, exist_ok=True)
        for mid in ids:
            jobs: list[tuple[str, str, int, Fault | None]] = []
            jobs += [("train", "normal", i, None) for i in range(n_train)]
            jobs += [("test", "normal", n_train + i, None) for i in range(n_test_normal)]
            jobs += [
                ("test", "anomaly", n_train + n_test_normal + i, faults[i % len(faults)]) for i in range(n_test_anomaly)
            ]
            for split, label, instance, fault in jobs:
                audio = render_clip(
                    mtype, mid, seconds, sample_rate, fault=fault, severity=severity, seed=seed, instance=instance
                )
                path = root / mtype / split / f"{label}_{mid}_{instance:08d}.wav"
                sf.write(path, audio, sample_rate, subtype="PCM_16")
                count += 1
    return SyntheticDatasetSummary(root=root, files=count, machine_types=types, machine_ids=tuple(ids))


__all__ = [
    "MACHINE_FAMILIES",
    "Fault",
    "MachineSound",
    "Signature",
    "SyntheticDatasetSummary",
    "machine_ids_for",
    "render_clip",
    "signature_for",
    "write_dcase_dataset",
]
