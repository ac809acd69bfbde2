"""Versioned model artifacts on disk, the current version per machine type in Redis.

Layout: ``<root>/<machine_type>/<version>/`` with

* ``weights.pt``  — ``{"encoder"|"head"|"ae": state_dict}`` (loaded with ``weights_only=True``)
* ``bank.npz``    — per-machine embedding banks for the kNN score (``b0, b1, ...``; names in metadata)
* ``metadata.json`` — everything needed to rebuild and trust the model: feature params, class map,
  per-ID thresholds + rule, score kind, median_k, clip aggregation, training-data summary (incl. the data cutoff
  time), metrics, version, parent version, method, model config, per-file SHA-256 and a checksum
  of the metadata itself.
* ``signature.json`` — when the registry has a signing key (setting ``registry_signing_key``):
  HMAC-SHA256 over the canonical metadata, which holds every file's SHA-256, so one MAC covers
  weights, bank, thresholds and feature parameters. It sits beside the metadata, never inside it.

A version directory is written under a temporary name and renamed into place, so a reader never
sees half an artifact. Loading refuses an artifact whose files or metadata do not match their
checksums, or whose feature parameters do not parse; with a signing key it also refuses an
unsigned or mis-signed one. Machine types and versions are checked against
:mod:`soundwatch.names` wherever they come in (arguments, Redis values), and every path is resolved
(links included) and must stay under the registry root. Redis is optional: without it
``load(type)`` takes the newest version on disk.

Redis keys: ``{prefix}:model:current:{type}`` (string version); changes are announced on the
channel ``{prefix}:model:reload`` as JSON ``{"machine_type": ..., "version": ...}``.

Key rotation: ``soundwatch models sign --previous-key-file OLD`` run with the new key adds a
new-key signature to every version after verifying its old-key one (old signatures stay, so
workers that still hold the old key keep loading); then switch every worker and the retrain job to
the new key. See training/README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import SecretStr, ValidationError

from soundwatch.errors import BadInput, ConfigError, ServiceUnavailable
from soundwatch.model.device import resolve_device
from soundwatch.model.kinds import build_scorer
from soundwatch.model.metadata import FORMAT_VERSION, ArtifactMetadata
from soundwatch.model.scorer import Scorer
from soundwatch.names import check_machine_type, check_version, is_machine_type, is_version
from soundwatch.params import FeatureParams
from soundwatch.settings import RedisSettings, Settings

log = logging.getLogger(__name__)

WEIGHTS, BANK, METADATA, SIGNATURE = "weights.pt", "bank.npz", "metadata.json", "signature.json"
CHECKSUMMED_FILES = (WEIGHTS, BANK)  # every artifact's metadata lists exactly these in "files"
SIGNATURE_FORMAT = 1


RELOAD_CHANNEL = "{prefix}:model:reload"  # the one name of the channel a promotion is announced on


def reload_channel(prefix: str) -> str:
    """The Redis channel on which ``set_current`` announces a new current version (``{prefix}:model:reload``)."""
    return RELOAD_CHANNEL.format(prefix=prefix)


def reload_message(machine_type: str, version: str) -> str:
    """The JSON a promotion publishes on :func:`reload_channel`."""
    return json.dumps({"machine_type": machine_type, "version": version})


def parse_reload_message(data: bytes | str) -> tuple[str, str | None]:
    """``{"machine_type": .., "version": ..}`` -> ``(machine_type, version)``; ValueError if malformed.

    Both must be plain names (:mod:`soundwatch.names`): anyone who can publish on Redis must not be
    able to point a worker at a path outside the registry.
    """
    try:
        obj = json.loads(data)
        machine_type = obj["machine_type"]
        version = obj.get("version")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"reload message {data!r} is not JSON with a machine_type") from exc
    if not is_machine_type(machine_type):
        raise ValueError(f"reload message {data!r}: machine_type is not a machine type name")
    if not (version is None or is_version(version)):
        raise ValueError(f"reload message {data!r}: version is not a version name (v0001, v0002, ...)")
    return machine_type, version


class ArtifactError(BadInput):
    """A model artifact is missing, tampered with, unsigned or unreadable."""


class _Default(Enum):
    FROM_SETTINGS = "from settings"


FROM_SETTINGS = _Default.FROM_SETTINGS


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
    aggregation: str = "mean"  # window -> clip (soundwatch.model.filters.clip_score)
    knn_k: int = 5
    bank: dict[str, np.ndarray] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    class_source: str = "machine_id"

    def describe(self) -> dict[str, Any]:
        """The ``metadata.json`` keys known before saving (``save`` adds version, time, files, checksum)."""
        return {
            "format_version": FORMAT_VERSION,
            "machine_type": self.machine_type,
            "method": self.method,
            "score_kind": self.score_kind,
            "feature_params": self.feature_params.model_dump(mode="json"),
            "feature_fingerprint": self.feature_params.fingerprint(),
            "median_k": self.median_k,
            "aggregation": self.aggregation,
            "model_config": self.model_config,
            "class_source": self.class_source,
            "class_map": list(self.class_map),
            "id_classes": self.id_classes,
            "machine_ids": sorted(self.thresholds),
            "thresholds": self.thresholds,
            "default_threshold": self.default_threshold,
            "threshold_rule": self.threshold_rule,
            "knn_k": self.knn_k,
            "bank_ids": sorted(self.bank),
            "data_summary": self.data_summary,
            "metrics": self.metrics,
            "parent_version": self.parent_version,
        }

    def scorer(self) -> Scorer:
        """Its window scorer (CPU), built exactly as the registry builds a saved version's."""
        return build_scorer(
            ArtifactMetadata.from_dict({**self.describe(), "version": "unsaved"}), self.state, self.bank
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _metadata_checksum(meta: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in meta.items() if k != "checksum"})).hexdigest()


class ArtifactSigner:
    """HMAC-SHA256 of an artifact's canonical metadata with a secret key.

    Whoever can write the registry can recompute the unkeyed checksums; only a holder of the key
    can produce a signature. ``key_id`` (an HMAC of a fixed label, not the key) names the key in
    messages so a rotation mismatch is visible without revealing the key.
    """

    algorithm = "hmac-sha256"
    _domain = b"soundwatch model artifact v1\n"

    def __init__(self, key: SecretStr | str) -> None:
        raw = key.get_secret_value() if isinstance(key, SecretStr) else key
        if not raw:
            raise ConfigError("the registry signing key is empty", "set registry_signing_key to a random secret")
        self._key = raw.encode()
        self.key_id = hmac.new(self._key, b"soundwatch registry key id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"ArtifactSigner(key_id={self.key_id})"

    def mac(self, meta: dict[str, Any]) -> str:
        return hmac.new(self._key, self._domain + _canonical(meta), hashlib.sha256).hexdigest()

    def entry(self, meta: dict[str, Any]) -> dict[str, str]:
        return {"algorithm": self.algorithm, "key_id": self.key_id, "mac": self.mac(meta)}

    def check(self, meta: dict[str, Any], entries: Sequence[dict[str, Any]]) -> bool | None:
        """True: a signature by this key matches; False: one exists and does not; None: none by this key."""
        mine = [e for e in entries if e.get("key_id") == self.key_id and e.get("algorithm") == self.algorithm]
        if not mine:
            return None
        expected = self.mac(meta)
        return any(
            isinstance(e.get("mac"), str) and hmac.compare_digest(e["mac"].encode(), expected.encode()) for e in mine
        )


@dataclass(frozen=True)
class _Verified:
    """A version that passed every check, with the exact bytes that were hashed (loaded from memory,
    so a file swapped after the check is never read)."""

    path: Path
    meta: dict[str, Any]  # the raw JSON object: checksums and signatures cover exactly these bytes' content
    typed: ArtifactMetadata
    blobs: dict[str, bytes]


class LoadedModel:
    """An artifact loaded for inference: ``score_windows`` is the scoring worker's whole interface."""

    def __init__(self, metadata: ArtifactMetadata, scorer: Scorer, path: Path) -> None:
        self.metadata = metadata
        self.path = path
        self.machine_type: str = metadata.machine_type
        self.version: str = metadata.version
        self.method: str = metadata.method
        self.score_kind: str = metadata.score_kind
        self.feature_params: FeatureParams = metadata.feature_params
        self.median_k: int = metadata.median_k
        self.aggregation: str = metadata.aggregation
        self.thresholds: dict[str, float] = dict(metadata.thresholds)
        self.default_threshold: float = metadata.default_threshold
        self.machine_ids: list[str] = list(metadata.machine_ids)
        self.scorer = scorer

    @property
    def device(self) -> torch.device:
        return self.scorer.device

    def score_windows(self, windows: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray:
        """[B, n_mels, W] dB windows -> [B] float64 raw window scores, high = anomalous.

        Machine IDs this model was not trained on get the type-level fallback score documented
        in :mod:`soundwatch.model.scorer` — never an exception. Shape mismatches raise ValueError.
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
        """Move to ``device`` (``auto``/``cpu``/``cuda``); CUDA inference: autocast bf16 where supported, else fp32."""
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        self.scorer.to(dev)
        return self

    def __repr__(self) -> str:
        return f"LoadedModel({self.machine_type}/{self.version}, method={self.method}, score={self.score_kind})"


class ModelRegistry:
    """Artifacts under ``root``; optional Redis for the current version per machine type.

    ``signing_key``: the HMAC key that signs saved artifacts and that loaded ones must be signed with;
    None = no signatures (checksums only). By default it is the process settings'
    ``registry_signing_key``, so every registry a process opens enforces the same policy.
    """

    def __init__(
        self,
        root: Path | str,
        redis_settings: RedisSettings | None = None,
        signing_key: SecretStr | str | None | _Default = FROM_SETTINGS,
    ) -> None:
        self.root = Path(root)
        self.redis_settings = redis_settings
        self._redis: Any = None
        if signing_key is FROM_SETTINGS:
            from soundwatch.settings import get_settings  # looked up per call: tests swap it

            signing_key = get_settings().registry_signing_key
        self.signer = ArtifactSigner(signing_key) if signing_key is not None else None

    @classmethod
    def from_settings(cls, settings: Settings, root: Path | None = None) -> ModelRegistry:
        """The registry ``settings`` describe (``root`` overrides ``registry_root``)."""
        return cls(root or settings.registry_root, settings.redis, settings.registry_signing_key)

    # -- Redis -------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self.redis_settings is None:
            raise ServiceUnavailable("this registry has no Redis settings", hint="pass redis_settings to ModelRegistry")
        if self._redis is None:
            import redis  # deferred: loads redis

            self._redis = redis.Redis.from_url(
                self.redis_settings.url,
                socket_timeout=3,
                socket_connect_timeout=3,
                decode_responses=True,
                **self.redis_settings.client_kwargs(),
            )
        return self._redis

    def _key(self, machine_type: str) -> str:
        check_machine_type(machine_type)
        return f"{self.redis_settings.key_prefix}:model:current:{machine_type}"  # type: ignore[union-attr]

    @property
    def reload_channel(self) -> str:
        return reload_channel(self.redis_settings.key_prefix if self.redis_settings else "soundwatch")

    def current_version(self, machine_type: str) -> str | None:
        """The version Redis marks current, or None when unset (raises ServiceUnavailable if Redis is down).

        A value that is not a version name (``../../elsewhere/fan/v0001``) raises ArtifactError: it was
        written outside soundwatch, and loading something else instead would hide that.
        """
        import redis  # deferred: loads redis

        key = self._key(machine_type)
        try:
            value = self._client().get(key)
        except redis.RedisError as exc:
            raise ServiceUnavailable(
                f"Redis at {self.redis_settings.url} unreachable reading the current model of {machine_type!r}: {exc}",  # type: ignore[union-attr]
                hint="start it with `soundwatch services up` or check [redis] url",
            ) from exc
        if value and not is_version(value):
            raise ArtifactError(
                f"Redis key {key} holds {value!r}, which is not a model version: refusing to load it",
                hint=f"it was written outside soundwatch; check who can write to Redis, then set it with "
                f"`soundwatch models promote {machine_type} VERSION`",
            )
        return value or None

    def set_current(self, machine_type: str, version: str) -> None:
        """Mark ``version`` current (it must exist and verify) and publish a reload message."""
        import redis  # deferred: loads redis

        self._verify(machine_type, version)
        try:
            client = self._client()
            client.set(self._key(machine_type), version)
            client.publish(self.reload_channel, reload_message(machine_type, version))
        except redis.RedisError as exc:
            raise ServiceUnavailable(
                f"Redis at {self.redis_settings.url} unreachable setting {machine_type} -> {version}: {exc}",  # type: ignore[union-attr]
                hint="start it with `soundwatch services up`; the artifact is saved, rerun set_current later",
            ) from exc

    # -- disk --------------------------------------------------------------------------------
    def machine_types(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if is_machine_type(p.name) and p.is_dir() and self.versions(p.name)
        )

    def versions(self, machine_type: str) -> list[str]:
        d = self.root / check_machine_type(machine_type)
        if not d.is_dir():
            return []
        found = [p.name for p in d.iterdir() if is_version(p.name) and p.is_dir()]
        return sorted(found, key=lambda v: int(v[1:]))

    def latest_version(self, machine_type: str) -> str | None:
        v = self.versions(machine_type)
        return v[-1] if v else None

    def save(self, artifact: Artifact) -> str:
        """Write a new version directory (signed when the registry has a key); return its version (``v0001``...)."""
        type_dir = self.root / check_machine_type(artifact.machine_type, "the artifact's machine type")
        type_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=type_dir))
        try:
            torch.save(artifact.state, tmp / WEIGHTS)
            arrays = {
                f"b{i}": np.asarray(artifact.bank[m], dtype=np.float32) for i, m in enumerate(sorted(artifact.bank))
            }
            np.savez(tmp / BANK, **arrays)
            meta: dict[str, Any] = {
                **artifact.describe(),
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": {name: _sha256(tmp / name) for name in CHECKSUMMED_FILES},
            }
            # Claim the next free version number atomically (rename fails if it exists).
            while True:
                latest = self.latest_version(artifact.machine_type)
                version = f"v{(int(latest[1:]) + 1 if latest else 1):04d}"
                meta["version"] = version
                meta["checksum"] = _metadata_checksum(meta)
                (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True))
                if self.signer is not None:
                    _write_signatures(tmp / SIGNATURE, [self.signer.entry(meta)])
                try:
                    os.rename(tmp, type_dir / version)
                    return version
                except OSError:
                    if not (type_dir / version).exists():
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def metadata(self, machine_type: str, version: str) -> ArtifactMetadata:
        """A version's verified metadata (method, score, thresholds, metrics...) without loading its weights."""
        return self._verify(machine_type, version).typed

    def _version_dir(self, machine_type: str, version: str) -> tuple[Path, Path]:
        """(the path as named, the real directory); the real one must lie under the registry root."""
        named = self.root / check_machine_type(machine_type) / check_version(version)
        real = named.resolve()
        if not real.is_relative_to(self.root.resolve()):
            raise ArtifactError(
                f"{named} resolves to {real}, outside the registry {self.root}: refusing to load it",
                hint="a link in the registry points elsewhere; remove it and restore the version from backup",
            )
        return named, real

    def _read(self, named: Path, real: Path, name: str) -> bytes:
        """A file of a version directory, refused when a link takes it out of that directory."""
        path = real / name
        if not path.resolve().is_relative_to(real):
            raise ArtifactError(
                f"{named / name} is a link out of its version directory: refusing to read it",
                hint="restore the version from backup or retrain",
            )
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ArtifactError(
                f"cannot read {named / name}: {exc}", hint="retrain, or restore the version from backup"
            ) from exc

    def _signatures(self, named: Path, real: Path) -> list[dict[str, Any]]:
        if not (real / SIGNATURE).exists():
            return []
        try:
            doc = json.loads(self._read(named, real, SIGNATURE))
            entries = doc["signatures"]
            if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
                raise TypeError("signatures is not a list of objects")
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(
                f"unreadable {named / SIGNATURE}: {exc}", hint="restore the version from backup, or retrain"
            ) from exc
        return entries

    def _check_signature(self, named: Path, real: Path, meta: dict[str, Any]) -> None:
        assert self.signer is not None
        entries = self._signatures(named, real)
        verdict = self.signer.check(meta, entries)
        if verdict:
            return
        if verdict is False:
            raise ArtifactError(
                f"{named} does not match its signature: its metadata or files were changed after signing",
                hint="do not edit artifacts by hand; retrain, or restore the directory from backup",
            )
        if not entries:
            raise ArtifactError(
                f"{named} is not signed, and this registry requires signed artifacts (registry_signing_key is set)",
                hint="artifacts saved before signing was configured: check them and run `soundwatch models sign`; "
                "otherwise retrain or restore the version from backup",
            )
        others = ", ".join(sorted({str(e.get("key_id")) for e in entries}))
        raise ArtifactError(
            f"{named} is signed with another key (key id {others}), not with this process's registry_signing_key "
            f"(key id {self.signer.key_id})",
            hint="give this process the key the registry is signed with, or re-sign the registry with this key: "
            "`soundwatch models sign --previous-key-file OLD_KEY_FILE`",
        )

    def _verify(self, machine_type: str, version: str, *, signature: bool = True) -> _Verified:
        """Every check of the module docstring; ``signature=False`` skips only the signature (for signing)."""
        named, real = self._version_dir(machine_type, version)
        meta_path = named / METADATA
        if not (real / METADATA).is_file():
            have = ", ".join(self.versions(machine_type)) or "none"
            raise ArtifactError(
                f"no model artifact at {named} (missing {METADATA})",
                hint=f"versions of {machine_type!r} in {self.root}: {have}; train one with `soundwatch train`",
            )
        try:
            meta = json.loads(self._read(named, real, METADATA))
        except ValueError as exc:
            raise ArtifactError(f"unreadable {meta_path}: {exc}", hint="retrain or restore this version") from exc
        if not isinstance(meta, dict):
            raise ArtifactError(f"{meta_path} is not a JSON object", hint="retrain or restore this version")
        if meta.get("checksum") != _metadata_checksum(meta):
            raise ArtifactError(
                f"{meta_path} does not match its checksum: the metadata was modified after saving",
                hint="do not edit artifacts by hand; retrain, or restore the directory from backup",
            )
        if signature and self.signer is not None:  # the checksum is unkeyed: anyone can recompute it
            self._check_signature(named, real, meta)
        if meta.get("machine_type") != machine_type or meta.get("version") != version:
            raise ArtifactError(
                f"{meta_path} describes {meta.get('machine_type')!r} {meta.get('version')!r}, not "
                f"{machine_type!r} {version!r}: the directory was copied or renamed",
                hint="versions are never copied by hand; retrain, or restore the directory from backup",
            )
        files = meta.get("files")
        if not isinstance(files, dict) or sorted(files) != sorted(CHECKSUMMED_FILES):
            raise ArtifactError(
                f"{meta_path} must list the SHA-256 of exactly {', '.join(CHECKSUMMED_FILES)} under 'files', "
                f"found {sorted(files) if isinstance(files, dict) else files!r}: the artifact cannot be verified",
                hint="retrain, or restore the directory from backup",
            )
        blobs = {}
        for name in CHECKSUMMED_FILES:
            if not (real / name).is_file():
                raise ArtifactError(f"{named / name} is missing", hint="retrain, or restore the directory from backup")
            blob = self._read(named, real, name)
            if hashlib.sha256(blob).hexdigest() != files[name]:
                raise ArtifactError(
                    f"{named / name} does not match the checksum in {meta_path}: the artifact is corrupt or tampered",
                    hint="retrain, or restore the directory from backup",
                )
            blobs[name] = blob
        try:
            FeatureParams.model_validate(meta["feature_params"])
        except (KeyError, ValidationError) as exc:
            raise ArtifactError(
                f"{meta_path} has invalid feature parameters: {exc}", hint="retrain this model"
            ) from exc
        try:
            typed = ArtifactMetadata.from_dict(meta)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{meta_path} is not valid model metadata: {exc}", hint="retrain this model") from exc
        return _Verified(real, meta, typed, blobs)

    def resolve_version(self, machine_type: str, version: str | None = None) -> str:
        """``version`` or, when None, the Redis current version, else the newest on disk."""
        check_machine_type(machine_type)
        if version is not None:
            return check_version(version)
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
        v = self._verify(machine_type, version)
        meta = v.typed
        try:
            state = torch.load(io.BytesIO(v.blobs[WEIGHTS]), map_location="cpu", weights_only=True)
        except (
            pickle.UnpicklingError,
            EOFError,
            zipfile.BadZipFile,
            RuntimeError,
            ValueError,
            TypeError,
            AttributeError,
            ImportError,
        ) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(
                f"{v.path / WEIGHTS} is not a plain tensor file: torch refused to load it with weights_only=True "
                f"({type(exc).__name__}: {first_line})",
                hint="the file may carry code; never load it with weights_only=False. Retrain, or restore the "
                "version from backup",
            ) from exc
        try:
            with np.load(io.BytesIO(v.blobs[BANK])) as npz:
                bank = {m: npz[f"b{i}"] for i, m in enumerate(meta.bank_ids)}
            scorer = build_scorer(meta, state, bank)
        except (OSError, KeyError, RuntimeError, ValueError, TypeError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"cannot rebuild the model in {v.path}: {exc}", hint="retrain this model") from exc
        return LoadedModel(meta, scorer, v.path).to(device)

    # -- signing -----------------------------------------------------------------------------
    def sign(self, machine_type: str, version: str, previous: Sequence[ArtifactSigner] = ()) -> str:
        """Add this registry's signature to a version after verifying it. Returns what was done:

        * ``already signed`` — it carries a valid signature by this key;
        * ``signed`` — it was unsigned; its checksums verified (the migration of a registry that had no key);
        * ``re-signed`` — it carries a valid signature by one of the ``previous`` keys (a key rotation).

        Raises ArtifactError for a version that fails its checksums or a signature check, or that is
        signed only by keys not given (signatures by other keys are kept, so workers that still hold
        an old key keep loading it during a rotation).
        """
        if self.signer is None:
            raise ConfigError(
                "no registry signing key is configured, so there is nothing to sign with",
                "set SOUNDWATCH_REGISTRY_SIGNING_KEY (or registry_signing_key in the TOML file)",
            )
        verified = self._verify(machine_type, version, signature=False)
        named, real = self._version_dir(machine_type, version)
        entries = self._signatures(named, real)
        mine = self.signer.check(verified.meta, entries)
        if mine:
            return "already signed"
        if mine is False:
            raise ArtifactError(
                f"{named} carries a signature by this key that does not match: it was tampered with",
                hint="retrain, or restore the directory from backup",
            )
        outcome = "signed"
        if entries:
            verdicts = [p.check(verified.meta, entries) for p in previous]
            if False in verdicts:
                raise ArtifactError(
                    f"{named} does not match its signature by a previous key: it was tampered with",
                    hint="retrain, or restore the directory from backup",
                )
            if True not in verdicts:
                others = ", ".join(sorted({str(e.get("key_id")) for e in entries}))
                raise ArtifactError(
                    f"{named} is signed with another key (key id {others}); re-signing needs that key to verify it",
                    hint="pass the key it was signed with: `soundwatch models sign --previous-key-file FILE`",
                )
            outcome = "re-signed"
        _write_signatures(real / SIGNATURE, [*entries, self.signer.entry(verified.meta)])
        return outcome

    def sign_all(
        self, machine_type: str | None = None, previous: Sequence[ArtifactSigner] = ()
    ) -> list[tuple[str, str, str, ArtifactError | None]]:
        """:meth:`sign` every version (of one type); ``(type, version, outcome, error)`` rows, refusals included."""
        rows: list[tuple[str, str, str, ArtifactError | None]] = []
        for mtype in [machine_type] if machine_type else self.machine_types():
            for version in self.versions(mtype):
                try:
                    rows.append((mtype, version, self.sign(mtype, version, previous), None))
                except ArtifactError as exc:
                    rows.append((mtype, version, "refused", exc))
        return rows


def _write_signatures(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write ``signature.json`` atomically (a reader sees the old or the new file, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"format": SIGNATURE_FORMAT, "signatures": entries}, indent=2, sort_keys=True))
    os.replace(tmp, path)
