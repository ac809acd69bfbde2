"""Schema validation of rendered Kubernetes objects, offline (the schemas ship inside pip packages).

- Built-in kinds: kubernetes-validate's *strict* JSON schemas of the Kubernetes API (unknown fields
  are errors, as with `kubectl apply --validate=strict`), for the oldest and newest versions we target.
- KEDA kinds (keda.sh/v1alpha1): KEDA's CRD schemas as cloudcoil-models-keda turns them into pydantic
  models; we validate against the JSON schema of those models with unknown fields rejected (the API
  server's strict field validation does the same for a CRD's structural schema).
Any other kind is an error, never a silent pass.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, latest_version

K8S_VERSIONS = ("1.28", latest_version())
KEDA_API = "keda.sh/v1alpha1"


class SchemaError(Exception):
    """The object does not validate (or no schema exists for its kind)."""


def validate(obj: dict[str, Any], k8s_version: str) -> None:
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if obj.get("apiVersion", "").startswith("keda.sh/"):
        _validate_keda(obj, where)
        return
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise SchemaError(f"{where} (Kubernetes {exc.version}): {path}: {exc.message}") from exc
    except SchemaNotFoundError as exc:
        raise SchemaError(f"{where}: {exc.message}") from exc


def _closed(node: Any) -> Any:
    """Copy of a JSON schema where every object with ``properties`` rejects other keys."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


@cache
def keda_schema(kind: str) -> dict[str, Any]:
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, kind, None)
    if model is None or not hasattr(model, "model_json_schema"):
        raise SchemaError(f"KEDA has no kind {kind} in {KEDA_API}")
    schema = _closed(model.model_json_schema(by_alias=True))
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


def _validate_keda(obj: dict[str, Any], where: str) -> None:
    if obj["apiVersion"] != KEDA_API:
        raise SchemaError(f"{where}: KEDA apiVersion {obj['apiVersion']} (expected {KEDA_API})")
    schema = keda_schema(obj["kind"])
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path))
    if errors:
        detail = "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])
        raise SchemaError(f"{where} (KEDA CRD schema): {detail}")
