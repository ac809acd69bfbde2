"""Per-machine thresholds and the normal-data-only choice of score kind.

Threshold rule (:func:`stream_threshold`): the scores a threshold is compared with in the stream are the
causally median-filtered window scores, so calibration uses exactly those, computed on held-out
*normal* clips of each machine. A gamma distribution (location fixed at 0; all score kinds are
non-negative) is fitted to them and the threshold is its 99.9th percentile, or the highest held-out
value times 1.05 when that is higher (a 99 % point alerted within minutes of normal audio). The gamma fit
extrapolates the tail sensibly from few clips, where an empirical 99% quantile would be just the
maximum. With fewer than 8 values or a failed fit, the empirical 99% quantile times 1.1 is used
(recorded in the rule string). The default threshold for machines the model does not know is the
same rule on the pooled values of all machines.

Score-kind choice (``pseudo_anomaly_auc``): anomalies may not be used, so we ask which score
separates held-out normal clips from *pseudo-anomalies derived from held-out normal clips*:
(1) the window shifted by two mel bins (a resonance/speed change), (2) a +8 dB narrow band on
three adjacent mel bins (a new tone), (3) +8 dB over the upper half of the bins on every 8th
frame (impacts), and, when a type has several machines, (4) another machine's held-out normal
clip scored as this machine (the largest deviation that normal data can show). Each family is a
separate AUC at clip level (median filter + clip statistic, like the stream); the criterion is
their mean. The kind with the higher mean wins; within 0.005 the kNN density is preferred
because it needs no class structure and degrades gracefully for unseen machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from soundwatch.model.filters import causal_median, clip_score

THRESHOLD_QUANTILE = 0.99
STREAM_QUANTILE = 0.999
STREAM_MARGIN = 1.05
TIE_MARGIN = 0.005


def fit_threshold(values: np.ndarray, quantile: float = THRESHOLD_QUANTILE) -> tuple[float, str]:
    """Threshold for median-filtered normal scores and the rule actually used."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite scores to calibrate a threshold on")
    if v.size >= 8 and np.ptp(v) > 0 and v.min() >= 0:
        try:
            shape, _loc, scale = stats.gamma.fit(v + 1e-9, floc=0.0)
            t = float(stats.gamma.ppf(quantile, shape, loc=0.0, scale=scale))
            if np.isfinite(t) and t > 0:
                return t, f"gamma(floc=0) ppf {quantile} on median-filtered held-out normal window scores"
        except (RuntimeError, ValueError, FloatingPointError):
            pass
    t = float(np.quantile(v, quantile)) * 1.1 if v.min() >= 0 else float(np.quantile(v, quantile))
    return t, f"empirical quantile {quantile} x1.1 on median-filtered held-out normal window scores"


def stream_threshold(values: np.ndarray) -> tuple[float, str]:
    """The alert threshold for the stream: hours of normal audio must not alert.

    A 99 % rule puts ~1 % of normal windows over the threshold, and runs of them (the median filter
    correlates neighbours) raise alerts within minutes of normal audio. So: the larger of the gamma
    fit's 99.9 % point and the highest held-out normal value times ``STREAM_MARGIN``.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    t, rule = fit_threshold(v, STREAM_QUANTILE)
    top = float(v.max()) * STREAM_MARGIN if v.max() >= 0 else float(v.max()) / STREAM_MARGIN
    if top > t:
        return top, f"max of median-filtered held-out normal window scores x{STREAM_MARGIN} (above: {rule})"
    return t, rule


def filtered_scores(window_scores: np.ndarray, clip_of_window: np.ndarray, k: int) -> np.ndarray:
    """Causally median-filtered scores, clip by clip (windows of a clip are contiguous and ordered)."""
    out = np.empty(len(window_scores), dtype=np.float64)
    for c in np.unique(clip_of_window):
        rows = np.flatnonzero(clip_of_window == c)
        out[rows] = causal_median(np.asarray(window_scores)[rows], k)
    return out


# -- pseudo-anomalies (normal data only) ------------------------------------------------------------
def _shift(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.roll(w, 2, axis=1)
    out[:, :2, :] = w[:, :1, :]
    return out


def _tone(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = w.copy()
    b = int(rng.integers(4, w.shape[1] - 4))
    out[:, b : b + 3, :] += 8.0
    return out


def _impacts(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = w.copy()
    out[:, w.shape[1] // 2 :, ::8] += 8.0
    return out


PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "mel_shift": _shift,
    "narrow_tone": _tone,
    "impacts": _impacts,
}


def pseudo_anomaly_auc(
    score_fn: Callable[[np.ndarray, Sequence[str]], np.ndarray],
    clip_windows: Sequence[np.ndarray],
    clip_ids: Sequence[str],
    k: int,
    seed: int = 0,
) -> dict[str, float]:
    """AUC per pseudo-anomaly family (see module docstring) and their ``mean``.

    ``score_fn(windows, machine_ids)`` is the window scorer; ``clip_windows[i]`` are the windows
    of held-out normal clip ``i`` of machine ``clip_ids[i]``.
    """
    rng = np.random.default_rng(seed)
    normal = [clip_score(score_fn(w, [m] * len(w)), k) for w, m in zip(clip_windows, clip_ids, strict=True)]
    result: dict[str, float] = {}
    for name, perturb in PERTURBATIONS.items():
        pseudo = [
            clip_score(score_fn(perturb(w, rng), [m] * len(w)), k) for w, m in zip(clip_windows, clip_ids, strict=True)
        ]
        result[name] = _auc(normal, pseudo)
    ids = sorted(set(clip_ids))
    if len(ids) >= 2:
        swapped = []
        for i, (w, m) in enumerate(zip(clip_windows, clip_ids, strict=True)):
            other = ids[(ids.index(m) + 1 + i % (len(ids) - 1)) % len(ids)]
            swapped.append(clip_score(score_fn(w, [other] * len(w)), k))
        result["other_machine"] = _auc(normal, swapped)
    result["mean"] = float(np.mean(list(result.values())))
    return result


def _auc(normal: Sequence[float], anomalous: Sequence[float]) -> float:
    y = np.r_[np.zeros(len(normal)), np.ones(len(anomalous))]
    return float(roc_auc_score(y, np.r_[normal, anomalous]))


def choose_score_kind(criteria: dict[str, dict[str, float]]) -> str:
    """Highest mean pseudo-anomaly AUC; ``knn`` wins ties within TIE_MARGIN."""
    best = max(criteria, key=lambda k: criteria[k]["mean"])
    if "knn" in criteria and criteria[best]["mean"] - criteria["knn"]["mean"] <= TIE_MARGIN:
        return "knn"
    return best
