"""pAUC is the official evaluator's (sklearn, max_fpr=0.1), checked against a hand computation."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from training.evaluate import auc, pauc


def _mcclish_pauc(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    """Partial ROC area up to ``max_fpr`` by the trapezoid rule, McClish-standardised."""
    order = np.argsort(-s, kind="stable")
    y = y[order]
    s = s[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = np.cumsum(1 - y)[distinct]
    tpr = np.r_[0, tps / y.sum()]
    fpr = np.r_[0, fps / (1 - y).sum()]
    stop = np.searchsorted(fpr, max_fpr, "right")
    x = np.r_[fpr[:stop], max_fpr]
    t = np.r_[tpr[:stop], np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1])]
    area = np.trapezoid(t, x)
    lo, hi = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1 + (area - lo) / (hi - lo))


def test_pauc_known_inputs() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7, 0.95, 0.8, 0.9, 0.65, 0.3, 0.99])
    assert pauc(y, s) == roc_auc_score(y, s, max_fpr=0.1)
    assert abs(pauc(y, s) - _mcclish_pauc(y, s, 0.1)) < 1e-12
    assert auc(y, s) == roc_auc_score(y, s)
    # perfect ranking -> 1, reversed -> McClish minimum 0.5 * (1 + (0 - lo)/(hi - lo)) < 0.5
    assert pauc(y, y.astype(float)) == 1.0
    assert pauc(y, -y.astype(float)) < 0.5


def test_pauc_random_inputs_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        y[:2] = [0, 1]
        s = rng.normal(size=40) + y
        assert abs(pauc(y, s) - _mcclish_pauc(y, s, 0.1)) < 1e-9
