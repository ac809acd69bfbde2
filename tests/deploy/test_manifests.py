"""Deploy files: they parse, every SOUNDWATCH_* variable is a real setting with a valid value,
and every container command is a real CLI command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from typer.testing import CliRunner

from soundwatch.cli import app
from soundwatch.settings import CONFIG_ENV, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})
TEXT_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"})
ENV_NAME = re.compile(r"\bSOUNDWATCH_[A-Z0-9_]+\b")


def _load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _setting_exists(env_name: str) -> bool:
    if env_name == CONFIG_ENV:
        return True
    parts = env_name.removeprefix("SOUNDWATCH_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _compose_services() -> dict:
    return _load_all(DEPLOY / "compose" / "docker-compose.yml")[0]["services"]


def _k8s_containers() -> list[dict]:
    out = []
    for path in (DEPLOY / "k8s").rglob("*.yaml"):
        for doc in _load_all(path):
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
                "template", {}).get("spec")  # fmt: skip
            if pod and "containers" in pod:
                out.extend(c for c in pod["containers"] if "args" in c)
    return out


def test_there_are_deploy_files():
    assert (DEPLOY / "compose" / "docker-compose.yml").is_file()
    assert (DEPLOY / "k8s" / "base" / "kustomization.yaml").is_file()
    assert len(YAML_FILES) >= 8


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path):
    docs = _load_all(path)
    assert docs, f"{path} is empty"
    if "k8s" in path.parts and path.name != "kustomization.yaml":
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a Kubernetes object"


def test_kustomizations_reference_existing_files():
    for kfile in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        k = _load_all(kfile)[0]
        for ref in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
            assert (kfile.parent / ref).exists(), f"{kfile}: {ref} does not exist"


def test_every_soundwatch_variable_is_a_real_setting():
    names = {name for path in TEXT_FILES for name in ENV_NAME.findall(path.read_text(errors="ignore"))}
    assert len(names) > 10
    unknown = sorted(n for n in names if not _setting_exists(n))
    assert not unknown, f"not settings: {unknown}"


def test_configured_values_are_valid(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    env_sets = [_compose_services()["scoring"]["environment"]]
    for path in (DEPLOY / "k8s").rglob("*.yaml"):
        env_sets += [doc["data"] for doc in _load_all(path) if doc.get("kind") == "ConfigMap"]
    for env in env_sets:
        for key in list(__import__("os").environ):
            if key.startswith("SOUNDWATCH_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("SOUNDWATCH_") and "${" not in str(value):
                monkeypatch.setenv(key, str(value))
        load_settings()  # raises ConfigError naming the bad variable


def _commands() -> list[list[str]]:
    cmds = [svc["command"] for svc in _compose_services().values()
            if "command" in svc and svc.get("image", "").startswith("soundwatch")]  # fmt: skip
    cmds += [c["args"] for c in _k8s_containers()]
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                cmds.append(line.split()[1:])
    return cmds


def test_container_commands_are_real_cli_commands():
    cmds = _commands()
    assert len(cmds) >= 5
    runner = CliRunner()
    for args in cmds:
        # strip option values so --help reaches the innermost command
        words = [a for a in args if not a.startswith("-")]
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, f"`soundwatch {' '.join(args)}` is not a working command: {result.output}"
        assert words[0] in result.output or "Usage" in result.output


def test_dockerfile_entrypoint_is_the_console_script():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["soundwatch"]' in text
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert 'soundwatch = "soundwatch.cli:main"' in pyproject
