"""An artifact's ``metadata.json``, typed: what every reader of a model (worker, retraining, ops CLI,
dashboards) may rely on, so nobody reads untyped keys.

The file on disk stays the plain JSON the registry checksums and signs (``to_dict`` writes exactly
the keys ``from_dict`` reads). ``from_dict`` is also the compatibility reader: keys that older
artifacts lack get the value those artifacts were trained with (see ``_DEFAULTS``), so every
version written since format 1 loads without a migration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from soundwatch.params import FeatureParams

FORMAT_VERSION = 1

# Keys added after format 1 was first written, with the behaviour artifacts without them had.
_DEFAULTS: dict[str, Any] = {
    "class_source": "machine_id",  # classes were machine IDs before section/attribute classes existed
    "class_map": [],
    "knn_k": 5,
    "bank_ids": [],
    "data_summary": {},
    "metrics": {},
    "parent_version": None,
    "created_at": "",
    "aggregation": "mean",  # window -> clip: the mean before per-type pooling choices (#15)
}
_REQUIRED = (
    "machine_type",
    "version",
    "method",
    "score_kind",
    "feature_params",
    "median_k",
    "model_config",
    "id_classes",
    "machine_ids",
    "thresholds",
    "default_threshold",
    "threshold_rule",
)


@dataclass(frozen=True)
class ArtifactMetadata:
    """Everything needed to rebuild and trust a saved model (see :mod:`soundwatch.model.registry`)."""

    format_version: int
    machine_type: str
    version: str
    method: str
    score_kind: str
    feature_params: FeatureParams
    feature_fingerprint: str
    median_k: int
    model_config: dict[str, Any]
    class_source: str
    class_map: list[str]
    id_classes: dict[str, list[int]]
    machine_ids: list[str]
    thresholds: dict[str, float]
    default_threshold: float
    threshold_rule: str
    knn_k: int
    bank_ids: list[str]
    data_summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    created_at: str = ""
    aggregation: str = "mean"  # window -> clip (soundwatch.model.filters.clip_score)
    files: dict[str, str] = field(default_factory=dict)
    checksum: str = ""

    @property
    def data_cutoff(self) -> str | None:
        """ISO time of the newest audio the model was trained on (None: unknown)."""
        value = self.data_summary.get("data_cutoff")
        return str(value) if value else None

    @property
    def gate(self) -> dict[str, Any] | None:
        """The promotion gate's verdict (``passed``, ``reasons``...) for retrained versions, else None."""
        gate = self.metrics.get("gate")
        return gate if isinstance(gate, dict) else None

    def to_dict(self) -> dict[str, Any]:
        """The ``metadata.json`` object (what ``from_dict`` reads; JSON types only)."""
        return {**asdict(self), "feature_params": self.feature_params.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactMetadata:
        """Parse a ``metadata.json`` object; KeyError/ValueError/TypeError name what is missing or wrong."""
        if int(raw.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ValueError(
                f"metadata format {raw['format_version']} is newer than this soundwatch reads ({FORMAT_VERSION})"
            )
        data = {**_DEFAULTS, **raw}
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise KeyError(f"metadata lacks {', '.join(missing)}")
        return cls(
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            machine_type=str(data["machine_type"]),
            version=str(data["version"]),
            method=str(data["method"]),
            score_kind=str(data["score_kind"]),
            feature_params=FeatureParams.model_validate(data["feature_params"]),
            feature_fingerprint=str(data.get("feature_fingerprint", "")),
            median_k=int(data["median_k"]),
            model_config=dict(data["model_config"]),
            class_source=str(data["class_source"]),
            class_map=[str(c) for c in data["class_map"]],
            id_classes={str(k): [int(c) for c in v] for k, v in data["id_classes"].items()},
            machine_ids=[str(m) for m in data["machine_ids"]],
            thresholds={str(k): float(v) for k, v in data["thresholds"].items()},
            default_threshold=float(data["default_threshold"]),
            threshold_rule=str(data["threshold_rule"]),
            knn_k=int(data["knn_k"]),
            bank_ids=[str(b) for b in data["bank_ids"]],
            data_summary=dict(data["data_summary"] or {}),
            metrics=dict(data["metrics"] or {}),
            parent_version=data["parent_version"],
            created_at=str(data["created_at"] or ""),
            aggregation=str(data["aggregation"]),
            files={str(k): str(v) for k, v in (data.get("files") or {}).items()},
            checksum=str(data.get("checksum", "")),
        )
