"""Real validators over what cannot run here (no Docker engine, Kubernetes, KEDA): the compose file
against the Compose specification's schema, every rendered Kubernetes object against the API's
schemas (KEDA's against its CRD schema), the Dockerfile with hadolint, the bootstrap script with
ShellCheck. All schemas and binaries ship inside the test extra's pip packages; the validators run
with every HTTP proxy pointed at a closed local port, so a fetch at run time would fail the test.
Each validator is also shown rejecting a broken copy."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import compose_file
import pytest
from deploy_files import COMPOSE, DEPLOY, OVERLAYS, compose_model
from k8s_validation import K8S_VERSIONS, SchemaError, validate
from kustomize_build import build

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, any fetch fails fast
OFFLINE = {
    **os.environ,
    "HTTP_PROXY": CLOSED,
    "HTTPS_PROXY": CLOSED,
    "http_proxy": CLOSED,
    "https_proxy": CLOSED,
    "ALL_PROXY": CLOSED,
    "NO_PROXY": "",
    "no_proxy": "",
}


def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is missing: install the test extra (pip install -e '.[test]')")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=OFFLINE, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------- compose
def _check_compose(model: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "docker-compose.json"  # the model after interpolation, as compose validates it
    path.write_text(json.dumps(model))
    return _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))


def test_compose_file_matches_the_compose_specification(tmp_path):
    result = _check_compose(compose_model(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validator_rejects_broken_files(tmp_path):
    typo = compose_model()
    typo["services"]["scoring"]["volumez"] = typo["services"]["scoring"].pop("volumes")
    result = _check_compose(typo, tmp_path)
    assert result.returncode == 1 and "volumez" in result.stdout, result.stdout + result.stderr
    bad_condition = compose_model()
    bad_condition["services"]["scoring"]["depends_on"]["model-bootstrap"]["condition"] = "service_done"
    assert _check_compose(bad_condition, tmp_path).returncode == 1


def test_compose_needs_its_secrets():
    with pytest.raises(compose_file.InterpolationError, match="INFLUX_TOKEN"):
        compose_file.load(COMPOSE, {"REDIS_PASSWORD": "x", "INFLUX_ADMIN_PASSWORD": "x", "GRAFANA_ADMIN_PASSWORD": "x"})


# ---------------------------------------------------------------------------- kubernetes
@pytest.fixture
def no_network(monkeypatch):
    """The in-process validators must not open a connection (their schemas are package files)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a validator tried to connect: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_rendered_kubernetes_objects_validate(overlay: Path, version: str, no_network):
    objects = build(overlay)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Job",
        "Namespace",
        "PersistentVolumeClaim",
        "ScaledObject",
        "TriggerAuthentication",
    ]
    for obj in objects:
        validate(obj, version)


def _rendered(kind: str, name: str) -> dict:
    objects = build(OVERLAYS[0])
    return copy.deepcopy(next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name))


def test_kubernetes_validator_rejects_broken_objects():
    version = K8S_VERSIONS[-1]
    typo = _rendered("Deployment", "soundwatch-scoring")
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(SchemaError, match="readinesProbe"):
        validate(typo, version)
    wrong_type = _rendered("Deployment", "soundwatch-scoring")
    wrong_type["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = "soundwatch"
    with pytest.raises(SchemaError, match="runAsUser"):
        validate(wrong_type, version)
    missing = _rendered("Job", "soundwatch-model-bootstrap")
    del missing["spec"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(SchemaError):
        validate(missing, version)
    unknown_kind = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(SchemaError, match="Widget"):
        validate(unknown_kind, version)


def test_keda_validator_rejects_broken_objects():
    version = K8S_VERSIONS[-1]
    typo = _rendered("ScaledObject", "soundwatch-scoring")
    typo["spec"]["maxReplicas"] = typo["spec"].pop("maxReplicaCount")
    with pytest.raises(SchemaError, match="maxReplicas"):
        validate(typo, version)
    not_a_string = _rendered("ScaledObject", "soundwatch-scoring")
    not_a_string["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 500  # the CRD wants strings
    with pytest.raises(SchemaError, match="500"):
        validate(not_a_string, version)
    no_target = _rendered("ScaledObject", "soundwatch-scoring")
    del no_target["spec"]["scaleTargetRef"]
    with pytest.raises(SchemaError, match="scaleTargetRef"):
        validate(no_target, version)
    auth = _rendered("TriggerAuthentication", "soundwatch-kafka-auth")
    auth["spec"]["secretTargetRef"][0]["secret"] = auth["spec"]["secretTargetRef"][0].pop("name")
    with pytest.raises(SchemaError):
        validate(auth, version)


# ---------------------------------------------------------------------------- Dockerfile, script
def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("hadolint"), "--no-color", "--failure-threshold", "info", str(path))


def test_dockerfile_passes_hadolint():
    result = _hadolint(DEPLOY / "docker" / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_rejects_a_broken_dockerfile(tmp_path):
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    named_user = tmp_path / "Dockerfile.user"
    named_user.write_text(text.replace("USER 10001:10001", "USER soundwatch"))  # runAsNonRoot cannot check a name
    result = _hadolint(named_user)
    assert result.returncode == 1 and "DL3066" in result.stdout, result.stdout
    syntax = tmp_path / "Dockerfile.syntax"
    syntax.write_text(text.replace("WORKDIR /app", "WORKDIRR /app"))
    assert _hadolint(syntax).returncode == 1


def _shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    return _run(_tool("shellcheck"), "--shell=sh", str(path))


def test_bootstrap_script_passes_shellcheck():
    result = _shellcheck(DEPLOY / "docker" / "bootstrap-models.sh")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_rejects_a_broken_script(tmp_path):
    broken = tmp_path / "bootstrap-models.sh"
    text = (DEPLOY / "docker" / "bootstrap-models.sh").read_text()
    broken.write_text(text.replace('[ -d "$data" ]', "[ -d $data ]"))  # unquoted: breaks on spaces
    result = _shellcheck(broken)
    assert result.returncode == 1 and "SC2086" in result.stdout, result.stdout
