"""The registry cannot be pointed outside itself, re-sealed, or made to unpickle code.

Each attack is done as an attacker would: a value written to Redis, a reload message published on
Redis, a CLI argument, a metadata.json edited and its (unkeyed) checksum recomputed, a file replaced
by a pickle payload, a link planted in the registry. The test session runs with a signing key
(tests/conftest.py), as CI and the demo do.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from soundwatch.model.registry import ArtifactError, ModelRegistry
from soundwatch.settings import Settings
from training.train import TrainResult

KEY_A = "rotation-key-A-0123456789abcdef"
KEY_B = "rotation-key-B-fedcba9876543210"
OUTSIDE = "../../elsewhere/valve/v0001"  # from <root>/valve/: <root>/../elsewhere/valve/v0001


def _reseal(vdir: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit metadata.json and recompute its checksum: anyone who can write the registry can do this."""
    path = vdir / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    body = {k: v for k, v in meta.items() if k != "checksum"}
    meta["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))


def _registry(root: Path, keyed: bool) -> ModelRegistry:
    """keyed: the session's signing key (the default); else a registry without signatures (checksums only)."""
    return ModelRegistry(root) if keyed else ModelRegistry(root, signing_key=None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


@pytest.fixture
def two_registries(tmp_path: Path, tiny_result: TrainResult) -> tuple[Path, Path]:
    """``<tmp>/registry/valve/v0001`` and, outside it, ``<tmp>/elsewhere/valve/v0001`` (a valid artifact)."""
    root, outside = tmp_path / "registry", tmp_path / "elsewhere"
    assert ModelRegistry(root).save(tiny_result.artifact) == "v0001"
    assert ModelRegistry(outside).save(tiny_result.artifact) == "v0001"
    assert (root / "valve" / OUTSIDE / "metadata.json").resolve() == (outside / "valve/v0001/metadata.json").resolve()
    return root, outside


# -------------------------------------------------------------------------------- names from outside
@pytest.mark.integration
def test_a_version_read_from_redis_cannot_leave_the_registry(
    isolated_settings: Settings, two_registries: tuple[Path, Path]
) -> None:
    import redis

    from scoring.models import ModelCache

    root, _ = two_registries
    reg = ModelRegistry(root, isolated_settings.redis)
    client = redis.Redis.from_url(isolated_settings.redis.url, decode_responses=True)
    key = f"{isolated_settings.redis.key_prefix}:model:current:valve"
    try:
        client.set(key, OUTSIDE)
        with pytest.raises(ArtifactError, match="not a model version") as info:
            reg.load("valve")
        assert info.value.hint and "models promote" in info.value.hint
        cache = ModelCache(reg)
        assert cache.get("valve") is None, "the worker must not load what the tampered key names"
        assert "not a model version" in cache.why_missing("valve")

        client.set(key, "v0001")
        cache = ModelCache(reg)
        model = cache.get("valve")
        assert model is not None and _inside(model.path, root)  # type: ignore[attr-defined]
        client.set(key, OUTSIDE)  # tampered while the worker runs: it keeps its verified model
        assert cache.check_current() == []
        assert cache.get("valve") is model
    finally:
        client.delete(key)


@pytest.mark.integration
def test_a_reload_message_cannot_leave_the_registry(
    isolated_settings: Settings, two_registries: tuple[Path, Path]
) -> None:
    import redis

    from scoring.models import ModelCache, ReloadListener, parse_reload_message

    root, _ = two_registries
    bad_messages = [
        {"machine_type": "valve", "version": OUTSIDE},
        {"machine_type": "../elsewhere/valve"},
        {"machine_type": "valve", "version": "v0001\n"},
        {"machine_type": "valve", "version": ".."},
    ]
    for bad in bad_messages:
        with pytest.raises(ValueError, match="is not a"):
            parse_reload_message(json.dumps(bad))

    client = redis.Redis.from_url(isolated_settings.redis.url)
    listener = ReloadListener(client, isolated_settings.redis.key_prefix)
    try:
        assert listener.poll() == []  # subscribes
        time.sleep(0.2)
        client.publish(listener.channel, json.dumps({"machine_type": "valve", "version": OUTSIDE}))
        client.publish(listener.channel, json.dumps({"machine_type": "valve", "version": "v0001"}))
        received: list[tuple[str, str | None]] = []
        deadline = time.monotonic() + 5
        while len(received) < 1 and time.monotonic() < deadline:
            received += listener.poll()
            time.sleep(0.05)
        assert received == [("valve", "v0001")], "the traversal message is dropped, the valid one arrives"
    finally:
        listener.close()

    # and a worker asked directly (a message parsed by an older worker) keeps its verified model
    cache = ModelCache(ModelRegistry(root))
    model = cache.get("valve")
    assert model is not None
    assert cache.reload("valve", OUTSIDE) is False
    assert cache.get("valve") is model and _inside(model.path, root)  # type: ignore[attr-defined]


def test_cli_arguments_cannot_leave_the_registry(
    two_registries: tuple[Path, Path], run_soundwatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, outside = two_registries
    monkeypatch.setenv("SOUNDWATCH_REDIS__URL", "redis://127.0.0.1:1/0")  # no Redis: the newest on disk
    secret_marker = "metadata-from-elsewhere"
    _reseal(outside / "valve" / "v0001", lambda meta: meta["data_summary"].update(marker=secret_marker))
    attempts = [
        ["models", "show", "../elsewhere/valve"],
        ["models", "show", "valve", OUTSIDE],
        ["models", "list", "--machine-type", "../elsewhere/valve"],
        ["models", "promote", "valve", OUTSIDE],
        ["models", "rollback", "valve", "--to", OUTSIDE],
        ["models", "sign", "--machine-type", "../elsewhere/valve"],
    ]
    for args in attempts:
        result = run_soundwatch(*args, "--registry", str(root))
        assert result.code == 6, (args, result.stdout, result.stderr)
        assert "is not a machine type name" in result.stderr or "is not a version name" in result.stderr, result.stderr
        assert secret_marker not in result.stdout
    shown = run_soundwatch("models", "show", "valve", "--registry", str(root))
    assert shown.code == 0, shown.stderr
    assert json.loads(shown.stdout)["verified_by"].startswith("signature (key id ")


def test_links_and_copies_inside_the_registry_are_refused(two_registries: tuple[Path, Path]) -> None:
    root, outside = two_registries
    reg = ModelRegistry(root)
    (root / "valve" / "v0002").symlink_to(outside / "valve" / "v0001", target_is_directory=True)
    with pytest.raises(ArtifactError, match="outside the registry"):
        reg.load("valve", "v0002")
    (root / "valve" / "v0002").unlink()

    shutil.copytree(root / "valve" / "v0001", root / "valve" / "v0003")  # a signed version under another name
    with pytest.raises(ArtifactError, match="copied or renamed"):
        reg.load("valve", "v0003")
    shutil.rmtree(root / "valve" / "v0003")

    weights = root / "valve" / "v0001" / "weights.pt"
    copy = outside / "weights-copy.pt"
    shutil.copy(weights, copy)
    weights.unlink()
    weights.symlink_to(copy)  # same bytes, same checksum, but read from outside the registry
    with pytest.raises(ArtifactError, match="link out of its version directory"):
        reg.load("valve", "v0001")


# -------------------------------------------------------------------------------- re-sealed artifacts
def test_resealed_thresholds_are_refused(tmp_path: Path, tiny_result: TrainResult, run_soundwatch) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(tiny_result.artifact)
    vdir = tmp_path / "valve" / version

    def never_alert(meta: dict[str, Any]) -> None:
        meta["thresholds"] = {mid: 1e9 for mid in meta["thresholds"]}
        meta["default_threshold"] = 1e9

    _reseal(vdir, never_alert)
    with pytest.raises(ArtifactError, match="does not match its signature") as info:
        reg.load("valve", version)
    assert info.value.hint
    result = run_soundwatch("models", "show", "valve", version, "--registry", str(tmp_path))
    assert result.code == 6 and "does not match its signature" in result.stderr


def test_deleting_the_files_key_does_not_skip_verification(tmp_path: Path, tiny_result: TrainResult) -> None:
    for keyed in (True, False):
        root = tmp_path / f"keyed-{keyed}"
        reg = _registry(root, keyed)
        version = reg.save(tiny_result.artifact)
        _reseal(root / "valve" / version, lambda meta: meta.pop("files"))
        expected = "does not match its signature" if keyed else "must list the SHA-256"
        with pytest.raises(ArtifactError, match=expected):
            reg.load("valve", version)


class _Payload:
    """Unpickling this creates a file: what a malicious weights.pt would do with code instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.marker), "w"))


def test_a_pickle_payload_is_refused_with_the_registrys_error(tmp_path: Path, tiny_result: TrainResult) -> None:
    marker = tmp_path / "code-ran"
    for keyed in (True, False):
        root = tmp_path / f"keyed-{keyed}"
        reg = _registry(root, keyed)
        version = reg.save(tiny_result.artifact)
        vdir = root / "valve" / version
        torch.save({"encoder": _Payload(marker)}, vdir / "weights.pt")
        _reseal(vdir, lambda meta, vdir=vdir: meta["files"].update({"weights.pt": _sha256(vdir / "weights.pt")}))
        expected = "does not match its signature" if keyed else "torch refused to load it with weights_only"
        with pytest.raises(ArtifactError, match=expected) as info:
            reg.load("valve", version)
        assert info.value.exit_code == 6 and info.value.hint
        assert not marker.exists(), "the payload ran"


# -------------------------------------------------------------------------------- signing and migration
def test_unsigned_artifacts_load_without_a_key_and_after_models_sign(
    tmp_path: Path, tiny_result: TrainResult, run_soundwatch
) -> None:
    root = tmp_path / "registry"
    legacy = ModelRegistry(root, signing_key=None)  # what today's main writes: no signature.json
    v1, v2 = legacy.save(tiny_result.artifact), legacy.save(tiny_result.artifact)
    assert not (root / "valve" / v1 / "signature.json").exists()
    assert legacy.load("valve", v1).version == v1
    keyed = ModelRegistry(root)  # the session's key
    with pytest.raises(ArtifactError, match="is not signed") as info:
        keyed.load("valve", v1)
    assert "soundwatch models sign" in (info.value.hint or "")

    weights = root / "valve" / v2 / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # v2 was damaged while unsigned
    result = run_soundwatch("models", "sign", "--registry", str(root), "--json")
    assert result.code == 6, result.stderr
    rows = {r["version"]: r for r in json.loads(result.stdout)}
    assert rows[v1]["outcome"] == "signed" and rows[v2]["outcome"] == "refused"
    assert "checksum" in rows[v2]["problem"] and "1 signed" in result.stderr and "1 refused" in result.stderr
    assert keyed.load("valve", v1).version == v1
    with pytest.raises(ArtifactError, match="is not signed"):
        keyed.load("valve", v2)  # a refused version stays unsigned, so workers refuse it

    again = run_soundwatch("models", "sign", "--registry", str(root), "--machine-type", "valve", "--json")
    assert [r["outcome"] for r in json.loads(again.stdout)] == ["already signed", "refused"]


def test_key_rotation_keeps_old_workers_loading(
    tmp_path: Path, tiny_result: TrainResult, run_soundwatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soundwatch.model.registry import ArtifactSigner

    root = tmp_path / "registry"
    old = ModelRegistry(root, signing_key=KEY_A)
    version = old.save(tiny_result.artifact)
    new = ModelRegistry(root, signing_key=KEY_B)
    with pytest.raises(ArtifactError, match="signed with another key"):
        new.load("valve", version)
    with pytest.raises(ArtifactError, match="re-signing needs that key"):
        new.sign("valve", version)
    tampered = tmp_path / "tampered"
    shutil.copytree(root, tampered)
    _reseal(tampered / "valve" / version, lambda meta: meta.update(default_threshold=1e9))
    with pytest.raises(ArtifactError, match="does not match its signature by a previous key"):
        ModelRegistry(tampered, signing_key=KEY_B).sign("valve", version, [ArtifactSigner(KEY_A)])

    key_file = tmp_path / "old.key"
    key_file.write_text(KEY_A + "\n")
    monkeypatch.setenv("SOUNDWATCH_REGISTRY_SIGNING_KEY", KEY_B)
    result = run_soundwatch("models", "sign", "--registry", str(root), "--previous-key-file", str(key_file))
    assert result.code == 0, result.stderr
    assert "1 re-signed" in result.stderr and KEY_A not in result.stderr and KEY_B not in result.stderr
    assert new.load("valve", version).version == version
    assert old.load("valve", version).version == version, "workers still on the old key keep loading"
    assert new.sign("valve", version) == "already signed"


def test_the_signature_is_beside_the_metadata_not_inside_it(tmp_path: Path, tiny_result: TrainResult) -> None:
    reg = ModelRegistry(tmp_path, signing_key=KEY_A)
    vdir = tmp_path / "valve" / reg.save(tiny_result.artifact)
    signature = json.loads((vdir / "signature.json").read_text())
    assert [e["algorithm"] for e in signature["signatures"]] == ["hmac-sha256"]
    meta_text = (vdir / "metadata.json").read_text()
    assert signature["signatures"][0]["mac"] not in meta_text and KEY_A not in meta_text
    assert KEY_A not in (vdir / "signature.json").read_text() and KEY_A not in repr(reg.signer)


def test_a_forged_or_broken_signature_file_is_refused(tmp_path: Path, tiny_result: TrainResult) -> None:
    reg = ModelRegistry(tmp_path)
    version = reg.save(tiny_result.artifact)
    path = tmp_path / "valve" / version / "signature.json"
    doc = json.loads(path.read_text())
    for mac in ("0" * 64, "é" * 64, 42):
        doc["signatures"][0]["mac"] = mac
        path.write_text(json.dumps(doc))
        with pytest.raises(ArtifactError, match="does not match its signature"):
            reg.load("valve", version)
    for broken in ("{not json", '{"signatures": "all good"}', "[]"):
        path.write_text(broken)
        with pytest.raises(ArtifactError, match="unreadable .*signature.json"):
            reg.load("valve", version)
