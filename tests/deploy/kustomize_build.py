"""`kustomize build` for the features deploy/k8s uses, so CI can validate the rendered manifests
without a kubectl or kustomize binary (neither installs from PyPI).

Supported kustomization keys: ``apiVersion``, ``kind``, ``resources`` (YAML files and directories
holding a kustomization), ``namespace``, ``images`` (``name`` -> ``newName``/``newTag``/``digest``)
and ``patches`` given by ``path`` (a strategic-merge patch that names its target by apiVersion,
kind and metadata.name). Anything else raises :class:`UnsupportedFeature`, so an overlay that starts
using another kustomize feature fails its test instead of rendering something kustomize would not.

Semantics follow kustomize (sigs.k8s.io/kustomize/api): a layer renders its resources first
(bases fully, with their own transformers), then applies its own transformers in kustomize's order
— patches, namespace, images. Strategic merge takes each list's merge strategy and key from the
Kubernetes OpenAPI extensions (``x-kubernetes-patch-strategy`` / ``-merge-key``) in the schemas
kubernetes-validate ships; lists of kinds without a schema (custom resources) are replaced, as in
kustomize. Images match on the name without tag or digest, exactly.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
# Kinds kustomize leaves without a namespace (cluster-scoped) among those we could meet.
CLUSTER_SCOPED = {
    "Namespace",
    "Node",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "RuntimeClass",
    "IngressClass",
    "CSIDriver",
    "VolumeAttachment",
    "ClusterRole",
    "ClusterTriggerAuthentication",
}
# Kinds whose namespace handling goes beyond metadata.namespace in kustomize (not modelled here).
NAMESPACE_SPECIAL = {
    "RoleBinding",
    "ClusterRoleBinding",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "CustomResourceDefinition",
}


class UnsupportedFeature(Exception):
    """The kustomization uses something this renderer does not implement."""


class BuildError(Exception):
    """What kustomize itself would refuse (a missing file, a patch without target, a duplicate id)."""


def build(path: Path) -> list[Obj]:
    """Render the kustomization in directory ``path`` (like ``kustomize build path``)."""
    path = Path(path)
    kfile = next((path / n for n in KUSTOMIZATION_NAMES if (path / n).is_file()), None)
    if kfile is None:
        raise BuildError(f"{path}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(k) - SUPPORTED_KEYS
    if unknown:
        raise UnsupportedFeature(f"{kfile}: {sorted(unknown)} not supported by this renderer")
    if k.get("kind", "Kustomization") != "Kustomization":
        raise UnsupportedFeature(f"{kfile}: kind {k['kind']} (only Kustomization)")

    objects: list[Obj] = []
    for ref in k.get("resources", []):
        objects.extend(_load_resource(path, ref))
    _check_unique(objects, kfile)
    for patch in k.get("patches", []):
        _apply_patch(objects, path, patch, kfile)
    if "namespace" in k:
        _set_namespace(objects, k["namespace"])
    for image in k.get("images", []):
        _set_image(objects, image, kfile)
    return objects


def resource_id(obj: Obj) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def _load_resource(base: Path, ref: str) -> list[Obj]:
    if "://" in ref or ref.startswith("github.com/"):
        raise UnsupportedFeature(f"remote resource {ref}")
    target = (base / ref).resolve()
    if target.is_dir():
        return build(target)
    if not target.is_file():
        raise BuildError(f"{base}: resource {ref} does not exist")
    docs = [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
    for d in docs:
        if not isinstance(d, dict) or not {"apiVersion", "kind", "metadata"} <= set(d):
            raise BuildError(f"{target}: not a Kubernetes object: {str(d)[:80]}")
    return docs


def _check_unique(objects: list[Obj], where: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        rid = resource_id(obj)
        if rid in seen:
            raise BuildError(f"{where}: resource {rid} is defined twice")
        seen.add(rid)


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _apply_patch(objects: list[Obj], base: Path, spec: Obj, where: Path) -> None:
    if set(spec) != {"path"}:
        raise UnsupportedFeature(f"{where}: patch {spec} (only `path:` strategic-merge patches)")
    patch_file = base / spec["path"]
    if not patch_file.is_file():
        raise BuildError(f"{where}: patch {spec['path']} does not exist")
    patch = yaml.safe_load(patch_file.read_text())
    if not isinstance(patch, dict):
        raise UnsupportedFeature(f"{patch_file}: JSON6902 patches need a target (not supported)")
    meta = patch.get("metadata", {})
    matches = [
        obj
        for obj in objects
        if _group(obj["apiVersion"]) == _group(patch["apiVersion"])
        and obj["kind"] == patch["kind"]
        and obj["metadata"]["name"] == meta.get("name")
        and meta.get("namespace", obj["metadata"].get("namespace")) == obj["metadata"].get("namespace")
    ]
    if len(matches) != 1:
        raise BuildError(f"{patch_file}: matches {len(matches)} resources (kustomize needs exactly one)")
    target = matches[0]
    schema = _kind_schema(patch["apiVersion"], patch["kind"])
    merged = strategic_merge(target, patch, schema)
    target.clear()
    target.update(merged)


def _set_namespace(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        kind = obj["kind"]
        if kind in NAMESPACE_SPECIAL:
            raise UnsupportedFeature(f"namespace transformer on {kind}")
        if kind == "Namespace":
            if obj["metadata"]["name"] != namespace:
                raise UnsupportedFeature(f"Namespace {obj['metadata']['name']} under namespace: {namespace}")
            continue
        if kind not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace


_IMAGE = re.compile(r"^(?P<name>[^@]+?)(?::(?P<tag>[^:/@]+))?(?:@(?P<digest>.+))?$")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``registry:5000/app:1.0@sha256:..`` -> (``registry:5000/app``, ``1.0``, ``sha256:..``)."""
    m = _IMAGE.match(image)
    if not m:
        raise BuildError(f"bad image reference {image!r}")
    return m["name"], m["tag"], m["digest"]


def _set_image(objects: list[Obj], spec: Obj, where: Path) -> None:
    unknown = set(spec) - {"name", "newName", "newTag", "digest"}
    if unknown or "name" not in spec:
        raise UnsupportedFeature(f"{where}: image entry {spec}")

    def rewrite(image: str) -> str:
        name, tag, digest = split_image(image)
        if name != spec["name"]:
            return image
        name = spec.get("newName", name)
        if "digest" in spec:
            return f"{name}@{spec['digest']}"
        if "newTag" in spec:
            return f"{name}:{spec['newTag']}"
        return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    for c in value:
                        if isinstance(c, dict) and isinstance(c.get("image"), str):
                            c["image"] = rewrite(c["image"])
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for obj in objects:
        walk(obj)


# ---------------------------------------------------------------------------- strategic merge
@cache
def _definitions() -> dict[str, Any]:
    return json.loads(_schema_file("_definitions.json"))["$defs"]


def _schema_file(name: str) -> str:
    from kubernetes_validate.utils import latest_version

    root = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{latest_version()}-local-strict"
    return (root / name).read_text()


def _kind_schema(api_version: str, kind: str) -> Obj:
    """The kind's schema from kubernetes-validate ({} for kinds it has none of: custom resources)."""
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        return json.loads(_schema_file(f"{kind.lower()}-{api}.json"))
    except FileNotFoundError:
        return {}


def _resolve(node: Obj) -> Obj:
    while "$ref" in node:
        node = _definitions()[node["$ref"].rsplit("/", 1)[-1]]
    return node


def _property(schema: Obj, key: str) -> Obj:
    node = _resolve(schema)
    props = node.get("properties", {})
    if key in props:
        return props[key]
    extra = node.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def strategic_merge(original: Obj, patch: Obj, schema: Obj) -> Obj:
    """``patch`` merged into ``original`` with Kubernetes strategic-merge-patch rules."""
    out = copy.deepcopy(original)
    for key, value in patch.items():
        if key.startswith("$"):
            raise UnsupportedFeature(f"patch directive {key}")
        if value is None:
            out.pop(key, None)
            continue
        sub = _property(schema, key)
        current = out.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            out[key] = strategic_merge(current, value, sub)
        elif isinstance(value, list) and isinstance(current, list):
            out[key] = _merge_list(current, value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(original: list, patch: list, schema: Obj) -> list:
    strategy = schema.get("x-kubernetes-patch-strategy", "").split(",")
    if "merge" not in strategy:
        return copy.deepcopy(patch)  # the default: the patch's list replaces the original
    key = schema.get("x-kubernetes-patch-merge-key")
    out = copy.deepcopy(original)
    if key is None:  # a set of scalars
        return out + [v for v in patch if v not in out]
    items = schema.get("items", {})
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise BuildError(f"patch list item without its merge key {key!r}: {item}")
        if item.get("$patch"):
            raise UnsupportedFeature(f"patch directive $patch in {item}")
        at = next((i for i, o in enumerate(out) if o.get(key) == item[key]), None)
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            out[at] = strategic_merge(out[at], item, items)
    return out
