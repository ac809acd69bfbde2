"""``geco`` trains on synthetic audio, beats chance clearly and really learns its GeCo task.

Its negatives must include ``clp``'s mel-shifted copies besides the predicted ones: predictions keep
the spectrum, and with predicted negatives alone the embedding went blind to faults that change the
whole spectrum (real-uav's broken propellers, kNN AUC 0.79 where every other method has 1.0).

AUC alone cannot catch a broken GeCo on this small synthetic set (kNN on almost any embedding
ranks its anomalies well), so the test also checks the method's own diagnostic: the encoder must
tell the predictor's spliced windows from real ones (``generated_separation``; 0.5 when the
predictor leaks the frame it predicts or the encoder never saw the negatives, about 0.55 measured;
0.82-0.92 over seeds 0-2 for the real method).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from soundwatch.model.networks import EncoderConfig
from soundwatch.params import FeatureParams
from training.datasets import WindowSet, scan_dataset
from training.methods.common import EncoderJob, shift_mel
from training.methods.geco import FramePredictor, fit, geco_negatives
from training.train import TrainConfig, train_machine_type

TYPE = "pump"


def test_predictor_cannot_see_the_frame_it_predicts() -> None:
    torch.manual_seed(0)
    predictor = FramePredictor(n_mels=16, window_frames=12, layers=2).eval()
    x = torch.randn(2, 16, 12)
    pred, _ = predictor(x)
    changed = x.clone()
    changed[:, :, 5] += 10.0  # frame 5 may only influence predictions of frames 6..11
    pred2, _ = predictor(changed)
    assert torch.allclose(pred[:, :, :6], pred2[:, :, :6], atol=1e-5)
    assert not torch.allclose(pred[:, :, 6:], pred2[:, :, 6:], atol=1e-3)


def test_negatives_are_mel_shifted_and_predicted_windows_as_separate_classes() -> None:
    n_mels, frames, n_labels = 32, 16, 3
    predictor = FramePredictor(n_mels, frames).eval()
    x = torch.randn(8, n_mels, frames) * 3 - 40
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    neg, labels = geco_negatives(predictor, 0.25, n_labels)(x, y, torch.Generator().manual_seed(0))
    assert labels.tolist() == [*(y[:2] + n_labels).tolist(), *(y[:2] + 2 * n_labels).tolist()]
    for i in range(2):  # where the energy sits moved by 4-12 mel bins: a negative class of its own
        assert any(torch.equal(neg[i], shift_mel(x[i], s)) for s in [*range(-12, -3), *range(4, 13)]), (
            "the first negatives must be mel-shifted copies"
        )
    changed = (neg[2:] != x[:2]).any(dim=1)  # [2, frames]: only a block of frames is predicted
    assert changed.any(dim=1).all() and not changed.all(dim=1).any()


def _tiny_job(labels: Callable[[np.ndarray], np.ndarray] | None, n_classes: int) -> tuple[EncoderJob, np.ndarray]:
    """One epoch of geco on 24 random windows of 4 clips, labelled ``labels(clip)`` (None: by clip)."""
    rng = np.random.default_rng(0)
    windows = (rng.normal(size=(24, 32, 16)) * 3 - 40).astype(np.float32)
    clip = np.repeat(np.arange(4), 6)
    cfg = TrainConfig(
        method="geco",
        epochs=1,
        batch_size=8,
        device="cpu",
        progress=False,
        encoder=EncoderConfig(channels=(4, 8), embedding_dim=16),
    )
    job = EncoderJob(
        WindowSet([], windows, clip),
        clip.astype(np.int64) if labels is None else labels(clip),
        n_classes,
        cfg,
        torch.device("cpu"),
        torch.Generator().manual_seed(0),
        {},
    )
    return job, windows


def test_classified_type_trains_head_over_real_classes_only() -> None:
    """With classes, the ArcFace stage learns shifted and predicted classes too; the head keeps the real ones."""
    job, _ = _tiny_job(lambda clip: (clip % 2).astype(np.int64), 2)
    encoder, head = fit(job)
    assert head is not None and head.weight.shape == (2, 16)
    assert set(job.metrics) >= {"predictor_loss", "supcon_loss", "arcface_loss", "generated_separation"}


def test_single_machine_type_uses_instance_discrimination_without_head() -> None:
    """``n_classes == 0``: labels are clips, no ID classifier, predictions still are negatives."""
    job, windows = _tiny_job(None, 0)
    encoder, head = fit(job)
    assert head is None
    assert encoder(torch.from_numpy(windows[:3])).shape == (3, 16)
    assert set(job.metrics) >= {"predictor_loss", "supcon_loss", "generated_separation"}


@pytest.mark.slow
def test_geco_learns_on_synthetic(method_data: Path, evaluate_artifact) -> None:
    cfg = TrainConfig(method="geco", epochs=4, device="cpu", progress=False, seed=0)
    result = train_machine_type(scan_dataset(method_data, TYPE), FeatureParams(), cfg)
    art = result.artifact
    m = art.metrics
    assert art.method == "geco" and art.class_map == ["id_00", "id_02", "id_04"]
    assert set(art.state) == {"encoder", "head"}  # the predictor is a training device only
    assert m["supcon_loss"][-1] < m["supcon_loss"][0]
    assert m["arcface_loss"][-1] < m["arcface_loss"][0]
    assert m["predictor_loss"][-1] < m["predictor_loss"][0]
    assert m["generated_separation"] >= 0.7, m["generated_separation"]
    report = evaluate_artifact(art, method_data)
    per_type = report["per_type"][TYPE]
    print(json.dumps({"geco": per_type, "train_seconds": round(result.seconds, 1)}))
    assert per_type["auc_mean"] >= 0.8, report["per_id"]
    assert per_type["pauc_mean"] >= 0.65, report["per_id"]
