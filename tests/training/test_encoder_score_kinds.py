"""Which score kinds an encoder artifact may choose from (training.methods.encoder.score_kinds)."""

from __future__ import annotations

import numpy as np
import torch

from soundwatch.model.networks import ArcMarginHead, Encoder, EncoderConfig
from soundwatch.model.scorer import WindowScorer
from training.methods.encoder import score_kinds


def test_neglogp_is_offered_when_machines_own_some_classes() -> None:
    assert score_kinds(True, {"id_00": [0], "id_01": [1]}, 2) == ["neglogp", "knn"]


def test_neglogp_is_not_offered_without_a_classifier() -> None:
    assert score_kinds(False, {}, 0) == ["knn"]


def test_neglogp_is_not_offered_when_a_machine_owns_every_class() -> None:
    """One drone flying all four missions (real-uav): its neglogp is 0 for every window, whatever it sounds like."""
    assert score_kinds(True, {"uav": [0, 1, 2, 3]}, 4) == ["knn"]
    assert score_kinds(True, {"id_00": [0, 1], "id_01": [1]}, 2) == ["knn"]


def test_why_neglogp_is_constant_for_a_machine_that_owns_every_class() -> None:
    enc = Encoder(EncoderConfig(n_mels=16))
    head = ArcMarginHead(enc.cfg.embedding_dim, 3, 30.0, 0.7)
    scorer = WindowScorer("clp", "neglogp", enc, head, None, {"a": [0, 1, 2], "b": [0]}, {}, 5)
    windows = np.random.default_rng(0).normal(size=(6, 16, 64)).astype(np.float32)
    torch.manual_seed(0)
    owns_all = scorer.score(windows, ["a"] * 6)
    owns_one = scorer.score(windows, ["b"] * 6)
    assert np.allclose(owns_all, 0.0, atol=1e-5)  # float32 softmax: noise, no signal
    assert np.ptp(owns_one) > 1e-3
