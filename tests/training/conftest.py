"""Shared fixtures for the training tests: small synthetic DCASE folders and tiny trained models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from soundwatch.params import FeatureParams
from training.datasets import scan_dataset
from training.synthetic import write_dcase_dataset
from training.train import TrainConfig, TrainResult, train_machine_type


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the test machine's cores are shared


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One type, two IDs, 3 s clips: enough for artifact mechanics, not for quality."""
    root = tmp_path_factory.mktemp("tiny")
    write_dcase_dataset(root, ["valve"], ids_per_type=2, n_train=4, n_test_normal=2, n_test_anomaly=2,
                        seconds=3.0, sample_rate=16_000, seed=1)  # fmt: skip
    return root


@pytest.fixture(scope="session")
def tiny_result(tiny_data: Path) -> TrainResult:
    records = scan_dataset(tiny_data, "valve")
    return train_machine_type(records, FeatureParams(), TrainConfig(epochs=1, device="cpu", progress=False))
