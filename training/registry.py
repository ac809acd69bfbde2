"""Versioned model artifacts on disk, the current version per machine type in Redis.

Layout: ``<root>/<machine_type>/<version>/`` with

* ``weights.pt``  — ``{"encoder"|"head"|"ae": state_dict}`` (loaded with ``weights_only=True``)
* ``bank.npz``    — per-machine embedding banks for the kNN score (``b0, b1, ...``; names in metadata)
* ``metadata.json`` — everything needed to rebuild and trust the model: feature params, class map,
  per-ID thresholds + rule, score kind, median_k, training-data summary (incl. the data cutoff
  time), metrics, version, parent version, method, model config, per-file SHA-256 and a checksum
  of the metadata itself.

A version directory is written under a temporary name and renamed into place, so a reader never
sees half an artifact. Loading refuses an artifact whose files or metadata do not match their
checksums, or whose feature parameters do not parse. Redis is optional: without it
``load(type)`` takes the newest version on disk.

Redis keys: ``{prefix}:model:current:{type}`` (string version); changes are announced on the
channel ``{prefix}:model:reload`` as JSON ``{"machine_type": ..., "version": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from soundwatch.errors import BadInput, ServiceUnavailable
from soundwatch.params import FeatureParams
from soundwatch.settings import RedisSettings
from training.device import resolve_device
from training.scorer import WindowScorer

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
WEIGHTS, BANK, METADATA = "weights.pt", "bank.npz", "metadata.json"


class ArtifactError(BadInput):
    """A model artifact is missing, tampered with or unreadable."""


@dataclass
class Artifact:
    """A trained model in memory, ready to be saved (see the module docstring for the fields)."""

    machine_type: str
    method: str
    score_kind: str
    feature_params: FeatureParams
    median_k: int
    model_config: dict[str, Any]
    state: dict[str, dict[str, torch.Tensor]]
    class_map: list[str]
    id_classes: dict[str, list[int]]
    thresholds: dict[str, float]
    default_threshold: float
    threshold_rule: str
    knn_k: int = 5
    bank: dict[str, np.ndarray] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    class_source: str = "machine_id"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _metadata_checksum(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class LoadedModel:
    """An artifact loaded for inference: ``score_windows`` is the scoring worker's whole interface."""

    def __init__(self, metadata: dict[str, Any], scorer: WindowScorer, path: Path) -> None:
        self.metadata = metadata
        self.path = path
        self.machine_type: str = metadata["machine_type"]
        self.version: str = metadata["version"]
        self.method: str = metadata["method"]
        self.score_kind: str = metadata["score_kind"]
        self.feature_params: FeatureParams = FeatureParams.model_validate(metadata["feature_params"])
        self.median_k: int = int(metadata["median_k"])
        self.thresholds: dict[str, float] = {k: float(v) for k, v in metadata["thresholds"].items()}
        self.default_threshold: float = float(metadata["default_threshold"])
        self.machine_ids: list[str] = list(metadata["machine_ids"])
        self.scorer = scorer

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def score_windows(self, windows: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray:
        """[B, n_mels, W] dB windows -> [B] float64 raw window scores, high = anomalous.

        Machine IDs this model was not trained on get the type-level fallback score documented
        in :mod:`training.scorer` — never an exception. Shape mismatches raise ValueError.
        """
        w = np.asarray(windows)
        p = self.feature_params
        if w.ndim != 3 or w.shape[1:] != (p.n_mels, p.window_frames):
            raise ValueError(f"windows must be [B, {p.n_mels}, {p.window_frames}], got {w.shape}")
        return self.scorer.score(w, list(machine_ids))

    def threshold_for(self, machine_id: str) -> float:
        """The calibrated threshold on the *median-filtered* score of ``machine_id``."""
        return self.thresholds.get(machine_id, self.default_threshold)

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move to ``device`` (``auto``/``cpu``/``cuda``); CUDA inference uses autocast fp16/bf16."""
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        self.scorer.to(dev)
        return self

    def __repr__(self) -> str:
        return f"LoadedModel({self.machine_type}/{self.version}, method={self.method}, score={self.score_kind})"


class ModelRegistry:
    """Artifacts under ``root``; optional Redis for the current version per machine type."""

    def __init__(self, root: Path | str, redis_settings: RedisSettings | None = None) -> None:
        self.root = Path(root)
        self.redis_settings = redis_settings
        self._redis: Any = None

    # -- Redis -------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self.redis_settings is None:
            raise ServiceUnavailable("this registry has no Redis settings", hint="pass redis_settings to ModelRegistry")
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.redis_settings.url, socket_timeout=3, socket_connect_timeout=3, decode_responses=True,
                **self.redis_settings.client_kwargs(),
            )  # fmt: skip
        return self._redis

    def _key(self, machine_type: str) -> str:
        return f"{self.redis_settings.key_prefix}:model:current:{machine_type}"  # type: ignore[union-attr]

    @property
    def reload_channel(self) -> str:
        prefix = self.redis_settings.key_prefix if self.redis_settings else "soundwatch"
        return f"{prefix}:model:reload"

    def current_version(self, machine_type: str) -> str | None:
        """The version Redis marks current, or None when unset (raises ServiceUnavailable if Redis is down)."""
        import redis

        try:
            value = self._client().get(self._key(machine_type))
        except redis.RedisError as exc:
            raise ServiceUnavailable(
                f"Redis at {self.redis_settings.url} unreachable reading the current model of {machine_type!r}: {exc}",  # type: ignore[union-attr]
                hint="start it with `soundwatch services up` or check [redis] url",
            ) from exc
        return value or None

    def set_current(self, machine_type: str, version: str) -> None:
        """Mark ``version`` current (it must exist and verify) and publish a reload message."""
        import redis

        self._verified_dir(machine_type, version)
        try:
            client = self._client()
            client.set(self._key(machine_type), version)
            client.publish(self.reload_channel, json.dumps({"machine_type": machine_type, "version": version}))
        except redis.RedisError as exc:
            raise ServiceUnavailable(
                f"Redis at {self.redis_settings.url} unreachable setting {machine_type} -> {version}: {exc}",  # type: ignore[union-attr]
                hint="start it with `soundwatch services up`; the artifact is saved, rerun set_current later",
            ) from exc

    # -- disk --------------------------------------------------------------------------------
    def machine_types(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, machine_type: str) -> list[str]:
        d = self.root / machine_type
        if not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
        return sorted(found, key=lambda v: int(v[1:]))

    def latest_version(self, machine_type: str) -> str | None:
        v = self.versions(machine_type)
        return v[-1] if v else None

    def save(self, artifact: Artifact) -> str:
        """Write a new version directory and return its version string (``v0001``, ``v0002``, ...)."""
        if not _TYPE_RE.match(artifact.machine_type):
            raise BadInput(f"machine type {artifact.machine_type!r} is not a safe directory name")
        type_dir = self.root / artifact.machine_type
        type_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=type_dir))
        try:
            torch.save(artifact.state, tmp / WEIGHTS)
            bank_ids = sorted(artifact.bank)
            arrays = {f"b{i}": np.asarray(artifact.bank[m], dtype=np.float32) for i, m in enumerate(bank_ids)}
            np.savez(tmp / BANK, **arrays)
            meta: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "machine_type": artifact.machine_type,
                "method": artifact.method,
                "score_kind": artifact.score_kind,
                "feature_params": artifact.feature_params.model_dump(mode="json"),
                "feature_fingerprint": artifact.feature_params.fingerprint(),
                "median_k": artifact.median_k,
                "model_config": artifact.model_config,
                "class_source": artifact.class_source,
                "class_map": list(artifact.class_map),
                "id_classes": artifact.id_classes,
                "machine_ids": sorted(artifact.thresholds),
                "thresholds": artifact.thresholds,
                "default_threshold": artifact.default_threshold,
                "threshold_rule": artifact.threshold_rule,
                "knn_k": artifact.knn_k,
                "bank_ids": bank_ids,
                "data_summary": artifact.data_summary,
                "metrics": artifact.metrics,
                "parent_version": artifact.parent_version,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {name: _sha256(tmp / name) for name in (WEIGHTS, BANK)},
            }
            # Claim the next free version number atomically (rename fails if it exists).
            while True:
                latest = self.latest_version(artifact.machine_type)
                version = f"v{(int(latest[1:]) + 1 if latest else 1):04d}"
                meta["version"] = version
                meta["checksum"] = _metadata_checksum(meta)
                (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
                try:
                    os.rename(tmp, type_dir / version)
                    return version
                except OSError:
                    if not (type_dir / version).exists():
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def metadata(self, machine_type: str, version: str) -> dict[str, Any]:
        """A version's verified metadata (method, score, thresholds, metrics...) without loading its weights."""
        return self._verified_dir(machine_type, version)[1]

    def _verified_dir(self, machine_type: str, version: str) -> tuple[Path, dict[str, Any]]:
        d = self.root / machine_type / version
        meta_path = d / METADATA
        if not meta_path.is_file():
            have = ", ".join(self.versions(machine_type)) or "none"
            raise ArtifactError(
                f"no model artifact at {d} (missing {METADATA})",
                hint=f"versions of {machine_type!r} in {self.root}: {have}; train one with `soundwatch train`",
            )
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"unreadable {meta_path}: {exc}", hint="retrain or restore this version") from exc
        if meta.get("checksum") != _metadata_checksum(meta):
            raise ArtifactError(
                f"{meta_path} does not match its checksum: the metadata was modified after saving",
                hint="do not edit artifacts by hand; retrain, or restore the directory from backup",
            )
        for name, digest in meta.get("files", {}).items():
            path = d / name
            if not path.is_file() or _sha256(path) != digest:
                raise ArtifactError(
                    f"{path} is missing or does not match the checksum in {meta_path}: "
                    "the artifact is corrupt or tampered",
                    hint="retrain, or restore the directory from backup",
                )
        try:
            FeatureParams.model_validate(meta["feature_params"])
        except (KeyError, ValidationError) as exc:
            raise ArtifactError(
                f"{meta_path} has invalid feature parameters: {exc}", hint="retrain this model"
            ) from exc
        return d, meta

    def resolve_version(self, machine_type: str, version: str | None = None) -> str:
        """``version`` or, when None, the Redis current version, else the newest on disk."""
        if version is not None:
            return version
        if self.redis_settings is not None:
            try:
                current = self.current_version(machine_type)
                if current:
                    return current
            except ServiceUnavailable as exc:
                log.warning("%s; falling back to the newest version on disk", exc.message)
        latest = self.latest_version(machine_type)
        if latest is None:
            have = ", ".join(self.machine_types()) or "none"
            raise ArtifactError(
                f"no model for machine type {machine_type!r} under {self.root}",
                hint=f"types with models: {have}; train one with `soundwatch train --machine-type {machine_type}`",
            )
        return latest

    def load(self, machine_type: str, version: str | None = None, device: str = "cpu") -> LoadedModel:
        """Load and verify a version (None: current in Redis, else newest on disk) onto ``device``."""
        version = self.resolve_version(machine_type, version)
        d, meta = self._verified_dir(machine_type, version)
        try:
            state = torch.load(d / WEIGHTS, map_location="cpu", weights_only=True)
            with np.load(d / BANK) as npz:
                bank = {m: npz[f"b{i}"] for i, m in enumerate(meta["bank_ids"])}
            scorer = WindowScorer.build(
                meta["method"], meta["score_kind"], meta["model_config"], state,
                {k: list(v) for k, v in meta["id_classes"].items()}, bank, int(meta["knn_k"]),
            )  # fmt: skip
        except (OSError, KeyError, RuntimeError, ValueError) as exc:
            raise ArtifactError(f"cannot rebuild the model in {d}: {exc}", hint="retrain this model") from exc
        return LoadedModel(meta, scorer, d).to(device)
