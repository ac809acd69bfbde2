"""Statistic methods (``stats-*``): per-band statistics of the log-mel windows + a density per machine.

No network and no epochs: fitting is a mean, a covariance or a bank of training windows per
machine (:mod:`soundwatch.model.stats`), so a type trains in seconds. The variants differ in the
statistics and the density; which one suits a type is what ``--method auto`` finds out:

* ``stats-max``: per-band maximum (short events: clicks, bursts, stuck moments), Mahalanobis;
* ``stats-q25max``: 25 % quantile + maximum (steady floor and events), Mahalanobis;
* ``stats-q25knn``: 25 % quantile (the steady spectrum), 3-NN distance;
* ``stats-meanknn``: per-band mean (a steady spectral shift), 3-NN distance;
* ``stats-q25maxmean``: 25 % quantile + maximum + mean, Mahalanobis: events (max), dropouts and
  steady shifts (mean, q25) in one density — on real-uav the only variant whose streamed score
  crossed the threshold for both repeating clicks and repeating dropouts at -10 / -15 dB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from soundwatch.model.stats import StatsConfig, StatsModel, window_features

CROSSFIT_FOLDS = 5

VARIANTS: dict[str, StatsConfig] = {
    "stats-max": StatsConfig(("max",), "maha"),
    "stats-q25max": StatsConfig(("q25", "max"), "maha"),
    "stats-q25knn": StatsConfig(("q25",), "knn", knn_k=3),
    "stats-meanknn": StatsConfig(("mean",), "knn", knn_k=3),
    "stats-q25maxmean": StatsConfig(("q25", "max", "mean"), "maha"),
}


def fit(method: str, windows: np.ndarray, machine_ids: Sequence[str], seed: int = 0) -> StatsModel:
    """Fit statistic method ``method`` on normal training windows ``[N, n_mels, W]``."""
    if method not in VARIANTS:
        raise ValueError(f"{method!r} is not a statistic method; valid: {', '.join(VARIANTS)}")
    return StatsModel.fit(windows, machine_ids, VARIANTS[method], seed)


def crossfit_filtered_scores(
    method: str,
    windows: np.ndarray,
    clip_of_window: np.ndarray,
    clip_ids: Sequence[str],
    median_k: int,
    folds: int = CROSSFIT_FOLDS,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Median-filtered scores of every training clip by a model fitted without it, and their machine IDs.

    Each machine's clips (in order: neighbouring clips of one recording stay together) are cut into
    ``folds`` contiguous blocks; block ``f`` of every machine is scored by the model fitted on all other
    blocks. With a few minutes of audio the served model's own held-out clips are too few to place a
    threshold — one odd recording decides it — so every clip informs the threshold, each scored like
    audio the model has not heard.
    """
    from scoring.filters import causal_median

    cfg = VARIANTS[method]
    feats = window_features(windows, cfg.features)
    ids_of_clip = np.asarray(clip_ids)
    fold_of_clip = np.zeros(len(clip_ids), dtype=np.int64)
    for mid in set(clip_ids):
        mine = np.flatnonzero(ids_of_clip == mid)
        fold_of_clip[mine] = np.arange(len(mine)) * folds // max(1, len(mine))
    window_ids = ids_of_clip[clip_of_window]
    values: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    for f in range(folds):
        held = fold_of_clip[clip_of_window] == f
        if not held.any() or (~held).sum() < 2:
            continue
        model = StatsModel.fit_features(feats[~held], list(window_ids[~held]), cfg, seed)
        for c in np.flatnonzero(fold_of_clip == f):
            rows = clip_of_window == c
            if rows.any():
                raw = model.score_features(feats[rows], [str(ids_of_clip[c])] * int(rows.sum()))
                values.append(causal_median(raw, median_k))
                owners.append(np.full(int(rows.sum()), str(ids_of_clip[c]), dtype=object))
    if not values:
        return np.empty(0), np.empty(0, dtype=object)
    return np.concatenate(values), np.concatenate(owners)
