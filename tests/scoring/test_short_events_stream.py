"""Short events survive the whole path (issue #15), through the real broker, Redis, InfluxDB and scoring worker.

The machine: real drone audio (``real-uav``; whole missions, changing load — the real set with enough
normal audio for a 30-minute stream). ``--method auto``'s statistic candidates are trained on its
normal training clips, the winner is saved through the registry and served by an in-process worker:

* 30 minutes of its normal audio never heard in training (the test missions, in shuffled passes,
  each clip rotated at random so no two passes give the same windows) raise no alert;
* repeating synthetic valve-like events, 0.2-0.5 s every 1.5 s — clicks and bursts at -10 dB below
  the machine's own level, dropouts of 15 dB — raise an alert on the machine that has them.

Windows are computed offline with the stream's own feature function and fed faster than real time.
(real-mini's valve holds 40 s of one valve's normal audio, too little for 30 minutes, and its own
actuation clicks are louder than a -10 dB event: see the README's training section.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from running_workers import running_worker
from scipy.signal import butter, sosfilt
from scoring_helpers import count_points, make_window, produce, read_topic, wait_for

from soundwatch.audio.audio_io import read_audio
from soundwatch.audio.windows import offline_windows
from soundwatch.contracts import AlertEvent, AlertState
from soundwatch.model.registry import ModelRegistry
from soundwatch.params import FeatureParams
from training.auto import train_auto
from training.datasets import scan_dataset
from training.methods import STATS_METHODS
from training.train import TrainConfig

pytestmark = pytest.mark.integration

REAL_UAV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-uav"
NORMAL_MINUTES = 30
EVENT_KINDS = {"section_01": "click", "section_02": "burst", "section_03": "dropout"}


def _events(audio: np.ndarray, kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Repeating 0.2-0.5 s events every 1.5 s; level relative to the audio's RMS."""
    out = audio.copy()
    rms = float(np.sqrt(np.mean(audio**2)))
    bandpass = butter(4, [4000, 7000], btype="band", fs=sr, output="sos")
    for start in range(int(0.5 * sr), audio.size - sr // 2, int(1.5 * sr)):
        n = int(rng.uniform(0.2, 0.5) * sr)
        if kind == "dropout":
            out[start : start + n] *= 10 ** (-15 / 20)
            continue
        e = rng.normal(size=n)
        e = e * np.exp(-np.arange(n) / (0.03 * sr)) if kind == "click" else sosfilt(bandpass, e)
        out[start : start + n] += e / np.sqrt(np.mean(e**2)) * rms * 10 ** (-10 / 20)
    return out


def _normal_stream(clips: list[np.ndarray], seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of the clips in shuffled passes, each rotated at random, joined with 50 ms cross-fades."""
    fade = int(0.05 * sr)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    parts: list[np.ndarray] = []
    total = 0
    tail: np.ndarray | None = None
    while total < seconds * sr:
        for i in rng.permutation(len(clips)):
            c = np.roll(clips[i], int(rng.integers(clips[i].size)))
            if tail is not None:
                c = c.copy()
                c[:fade] = tail * (1 - ramp) + c[:fade] * ramp
            parts.append(c[:-fade])
            tail = c[-fade:]
            total += c.size - fade
    return np.concatenate(parts)[: int(seconds * sr)]


def test_normal_half_hour_is_quiet_and_repeating_short_events_alert(scoring_settings) -> None:
    s = scoring_settings
    params = FeatureParams()
    sr = params.sample_rate
    if not REAL_UAV.is_dir():
        pytest.fail(f"real-uav not found at {REAL_UAV}: the repo must sit beside ../shared")
    records = scan_dataset(REAL_UAV)
    auto = train_auto(records, params, TrainConfig(device="cpu", progress=False), methods=tuple(STATS_METHODS))
    artifact = auto.winner.result.artifact
    ModelRegistry(s.registry_root).save(artifact)
    machine = sorted(artifact.thresholds)[0]
    # real-uav has one machine: the event machines (IDs the model never saw) get the union density "*",
    # fitted on the same windows, and the default threshold, calibrated on the same held-out windows
    assert list(artifact.thresholds) == [machine] and artifact.default_threshold == artifact.thresholds[machine]

    rng = np.random.default_rng(0)
    test_normals = sorted(r.path for r in records if r.split == "test" and not r.is_anomaly)
    clips = [read_audio(p, sr) for p in test_normals[1:]]
    normal, _ = offline_windows(_normal_stream(clips, NORMAL_MINUTES * 60, sr, rng), params=params)
    windows = [make_window("uav", machine, i, params, w) for i, w in enumerate(normal)]
    base = read_audio(test_normals[0], sr)
    for mid, kind in EVENT_KINDS.items():
        lead, _ = offline_windows(np.tile(base, 3), params=params)  # 30 s of normal first
        faulty, _ = offline_windows(_events(np.tile(base, 3), kind, sr, rng), params=params)
        seq = np.concatenate([lead, faulty])
        windows += [make_window("uav", mid, i, params, w) for i, w in enumerate(seq)]
    onset_index = len(lead)

    with running_worker(s):
        for i in range(0, len(windows), 200):
            produce(s, windows[i : i + 200])
        wait_for(lambda: count_points(s) >= len(windows), 120, "every window scored")
        alerts = [AlertEvent.decode(r.value) for r in read_topic(s, s.kafka.topics.alerts, len(EVENT_KINDS), 20)]

    raised = {a.machine_id: a for a in alerts if a.current is AlertState.ALERTING}
    assert machine not in raised, f"{NORMAL_MINUTES} min of normal audio raised an alert: {raised.get(machine)}"
    for mid, kind in EVENT_KINDS.items():
        assert mid in raised, f"repeating {kind}s raised no alert ({auto.winner.method}, raised: {sorted(raised)})"
        first_event_ns = make_window("uav", mid, onset_index, params).end_ns
        assert raised[mid].timestamp_ns >= first_event_ns, f"{mid} alerted before its {kind}s began"
