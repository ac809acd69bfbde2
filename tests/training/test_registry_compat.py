"""Artifacts written before the typed metadata (#17) still load, through ArtifactMetadata.

``fixtures/registry_pre17`` was written by the pre-#17 code (``training.registry.ModelRegistry.save`` of
main at 3345183): a tiny ``ae`` model, unsigned, with that code's exact metadata keys.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from soundwatch.model.metadata import ArtifactMetadata
from soundwatch.model.registry import ArtifactError, ModelRegistry
from soundwatch.params import FeatureParams

FIXTURE = Path(__file__).parent / "fixtures" / "registry_pre17"


@pytest.fixture
def old_registry(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(FIXTURE, root)
    return root


def _rewrite_metadata(path: Path, change: dict, drop: tuple[str, ...] = ()) -> None:
    """Edit a metadata.json and recompute its checksum the way the registry does."""
    meta = json.loads(path.read_text())
    meta.update(change)
    for key in drop:
        del meta[key]
    body = {k: v for k, v in meta.items() if k != "checksum"}
    meta["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))


def test_an_artifact_of_the_previous_format_loads_with_typed_metadata(old_registry: Path) -> None:
    reg = ModelRegistry(old_registry, signing_key=None)
    meta = reg.metadata("fan", "v0001")
    assert isinstance(meta, ArtifactMetadata)
    assert (meta.machine_type, meta.version, meta.method, meta.score_kind) == ("fan", "v0001", "ae", "recon")
    assert meta.feature_params == FeatureParams() and meta.median_k == 5 and meta.knn_k == 5
    assert meta.machine_ids == ["id_00", "id_02"] and meta.thresholds == {"id_00": 12.5, "id_02": 13.0}
    assert meta.data_cutoff == "2026-12-01T00:00:00Z" and meta.parent_version is None and meta.gate is None

    model = reg.load("fan")
    assert model.metadata == meta and model.threshold_for("id_02") == 13.0 and model.threshold_for("id_09") == 13.0
    windows = np.random.default_rng(0).normal(-40.0, 10.0, (3, 128, 64)).astype(np.float32)
    scores = model.score_windows(windows, ["id_00", "id_02", "id_09"])
    assert scores.shape == (3,) and scores.dtype == np.float64 and np.isfinite(scores).all()


def test_keys_older_artifacts_lack_get_the_behaviour_they_were_trained_with(old_registry: Path) -> None:
    _rewrite_metadata(old_registry / "fan" / "v0001" / "metadata.json", {}, drop=("class_source", "knn_k", "bank_ids"))
    meta = ModelRegistry(old_registry, signing_key=None).metadata("fan", "v0001")
    assert (meta.class_source, meta.knn_k, meta.bank_ids) == ("machine_id", 5, [])
    assert meta.aggregation == "mean"  # written before per-type clip aggregation (#15): the mean it was scored with


def test_metadata_without_a_required_key_is_refused_with_its_name(old_registry: Path) -> None:
    _rewrite_metadata(old_registry / "fan" / "v0001" / "metadata.json", {}, drop=("thresholds",))
    with pytest.raises(ArtifactError, match="thresholds"):
        ModelRegistry(old_registry, signing_key=None).metadata("fan", "v0001")


def test_a_newer_metadata_format_is_refused(old_registry: Path) -> None:
    _rewrite_metadata(old_registry / "fan" / "v0001" / "metadata.json", {"format_version": 99})
    with pytest.raises(ArtifactError, match="newer than this soundwatch reads"):
        ModelRegistry(old_registry, signing_key=None).metadata("fan", "v0001")


def test_typed_metadata_writes_back_the_json_it_was_read_from() -> None:
    """Every key read comes back unchanged; keys the old artifact lacks come back with their default."""
    raw = json.loads((FIXTURE / "fan" / "v0001" / "metadata.json").read_text())
    assert "aggregation" not in raw
    assert ArtifactMetadata.from_dict(raw).to_dict() == {**raw, "aggregation": "mean"}
    current = ArtifactMetadata.from_dict(raw).to_dict()
    assert ArtifactMetadata.from_dict(current).to_dict() == current
