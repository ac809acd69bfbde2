"""The contract every training method meets (:class:`Method`), and what it hands back.

A method trains a model from scratch (:meth:`Method.train`, used by ``soundwatch train``) and
updates a loaded one with new normal audio (:meth:`Method.fine_tune`, used by the retraining
service); ``train.py`` and ``service/retrain.py`` call these and never branch on the method name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

import numpy as np
import torch
from torch import nn

from soundwatch.model.scorer import WindowScorer
from soundwatch.settings import EncoderUpdate, RetrainSettings
from training.methods.common import EncoderJob

ENCODER_MODES: tuple[str, ...] = get_args(EncoderUpdate)  # how a round updates an encoder method's model


@dataclass
class Trained:
    """A freshly trained model: what the artifact stores, and its scorer for calibration."""

    state: dict[str, dict[str, torch.Tensor]]
    model_config: dict[str, Any]
    scorer: WindowScorer
    kinds: list[str]  # the score kinds to choose from on held-out clips
    bank: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None  # of the fit windows, for leave-one-clip-out kNN thresholds


@dataclass
class FineTuned:
    """A fine-tuned model in memory (the pieces an :class:`soundwatch.model.registry.Artifact` needs)."""

    method: str
    score_kind: str
    model_config: dict[str, Any]
    state: dict[str, dict[str, torch.Tensor]]
    class_map: list[str]
    id_classes: dict[str, list[int]]
    class_source: str
    bank: dict[str, np.ndarray]
    knn_k: int
    scorer: WindowScorer
    losses: list[float]
    encoder_mode: str = "weights"  # encoder methods: bank | head | full; ae: "weights"; stats-*: "refit"


class Method(Protocol):
    """A training method (``training.methods.<name>.METHOD``)."""

    name: str
    help: str
    classifies: bool  # trains an ID classifier: the job carries class labels (else instance labels)
    default_epochs: int

    def train(self, job: EncoderJob) -> Trained: ...

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
        """Update ``parent`` (a LoadedModel of this method) with ``windows`` of ``machine_ids``."""
        ...

    def cross_fitted_scores(
        self, windows: np.ndarray, clip_of_window: np.ndarray, clip_ids: Sequence[str], median_k: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Median-filtered window scores of every training clip by a model fitted without it, and their
        machine IDs, for thresholds (empty arrays: refitting is too costly for this method)."""
        ...

    def refit(self, windows: np.ndarray, machine_ids: Sequence[str], seed: int) -> Trained | None:
        """The served model refitted on every training window, held-out clips included (None: keep the
        model fitted on the fit clips)."""
        ...


class TrainedOnce:
    """The hooks of :class:`Method` for methods whose training takes minutes: no cross-fitting, no refit."""

    def cross_fitted_scores(
        self, windows: np.ndarray, clip_of_window: np.ndarray, clip_ids: Sequence[str], median_k: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.empty(0), np.empty(0, dtype=object)

    def refit(self, windows: np.ndarray, machine_ids: Sequence[str], seed: int) -> Trained | None:
        return None


def fine_tune_batches(n: int, size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches of fine-tuning; batches of fewer than 2 windows are dropped (BatchNorm)."""
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + size] for i in range(0, n, size) if len(perm[i : i + size]) >= 2]


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm running statistics fixed: a few hundred new windows would otherwise re-estimate
    them from a skewed sample and move every embedding, including those of machines that did not change."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
