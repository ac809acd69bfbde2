"""Offline sliding windows over log-mel frames: exactly the windows the stream emits.

A window is ``W = params.window_frames`` consecutive complete frames (see :mod:`soundwatch.audio.logmel`)
starting at frame ``0, H, 2H, ...`` (``H = params.hop_frames``); a window is emitted only when all of
its frames are complete. :class:`features.windower.StreamWindower` emits the same windows, with the
same start frames and values, for the same audio sent in chunks of any size.
"""

from __future__ import annotations

import numpy as np

from soundwatch.audio.logmel import complete_frames, log_mel
from soundwatch.params import FeatureParams

__all__ = ["n_windows", "offline_windows", "window_starts"]


def n_windows(n_frames: int, params: FeatureParams) -> int:
    """Windows that fit in ``n_frames`` complete frames.

    >>> n_windows(312, FeatureParams())  # 10 s at 16 kHz
    8
    """
    if n_frames < params.window_frames:
        return 0
    return (n_frames - params.window_frames) // params.hop_frames + 1


def window_starts(n_frames: int, params: FeatureParams) -> np.ndarray:
    """int64 start frames of the windows in ``n_frames`` complete frames."""
    return np.arange(n_windows(n_frames, params), dtype=np.int64) * params.hop_frames


def offline_windows(audio: np.ndarray, *, params: FeatureParams) -> tuple[np.ndarray, np.ndarray]:
    """1-D float audio at ``params.sample_rate`` -> ``(windows, start_frames)``.

    ``windows`` is float32 ``[N, n_mels, window_frames]`` dB, ``start_frames`` int64 ``[N]``: exactly
    the windows the stream emits for this audio sent as one segment (no sequence gap). Audio shorter
    than one window gives ``N = 0``.
    """
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"offline_windows takes one 1-D clip, got shape {x.shape}; loop or use log_mel for batches")
    n_frames = complete_frames(x.shape[0], params)
    starts = window_starts(n_frames, params)
    if starts.size == 0:
        return np.zeros((0, params.n_mels, params.window_frames), np.float32), starts
    frames = log_mel(x[: _samples_needed(int(starts[-1]) + params.window_frames, params)], params=params)
    return frames_to_windows(frames, starts, params), starts


def frames_to_windows(frames: np.ndarray, starts: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Cut ``[n_mels, n_frames]`` frames into contiguous float32 ``[N, n_mels, W]`` windows at ``starts``."""
    view = np.lib.stride_tricks.sliding_window_view(frames, params.window_frames, axis=-1)  # [n_mels, T, W]
    return np.ascontiguousarray(view[:, starts, :].transpose(1, 0, 2), dtype=np.float32)


def _samples_needed(n_frames: int, params: FeatureParams) -> int:
    """Fewest samples holding ``n_frames`` complete frames (frames past the last window are not computed)."""
    return (n_frames - 1) * params.hop_length + (params.n_fft - params.n_fft // 2)
