"""deploy/docker/bootstrap-models.sh (the image's `soundwatch-bootstrap-models`), run for real with
the soundwatch CLI on tiny synthetic audio: it trains the first model of each type that has none,
trains nothing on a second run, waits for models, and refuses to train when it cannot read the
registry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_files import DEPLOY

from soundwatch.simulator import write_dcase_dataset

SCRIPT = DEPLOY / "docker" / "bootstrap-models.sh"
TRAIN_OPTIONS = ["--method", "ae", "--epochs", "1", "--device", "cpu"]  # seconds per type on CPU


def _write_type(root: Path, machine_type: str) -> None:
    write_dcase_dataset(
        root,
        [machine_type],
        ids_per_type=2,
        n_train=3,
        n_test_normal=1,
        n_test_anomaly=1,
        seconds=3.0,
        sample_rate=16_000,
        seed=3,
    )


@pytest.fixture
def run(tmp_path, unique):
    """``run(*args, **env)`` -> CompletedProcess of the script with a private registry and Redis prefix."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "soundwatch").is_file():
        pytest.fail(f"no soundwatch console script in {bin_dir}: install the project (pip install -e .)")
    base = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDWATCH_")}
    base.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONPATH": str(DEPLOY.parent),
            "SOUNDWATCH_REGISTRY_ROOT": str(tmp_path / "registry"),
            "SOUNDWATCH_REDIS__KEY_PREFIX": f"test:{unique}",
            "OMP_NUM_THREADS": "1",
        }
    )

    def go(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [shutil.which("sh") or "/bin/sh", str(SCRIPT), *args],
            env={**base, **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )

    return go


def _versions(registry: Path) -> dict[str, list[str]]:
    if not registry.is_dir():
        return {}
    return {t.name: sorted(v.name for v in t.iterdir() if not v.name.startswith(".")) for t in registry.iterdir()}


@pytest.mark.slow
def test_trains_each_type_without_a_model_once(run, tmp_path):
    data, registry = tmp_path / "data", tmp_path / "registry"
    _write_type(data, "valve")
    first = run("train", str(data), *TRAIN_OPTIONS)
    assert first.returncode == 0, first.stderr
    assert _versions(registry) == {"valve": ["v0001"]}

    _write_type(data, "fan")  # a type added later: only it is trained
    second = run("train", str(data), *TRAIN_OPTIONS)
    assert second.returncode == 0, second.stderr
    assert "valve: has a model, nothing to do" in second.stderr
    assert _versions(registry) == {"valve": ["v0001"], "fan": ["v0001"]}

    third = run("train", str(data), *TRAIN_OPTIONS)  # idempotent: nothing left to train
    assert third.returncode == 0, third.stderr
    assert "no model yet" not in third.stderr
    assert _versions(registry) == {"valve": ["v0001"], "fan": ["v0001"]}

    waited = run("wait", str(data), "0")
    assert waited.returncode == 0 and "every machine type" in waited.stderr, waited.stderr


@pytest.mark.slow
def test_wait_names_the_types_without_a_model_and_gives_up_after_the_timeout(run, tmp_path):
    data = tmp_path / "data"
    _write_type(data, "pump")
    result = run("wait", str(data), "2", BOOTSTRAP_POLL_S="1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("waiting for the first model of: pump") == 2
    assert "still no model for: pump after 2 s; starting anyway" in result.stderr


def test_never_trains_when_the_registry_cannot_be_read(run, tmp_path):
    data = tmp_path / "data"
    _write_type(data, "valve")
    result = run("train", str(data), *TRAIN_OPTIONS, SOUNDWATCH_LOG_LEVEL="LOUD")  # a bad setting
    assert result.returncode == 4, result.stderr
    assert "cannot read the model registry for 'valve'" in result.stderr
    assert _versions(tmp_path / "registry") == {}


def test_a_type_that_fails_to_train_is_named(run, tmp_path):
    data = tmp_path / "data"
    _write_type(data, "valve")
    result = run("train", str(data), "--epochs", "0")  # rejected by `soundwatch train`
    assert result.returncode == 6, result.stderr
    assert "training failed for: valve" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "{tmp}/missing"], 3, "no training data at"),
        (["train", "{tmp}"], 3, "no <type>/train/normal_* clips"),
        (["wait"], 2, "usage:"),
        (["retrain", "{tmp}"], 2, "usage:"),
        (["wait", "{tmp}", "soon"], 2, "usage:"),
    ],
)
def test_usage_and_data_errors(run, tmp_path, args, code, message):
    result = run(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == code and message in result.stderr, result.stderr
