"""Which scorer rebuilds an artifact of each score kind: the one table a new kind is added to.

A new kind adds one entry here: a function ``(metadata, state, bank) -> Scorer`` (``stats``, the
statistic methods' numpy model of :mod:`soundwatch.model.stats`, was added this way). The registry,
the scoring worker and retraining then load and score it without any change, because they only see
:class:`soundwatch.model.scorer.Scorer`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from soundwatch.model.metadata import ArtifactMetadata
from soundwatch.model.scorer import Scorer, WindowScorer
from soundwatch.model.stats import StatsModel

ScorerBuilder = Callable[[ArtifactMetadata, dict[str, dict[str, torch.Tensor]], dict[str, np.ndarray]], Scorer]


def _window_scorer(
    meta: ArtifactMetadata, state: dict[str, dict[str, torch.Tensor]], bank: dict[str, np.ndarray]
) -> Scorer:
    return WindowScorer.build(meta.method, meta.score_kind, meta.model_config, state, meta.id_classes, bank, meta.knn_k)


def _stats_scorer(
    meta: ArtifactMetadata, state: dict[str, dict[str, torch.Tensor]], bank: dict[str, np.ndarray]
) -> Scorer:
    """Statistic methods (``stats-*``): arrays only, no network; ``bank`` is unused."""
    arrays = {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in state["stats"].items()}
    model = StatsModel.from_arrays(meta.model_config["stats"], arrays)
    return WindowScorer(meta.method, meta.score_kind, knn_k=meta.knn_k, stats=model)


SCORER_BUILDERS: dict[str, ScorerBuilder] = {
    "neglogp": _window_scorer,
    "knn": _window_scorer,
    "recon": _window_scorer,
    "stats": _stats_scorer,
}


def build_scorer(
    meta: ArtifactMetadata, state: dict[str, dict[str, torch.Tensor]], bank: dict[str, np.ndarray]
) -> Scorer:
    """The scorer of an artifact, by its score kind; ValueError for a kind this installation does not know."""
    builder = SCORER_BUILDERS.get(meta.score_kind)
    if builder is None:
        raise ValueError(
            f"score kind {meta.score_kind!r} is unknown to this soundwatch (known: {', '.join(SCORER_BUILDERS)})"
        )
    return builder(meta, state, bank)
