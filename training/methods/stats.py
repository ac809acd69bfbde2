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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from soundwatch.model.filters import causal_median
from soundwatch.model.scorer import WindowScorer
from soundwatch.model.stats import StatsConfig, StatsModel, window_features
from soundwatch.settings import RetrainSettings
from training.methods.base import FineTuned, Trained
from training.methods.common import EncoderJob

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


def _trained(method: str, model: StatsModel) -> Trained:
    """The artifact pieces of a fitted statistic model (its own k-NN ``k`` lives in its config)."""
    state = {"stats": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in model.to_arrays().items()}}
    scorer = WindowScorer(method, "stats", stats=model)
    return Trained(state, {"stats": model.config()}, scorer, ["stats"])


@dataclass(frozen=True)
class StatsMethod:
    """One statistic variant as a training method: fitted in seconds, so it cross-fits its calibration
    scores and serves a model refitted on every training clip."""

    name: str
    help: str
    classifies: bool = False
    default_epochs: int = 0  # no epochs: a fit is a mean, a covariance or a bank

    def train(self, job: EncoderJob) -> Trained:
        model = fit(self.name, job.windows.windows, job.windows.machine_ids(), job.cfg.seed)
        return _trained(self.name, model)

    def cross_fitted_scores(
        self, windows: np.ndarray, clip_of_window: np.ndarray, clip_ids: Sequence[str], median_k: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return crossfit_filtered_scores(self.name, windows, clip_of_window, clip_ids, median_k, seed=seed)

    def refit(self, windows: np.ndarray, machine_ids: Sequence[str], seed: int) -> Trained | None:
        return _trained(self.name, fit(self.name, windows, machine_ids, seed))

    def fine_tune(
        self,
        parent: Any,
        windows: np.ndarray,
        machine_ids: Sequence[str],
        cfg: RetrainSettings,
        bank_windows: np.ndarray | None = None,
        bank_ids: Sequence[str] = (),
        bank_new: np.ndarray | None = None,
        *,
        encoder_mode: str = "bank",
        score_kind: str | None = None,
    ) -> FineTuned:
        """Refit the densities on ``bank_windows`` (the new confirmed-normal windows + the replay pool) with
        the parent's standardiser; ``encoder_mode`` and ``score_kind`` do not apply."""
        meta = parent.metadata
        if bank_windows is None:
            bank_windows, bank_ids = windows, machine_ids
        model = parent.scorer.stats.refit(np.asarray(bank_windows, dtype=np.float32), list(bank_ids), cfg.seed)
        trained = _trained(parent.method, model)
        return FineTuned(
            parent.method,
            "stats",
            trained.model_config,
            trained.state,
            [],
            {},
            meta.class_source,
            {},
            meta.knn_k,
            trained.scorer,
            [],
            "refit",
        )


_HELP: dict[str, str] = {
    "stats-q25maxmean": "per-band 25% quantile, max and mean + Mahalanobis per machine; seconds to train",
    "stats-max": "per-band max of the log-mel + Mahalanobis per machine (short events); seconds to train",
    "stats-q25max": "per-band 25% quantile and max + Mahalanobis per machine; seconds to train",
    "stats-q25knn": "per-band 25% quantile + k-NN per machine (steady spectrum); seconds to train",
    "stats-meanknn": "per-band mean + k-NN per machine (steady spectral shift); seconds to train",
}
# Order = auto's preference on ties: the broadest detector (events, dropouts and steady shifts) first.
METHODS: tuple[StatsMethod, ...] = tuple(StatsMethod(name, help) for name, help in _HELP.items())
