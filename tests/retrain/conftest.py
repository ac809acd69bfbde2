"""Fixtures of the retraining tests: one small trained base model per session (training is slow on 2 cores)."""

from __future__ import annotations

import os
import time

import pytest

from .retrain_helpers import BaseModel


def _train_base(tmp_path_factory: pytest.TempPathFactory, method: str, epochs: int) -> BaseModel:
    """A model trained on synthetic fans (2 IDs, 12 train clips each), files dated 2 h ago.

    The file dates matter: the model's data cutoff is the newest training file, and retraining
    only takes confirmed audio after it.
    """
    import torch

    from soundwatch.model.networks import EncoderConfig
    from soundwatch.model.registry import ModelRegistry
    from soundwatch.params import FeatureParams
    from soundwatch.simulator import write_dcase_dataset
    from training.datasets import scan_dataset
    from training.train import TrainConfig, train_machine_type

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(f"retrain-base-{method}")
    data = root / "data"
    write_dcase_dataset(data, ["fan"], ids_per_type=2, n_train=12, n_test_normal=8, n_test_anomaly=8, seconds=10)
    old = time.time() - 7200
    for f in data.rglob("*.wav"):
        os.utime(f, (old, old))
    cfg = TrainConfig(
        method=method,
        epochs=epochs,
        progress=False,
        device="cpu",
        encoder=EncoderConfig(channels=(8, 16, 32, 32), embedding_dim=64),
    )
    result = train_machine_type(scan_dataset(data, "fan"), FeatureParams(), cfg)
    registry = ModelRegistry(root / "registry")
    assert registry.save(result.artifact) == "v0001"
    return BaseModel(data, root / "registry")


@pytest.fixture(scope="session")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    """The default method, ``clp`` (SupCon + ArcFace, kNN or -log p score)."""
    return _train_base(tmp_path_factory, "clp", 4)


@pytest.fixture(scope="session")
def base_model_ae(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    """The ``ae`` baseline: on this synthetic set it is far more sensitive to speed changes than a
    4-epoch ``clp``, which makes it the model whose false alarms a drift really raises."""
    return _train_base(tmp_path_factory, "ae", 10)
