"""Artifacts round-trip, tampering is refused, Redis holds and announces the current version."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from soundwatch.errors import BadInput
from soundwatch.model.registry import ArtifactError, ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.settings import RedisSettings, Settings
from training.datasets import load_windows, scan_dataset
from training.train import TrainResult


def _test_windows(data: Path) -> tuple[np.ndarray, list[str]]:
    ws = load_windows([r for r in scan_dataset(data, "valve") if r.split == "test"], FeatureParams(), progress=False)
    return ws.windows, ws.machine_ids()


def test_artifact_round_trip(tmp_path: Path, tiny_data: Path, tiny_result: TrainResult) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = reg.save(tiny_result.artifact)
    v2 = reg.save(tiny_result.artifact)
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.versions("valve") == ["v0001", "v0002"] and reg.machine_types() == ["valve"]
    model = reg.load("valve")  # no Redis: newest on disk
    assert model.version == "v0002" and model.machine_type == "valve" and model.method == "clp"
    assert model.feature_params == FeatureParams()
    assert model.machine_ids == ["id_00", "id_02"]
    assert set(model.thresholds) == {"id_00", "id_02"} and model.default_threshold > 0
    assert model.threshold_for("id_00") == model.thresholds["id_00"]
    assert model.threshold_for("id_99") == model.default_threshold
    meta = json.loads((tmp_path / "valve" / "v0002" / "metadata.json").read_text())
    for key in (
        "feature_params",
        "class_map",
        "thresholds",
        "threshold_rule",
        "data_summary",
        "metrics",
        "parent_version",
        "method",
        "median_k",
        "files",
        "checksum",
        "version",
    ):
        assert key in meta, key
    assert "data_cutoff" in meta["data_summary"]

    windows, ids = _test_windows(tiny_data)
    scores = model.score_windows(windows, ids)
    assert scores.dtype == np.float64 and scores.shape == (len(windows),) and np.isfinite(scores).all()
    # scores after a save/load equal the in-memory scorer's (same weights, same bank)
    again = reg.load("valve", "v0001").score_windows(windows, ids)
    np.testing.assert_allclose(scores, again, rtol=1e-5, atol=1e-6)
    # an unknown machine of this type gets the documented type-level fallback, not an exception
    unknown = model.score_windows(windows[:3], ["id_99"] * 3)
    assert np.isfinite(unknown).all()
    with pytest.raises(ValueError, match="windows must be"):
        model.score_windows(windows[:, :64], ids)


def test_tampered_artifacts_are_refused(tmp_path: Path, tiny_result: TrainResult) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(tiny_result.artifact)
    vdir = tmp_path / "valve" / version
    weights = vdir / "weights.pt"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="checksum") as info:
        reg.load("valve", version)
    assert str(weights) in str(info.value) and info.value.hint
    weights.write_bytes(original)
    reg.load("valve", version)  # restored -> loads again

    meta_path = vdir / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["thresholds"]["id_00"] = 1e9  # someone "tunes" a threshold by hand
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="modified after saving"):
        reg.load("valve", version)
    with pytest.raises(BadInput, match="no model artifact"):
        reg.load("valve", "v0042")
    with pytest.raises(BadInput, match="no model for machine type 'fan'"):
        reg.load("fan")


def test_offline_registry_without_redis_is_usable(tmp_path: Path, tiny_result: TrainResult) -> None:
    # Redis settings pointing at a closed port: load falls back to the newest version on disk.
    reg = ModelRegistry(tmp_path, RedisSettings(url="redis://127.0.0.1:1/0"))
    version = reg.save(tiny_result.artifact)
    assert reg.load("valve").version == version


@pytest.mark.integration
def test_redis_current_version_and_reload_message(isolated_settings: Settings, tiny_result: TrainResult) -> None:
    import redis

    reg = ModelRegistry(isolated_settings.registry_root, isolated_settings.redis)
    v1 = reg.save(tiny_result.artifact)
    v2 = reg.save(tiny_result.artifact)
    assert reg.current_version("valve") is None
    client = redis.Redis.from_url(isolated_settings.redis.url, decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe(f"{isolated_settings.redis.key_prefix}:model:reload")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"

    reg.set_current("valve", v1)
    assert reg.current_version("valve") == v1
    assert client.get(f"{isolated_settings.redis.key_prefix}:model:current:valve") == v1
    msg = None
    deadline = time.monotonic() + 5
    while msg is None and time.monotonic() < deadline:
        msg = pubsub.get_message(timeout=1)
    assert msg is not None and json.loads(msg["data"]) == {"machine_type": "valve", "version": v1}
    # load(None) follows Redis, not the newest on disk
    assert reg.load("valve").version == v1 != v2
    with pytest.raises(BadInput):
        reg.set_current("valve", "v0099")  # a version that does not exist is never made current
    assert reg.current_version("valve") == v1
    pubsub.close()
    client.delete(f"{isolated_settings.redis.key_prefix}:model:current:valve")
