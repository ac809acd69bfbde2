"""A fan model trained once per session on simulator normal audio, shared (read-only) by the e2e tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from soundwatch.settings import Settings, load_settings

FAN_IDS = ["id_00", "id_02", "id_04", "id_06", "id_08"]


@pytest.fixture(scope="session")
def trained_fan_registry(stack: Settings, tmp_path_factory) -> Path:
    from soundwatch.simulator import write_dcase_dataset

    root = tmp_path_factory.mktemp("e2e-model")
    data, registry = root / "data", root / "registry"
    write_dcase_dataset(data, ["fan"], ids_per_type=len(FAN_IDS), n_train=10, n_test_normal=0, n_test_anomaly=0)
    env = {**os.environ, "SOUNDWATCH_REDIS__KEY_PREFIX": f"e2e-train-{os.getpid()}"}
    cmd = [
        sys.executable,
        "-m",
        "deploy.main",
        "train",
        "--data",
        str(data),
        "--epochs",
        "3",
        "--registry",
        str(registry),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return registry


@pytest.fixture
def plant_settings(isolated_settings: Settings, trained_fan_registry: Path) -> Settings:
    """Private topics/database/Redis prefix, the shared fan model made current under this test's prefix."""
    from soundwatch.model.registry import ModelRegistry

    settings = load_settings(**{**isolated_settings.model_dump(), "registry_root": trained_fan_registry})
    registry = ModelRegistry(trained_fan_registry, settings.redis)
    registry.set_current("fan", registry.latest_version("fan"))
    return settings
