"""Deploy files: they parse, every SOUNDWATCH_* variable is a real setting and the value each file
gives it is the value soundwatch loads, and every container command is a real CLI command whose
options parse."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import compose_file
import pytest
import typer
import yaml
from deploy_files import COMPOSE, DEPLOY, OVERLAYS, containers, pod_specs, rendered, soundwatch_services
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from deploy.main import app
from soundwatch.settings import CONFIG_ENV, Settings, load_settings

YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})
TEXT_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in {".py", ".pyc"})
ENV_NAME = re.compile(r"\bSOUNDWATCH_[A-Z0-9_]+\b")
BOOTSTRAP = "soundwatch-bootstrap-models"  # deploy/docker/bootstrap-models.sh, installed by the Dockerfile


def _load_all(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _field(env_name: str) -> FieldInfo | None:
    """The settings field an environment variable sets (None when there is none)."""
    parts = env_name.removeprefix("SOUNDWATCH_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if i == len(parts) - 1:
            return field
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def _setting_exists(env_name: str) -> bool:
    return env_name == CONFIG_ENV or _field(env_name) is not None


def _loaded_value(settings: Settings, env_name: str) -> Any:
    node: Any = settings
    for part in env_name.removeprefix("SOUNDWATCH_").lower().split("__"):
        node = getattr(node, part)
    return node.get_secret_value() if hasattr(node, "get_secret_value") else node


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(token.split("=", 1) for token in line.split()[1:] if "=" in token)
    return env


def test_there_are_deploy_files():
    assert COMPOSE.is_file()
    assert (DEPLOY / "k8s" / "base" / "kustomization.yaml").is_file()
    assert [o.name for o in OVERLAYS] == ["cpu", "gpu"]
    assert len(YAML_FILES) >= 8


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path):
    docs = _load_all(path)
    assert docs, f"{path} is empty"
    if "k8s" in path.parts and path.name != "kustomization.yaml":
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path}: not a Kubernetes object"


def test_every_soundwatch_variable_is_a_real_setting():
    names = {name for path in TEXT_FILES for name in ENV_NAME.findall(path.read_text(errors="ignore"))}
    assert len(names) > 10
    unknown = sorted(n for n in names if not _setting_exists(n))
    assert not unknown, f"not settings: {unknown}"
    assert not _setting_exists("SOUNDWATCH_SCORING__NO_SUCH_FIELD")  # the check can fail


def _env_sets() -> dict[str, dict[str, str]]:
    """Every place that sets SOUNDWATCH_* values: compose services, k8s ConfigMaps and container env
    (rendered overlays), the Dockerfile's ENV."""
    sets = {f"compose {name}": compose_file.environment(svc) for name, svc in soundwatch_services().items()}
    for overlay, objects in rendered().items():
        for obj in objects:
            if obj["kind"] == "ConfigMap":
                sets[f"{overlay} ConfigMap {obj['metadata']['name']}"] = obj["data"]
        for obj, pod in pod_specs(objects):
            for c in containers(pod):
                env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
                if env:
                    sets[f"{overlay} {obj['metadata']['name']}/{c['name']}"] = env
    sets["Dockerfile ENV"] = _dockerfile_env()
    return sets


def test_configured_values_are_the_values_soundwatch_loads(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    checked = 0
    for where, env in _env_sets().items():
        for key in [k for k in os.environ if k.startswith("SOUNDWATCH_")]:
            monkeypatch.delenv(key)
        given = {k: str(v) for k, v in env.items() if k.startswith("SOUNDWATCH_")}
        for key, value in given.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()  # raises ConfigError naming a bad variable
        for key, value in given.items():
            field = _field(key)
            assert field is not None, f"{where}: {key} is not a setting"
            # the field's own validators too (durations such as "2d" are parsed by them)
            kind = Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            wanted = TypeAdapter(kind).validate_python(value)
            wanted = wanted.get_secret_value() if hasattr(wanted, "get_secret_value") else wanted
            assert _loaded_value(settings, key) == wanted, f"{where}: {key}={value!r} is not what soundwatch loads"
            checked += 1
    assert checked > 30


def _parse_cli(args: list[str]) -> None:
    """Resolve ``soundwatch ARGS`` to its innermost command and parse every option and value the way
    the CLI would (raises typer's usage error otherwise); nothing runs."""
    cmd = typer.main.get_command(app)
    ctx = cmd.context_class(cmd, info_name="soundwatch")
    words = list(args)
    while hasattr(cmd, "resolve_command"):  # a group: the next word must name one of its commands
        if not words:
            raise AssertionError(f"`soundwatch {' '.join(args)}` stops at a command group")
        name, sub, words = cmd.resolve_command(ctx, words)
        assert sub is not None, f"`soundwatch {' '.join(args)}`: no command {name!r}"
        parent, cmd = ctx, sub
        ctx = cmd.context_class(cmd, info_name=name, parent=parent)
    cmd.make_context(ctx.info_name, words, parent=ctx.parent)


def _volume_targets(svc_or_container: dict) -> set[str]:
    mounts = svc_or_container.get("volumes") or svc_or_container.get("volumeMounts") or []
    return {m["mountPath"] if isinstance(m, dict) else m.split(":")[1] for m in mounts}


def _invocations() -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str], set[str]]]]:
    """(soundwatch CLI invocations, bootstrap-script invocations with the paths mounted there)."""
    cli: list[tuple[str, list[str]]] = []
    bootstrap: list[tuple[str, list[str], set[str]]] = []
    for name, svc in soundwatch_services().items():
        entrypoint = svc.get("entrypoint")
        if entrypoint == [BOOTSTRAP]:
            bootstrap.append((f"compose {name}", svc["command"], _volume_targets(svc)))
        elif entrypoint is None and "command" in svc:
            cli.append((f"compose {name}", svc["command"]))
        else:
            raise AssertionError(f"compose {name}: unexpected entrypoint {entrypoint}")
    for overlay, objects in rendered().items():
        for obj, pod in pod_specs(objects):
            for c in containers(pod):
                where = f"{overlay} {obj['metadata']['name']}/{c['name']}"
                if c.get("command") == [BOOTSTRAP]:
                    bootstrap.append((where, c["args"], _volume_targets(c)))
                elif "command" not in c:
                    cli.append((where, c["args"]))
                else:
                    raise AssertionError(f"{where}: unexpected command {c['command']}")
    for unit in (DEPLOY / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                words = line.removeprefix("ExecStart=").split()
                assert words[0] == "soundwatch", f"{unit.name}: ExecStart runs {words[0]}"
                cli.append((unit.name, words[1:]))
    return cli, bootstrap


def test_container_commands_are_real_cli_commands():
    cli, _ = _invocations()
    assert len(cli) >= 12
    for where, args in cli:
        try:
            _parse_cli(args)
        except typer.TyperException as exc:
            raise AssertionError(f"{where}: `soundwatch {' '.join(args)}` does not parse: {exc}") from exc


@pytest.mark.parametrize(
    "args",
    [
        ["nosuch"],
        ["features"],
        ["archive", "run", "--segment-seconds", "abc"],
        ["train", "--data", "/d", "--no-such-option"],
    ],
)
def test_the_cli_check_rejects_what_the_cli_rejects(args):
    with pytest.raises((typer.TyperException, AssertionError)):
        _parse_cli(args)


def test_bootstrap_invocations_are_valid(tmp_path):
    """`soundwatch-bootstrap-models train|wait DATA ...`: DATA is mounted there, train's extra options
    are `soundwatch train` options, wait's timeout is a number."""
    _, bootstrap = _invocations()
    modes = sorted({args[0] for _, args, _ in bootstrap})
    assert modes == ["train", "wait"], modes
    for where, args, mounted in bootstrap:
        mode, data, *rest = args
        assert data in mounted, f"{where}: {data} is not mounted"
        if mode == "train":
            _parse_cli(["train", "--data", str(tmp_path), "--machine-type", "fan", *rest])  # DATA must exist
        else:
            assert len(rest) <= 1 and all(r.isdigit() for r in rest), f"{where}: wait timeout {rest}"


def test_dockerfile_entrypoint_is_the_console_script():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["soundwatch"]' in text
    assert f"deploy/docker/bootstrap-models.sh /usr/local/bin/{BOOTSTRAP}" in text
    pyproject = (DEPLOY.parent / "pyproject.toml").read_text()
    assert 'soundwatch = "deploy.main:main"' in pyproject


def test_keda_scales_on_the_topic_and_group_the_scoring_workers_consume(monkeypatch, tmp_path):
    """The ScaledObject names the features topic and scoring group literally: they must be what the
    workers load from the ConfigMap (kafka.topic_prefix included)."""
    monkeypatch.chdir(tmp_path)
    checked = 0
    for overlay, objects in rendered().items():
        for key in [k for k in os.environ if k.startswith("SOUNDWATCH_")]:
            monkeypatch.delenv(key)
        for obj in objects:
            if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("soundwatch-config"):
                for key, value in obj["data"].items():
                    monkeypatch.setenv(key, str(value))
        settings = load_settings()
        for obj in objects:
            for trigger in obj["spec"]["triggers"] if obj["kind"] == "ScaledObject" else []:
                assert trigger["metadata"]["topic"] == settings.kafka.topics.features, overlay
                assert trigger["metadata"]["consumerGroup"] == settings.scoring.group_id, overlay
                checked += 1
    assert checked >= 1
