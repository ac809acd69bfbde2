"""The deploy files as the deploy tests read them: compose after interpolation with .env.example,
Kubernetes after rendering each overlay (kustomize_build)."""

from __future__ import annotations

from pathlib import Path

import compose_file
from kustomize_build import build

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
OVERLAYS = sorted(p for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())


def compose_model() -> dict:
    return compose_file.load(COMPOSE, compose_file.read_env_file(COMPOSE.parent / ".env.example"))


def soundwatch_services() -> dict[str, dict]:
    """The compose services that run the soundwatch image."""
    return {n: s for n, s in compose_model()["services"].items() if s.get("image", "").startswith("soundwatch")}


def rendered() -> dict[str, list[dict]]:
    """overlay name -> its rendered objects."""
    return {overlay.name: build(overlay) for overlay in OVERLAYS}


def pod_specs(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(object, pod spec) of every workload among rendered objects."""
    out = []
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}
        ).get("spec")
        if pod:
            out.append((obj, pod))
    return out


def containers(pod: dict) -> list[dict]:
    """Init containers and containers of a pod spec."""
    return [*pod.get("initContainers", []), *pod["containers"]]
