"""Pseudo-anomalies made from normal clips, for choices that may not look at real anomalies.

Two kinds, because real faults come in two kinds and a choice judged on one kind only would pick the
family that misses the other (issue #15):

* ``short``: repeating events of 0.2-0.5 s every 1.5-3 s (a valve cycle) at 10-20 dB below the
  clip's own level — clicks (broadband), bursts (a band of noise), impacts (broadband, low-heavy,
  decaying) and dropouts (the sound drops by 15 dB);
* ``steady``: a change of the whole clip — an added tone, the spectrum shifted by 1-2 mel bands,
  a spectral tilt of +-3 dB, a level change of +-3 dB, an added harmonic series.

They are made on the log-mel frames (power added in the power domain, as sounds add), rebuilt from
a clip's overlapping windows and cut again with the same hop, so consecutive windows see the same event.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from soundwatch.params import FeatureParams

KINDS = ("short", "steady")
SHORT_EVENTS = ("click", "burst", "impact", "dropout")
STEADY_CHANGES = ("tone", "band_shift", "tilt", "level", "harmonic")


def frames_of(windows: np.ndarray, hop: int) -> np.ndarray:
    """The frame sequence ``[n_mels, T]`` of a clip's consecutive windows ``[N, n_mels, W]`` (hop ``hop``)."""
    w = np.asarray(windows, dtype=np.float64)
    parts = [w[0]] + [wi[:, w.shape[2] - hop :] for wi in w[1:]]
    return np.concatenate(parts, axis=1)


def windows_of(frames: np.ndarray, width: int, hop: int) -> np.ndarray:
    starts = range(0, frames.shape[1] - width + 1, hop)
    return np.stack([frames[:, s : s + width] for s in starts]).astype(np.float32)


def _add_power(frames: np.ndarray, power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(10.0 ** (frames / 10.0) + power)


def _level(frames: np.ndarray) -> float:
    """Mean total power per frame (the clip's own level)."""
    return float((10.0 ** (frames / 10.0)).sum(axis=0).mean())


def short_events(frames: np.ndarray, rng: np.random.Generator, frame_s: float) -> np.ndarray:
    n_mels, t = frames.shape
    kind = SHORT_EVENTS[int(rng.integers(len(SHORT_EVENTS)))]
    length = max(1, int(round(rng.uniform(0.2, 0.5) / frame_s)))
    period = max(length + 1, int(round(rng.uniform(1.5, 3.0) / frame_s)))
    starts = range(int(rng.integers(period)), max(1, t - length), period)
    out = frames.copy()
    if kind == "dropout":
        for s in starts:
            out[:, s : s + length] -= 15.0
        return out
    shape = np.ones(n_mels)
    if kind == "burst":
        lo = int(rng.integers(0, n_mels - 16))
        shape = np.zeros(n_mels)
        shape[lo : lo + int(rng.integers(8, 32))] = 1.0
    elif kind == "impact":
        shape = np.linspace(2.0, 0.5, n_mels)
    # a click is over within a frame or two (its energy in the first 30 ms), an impact rings for a third of it
    decay = {"click": 1.0, "impact": max(1.0, length / 3)}
    envelope = np.exp(-np.arange(length) / decay[kind]) if kind in decay else np.ones(length)
    power = _level(frames) * 10.0 ** (-rng.uniform(10.0, 20.0) / 10.0) * shape / shape.sum()
    add = np.zeros_like(frames)
    for s in starts:
        n = min(length, t - s)
        add[:, s : s + n] += power[:, None] * envelope[None, :n]
    return _add_power(out, add)


def steady_change(frames: np.ndarray, rng: np.random.Generator, params: FeatureParams) -> np.ndarray:
    n_mels = frames.shape[0]
    kind = STEADY_CHANGES[int(rng.integers(len(STEADY_CHANGES)))]
    if kind == "band_shift":
        k = int(rng.choice([-2, -1, 1, 2]))
        out = np.roll(frames, k, axis=0)
        if k > 0:
            out[:k] = frames[:1]
        else:
            out[k:] = frames[-1:]
        return out
    if kind == "tilt":
        return frames + np.linspace(-3.0, 3.0, n_mels)[:, None] * rng.choice([-1.0, 1.0])
    if kind == "level":
        return frames + rng.choice([-3.0, 3.0])
    power = np.zeros(n_mels)
    level = _level(frames) * 10.0 ** (-rng.uniform(10.0, 20.0) / 10.0)
    if kind == "tone":
        power[int(rng.integers(2, n_mels - 2))] = level
    else:  # harmonic: 5 harmonics of a 100-400 Hz fundamental, mapped to their mel bands
        centres = _mel_centres(params)
        f0 = rng.uniform(100.0, 400.0)
        for h in range(1, 6):
            power[int(np.argmin(np.abs(centres - h * f0)))] += level / h
    return _add_power(frames, np.repeat(power[:, None], frames.shape[1], axis=1))


def _mel_centres(params: FeatureParams) -> np.ndarray:
    import librosa  # deferred: loads librosa

    fmax = params.fmax or params.sample_rate / 2
    return np.asarray(librosa.mel_frequencies(params.n_mels + 2, fmin=params.fmin, fmax=fmax)[1:-1])


def pseudo_windows(windows: np.ndarray, kind: str, rng: np.random.Generator, params: FeatureParams) -> np.ndarray:
    """A pseudo-anomalous copy (``kind`` in :data:`KINDS`) of one clip's windows ``[N, n_mels, W]``."""
    frames = frames_of(windows, params.hop_frames)
    make: Callable[[np.ndarray], np.ndarray]
    if kind == "short":
        make = lambda f: short_events(f, rng, params.hop_length / params.sample_rate)  # noqa: E731
    elif kind == "steady":
        make = lambda f: steady_change(f, rng, params)  # noqa: E731
    else:
        raise ValueError(f"unknown pseudo-anomaly kind {kind!r}; valid: {KINDS}")
    return windows_of(make(frames), windows.shape[2], params.hop_frames)
