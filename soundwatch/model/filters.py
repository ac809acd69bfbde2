"""Median filtering of window-score sequences and the clip statistic.

The stream sees windows one at a time and has no future, so the filter is
*causal*: the filtered score of window ``i`` is the median of the raw scores of
windows ``max(0, i-k+1) .. i``. During warm-up (fewer than ``k`` windows seen)
the median is over what has been seen — never a made-up 0. ``evaluate``
aggregates clips with exactly these functions, so offline AUC predicts the
stream's behaviour.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def causal_median(scores: np.ndarray, k: int) -> np.ndarray:
    """Causal running median of a 1-D score sequence (same length as the input)."""
    if k < 1:
        raise ValueError(f"median filter length k must be >= 1, got {k}")
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {x.shape}")
    if k == 1 or x.size == 0:
        return x.copy()
    out = np.empty_like(x)
    warm = min(k - 1, x.size)
    for i in range(warm):
        out[i] = np.median(x[: i + 1])
    if x.size >= k:
        windows = np.lib.stride_tricks.sliding_window_view(x, k)
        out[k - 1 :] = np.median(windows, axis=1)
    return out


AGGREGATIONS = ("mean", "top3", "max")  # window -> clip: steady faults | a few events | one event


def clip_score(window_scores: np.ndarray, k: int, aggregation: str = "mean") -> float:
    """A clip's anomaly score: its causally median-filtered window scores aggregated over the clip.

    ``mean`` suits steady or repeating faults; ``top3`` (mean of the 3 highest) and ``max`` keep a
    fault that shows in only a few windows. Each model stores its choice (``aggregation``).
    """
    x = np.asarray(window_scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError("a clip needs at least one window to be scored")
    filtered = causal_median(x, k)
    if aggregation == "mean":
        return float(filtered.mean())
    if aggregation == "max":
        return float(filtered.max())
    if aggregation == "top3":
        return float(np.sort(filtered)[-3:].mean())
    raise ValueError(f"unknown clip aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}")


class StreamingMedian:
    """Per-machine state of :func:`causal_median`: ``update(score)`` returns the filtered value."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"median filter length k must be >= 1, got {k}")
        self.k = k
        self._recent: deque[float] = deque(maxlen=k)

    def update(self, score: float) -> float:
        self._recent.append(float(score))
        return float(np.median(np.fromiter(self._recent, dtype=np.float64)))

    def reset(self) -> None:
        self._recent.clear()

    def __len__(self) -> int:
        return len(self._recent)
