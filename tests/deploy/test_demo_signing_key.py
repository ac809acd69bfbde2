"""The demo signs its models like production: the configured key, else one it generates once into var/."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from deploy.demo import KEY_ENV, ensure_signing_key
from soundwatch.params import FeatureParams
from soundwatch.settings import load_settings


def _legacy_version(root: Path) -> str:
    """A version as an earlier demo (no key) saved it: checksums, no signature."""
    import torch

    from soundwatch.model.registry import Artifact, ModelRegistry

    artifact = Artifact(
        machine_type="fan",
        method="clp",
        score_kind="knn",
        feature_params=FeatureParams(),
        median_k=3,
        model_config={},
        state={"encoder": {"w": torch.zeros(2)}},
        class_map=["id_00"],
        id_classes={"id_00": [0]},
        thresholds={"id_00": 1.0},
        default_threshold=1.0,
        threshold_rule="test",
    )
    return ModelRegistry(root, signing_key=None).save(artifact)


def test_the_demo_generates_a_private_key_once_and_signs_older_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soundwatch.model.registry import ArtifactError, ModelRegistry

    monkeypatch.delenv(KEY_ENV, raising=False)  # restored afterwards, also after the demo sets it
    registry, key_file = tmp_path / "registry", tmp_path / "var" / "registry-signing.key"
    version = _legacy_version(registry)
    settings = load_settings(registry_root=registry, redis={"url": "redis://127.0.0.1:1/0"})
    assert settings.registry_signing_key is None

    keyed = ensure_signing_key(settings, key_file)
    key = key_file.read_text().strip()
    assert len(key) == 64 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert keyed.registry_signing_key is not None and keyed.registry_signing_key.get_secret_value() == key
    assert os.environ[KEY_ENV] == key, "the processes the demo starts inherit the key"
    assert ModelRegistry.from_settings(keyed).metadata("fan", version).version == version, "signed on creation"
    with pytest.raises(ArtifactError, match="signed with another key"):
        ModelRegistry(registry, signing_key="a-different-key-0123456789").metadata("fan", version)

    again = ensure_signing_key(settings, key_file)  # the next demo run reuses the key
    assert again.registry_signing_key == keyed.registry_signing_key and key_file.read_text().strip() == key


def test_a_configured_key_is_used_and_nothing_is_written(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "registry-signing.key"
    settings = load_settings(
        registry_root=tmp_path / "registry", registry_signing_key=SecretStr("configured-key-0123456789")
    )
    assert ensure_signing_key(settings, key_file) is settings
    assert not key_file.exists()
