"""Shared fixtures for the training tests: small synthetic DCASE folders and tiny trained models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from soundwatch.model.registry import Artifact, ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.simulator import write_dcase_dataset
from training.datasets import scan_dataset
from training.evaluate import evaluate
from training.train import TrainConfig, TrainResult, train_machine_type


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # the test machine's cores are shared


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One type, two IDs, 3 s clips: enough for artifact mechanics, not for quality."""
    root = tmp_path_factory.mktemp("tiny")
    write_dcase_dataset(
        root,
        ["valve"],
        ids_per_type=2,
        n_train=4,
        n_test_normal=2,
        n_test_anomaly=2,
        seconds=3.0,
        sample_rate=16_000,
        seed=1,
    )
    return root


@pytest.fixture(scope="session")
def tiny_result(tiny_data: Path) -> TrainResult:
    records = scan_dataset(tiny_data, "valve")
    return train_machine_type(records, FeatureParams(), TrainConfig(epochs=1, device="cpu", progress=False))


@pytest.fixture(scope="session")
def method_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic set each training method's learning test trains and evaluates on (written once):
    pump, three machines, 8 training + 4 normal + 6 anomalous test clips each, 10 s."""
    root = tmp_path_factory.mktemp("method_data")
    write_dcase_dataset(
        root,
        ["pump"],
        ids_per_type=3,
        n_train=8,
        n_test_normal=4,
        n_test_anomaly=6,
        seconds=10.0,
        sample_rate=16_000,
        seed=0,
    )
    return root


@pytest.fixture
def evaluate_artifact(tmp_path: Path) -> Callable[[Artifact, Path], dict[str, Any]]:
    """``run(artifact, data)``: save the artifact in a fresh registry and return ``evaluate``'s report on
    ``data`` for its machine type (scored exactly like the stream)."""

    def run(artifact: Artifact, data: Path) -> dict[str, Any]:
        registry = ModelRegistry(tmp_path / "evaluated-registry")
        registry.save(artifact)
        return evaluate(data, registry, machine_type=artifact.machine_type, progress=False)

    return run
