"""Secrets from the environment never appear in `config show`, reprs, logs, error messages or files."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import typing
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from pydantic import BaseModel, SecretStr

from deploy.private_services import PrivateInflux
from soundwatch.settings import Settings

SECRETS = {
    "SOUNDWATCH_KAFKA__SASL_PASSWORD": "kafka-pw-9f3a",
    "SOUNDWATCH_INFLUX__TOKEN": "influx-token-77c1",
    "SOUNDWATCH_INFLUX__PASSWORD": "influx-pw-51d2",
    "SOUNDWATCH_REDIS__PASSWORD": "redis-pw-0be4",
    "SOUNDWATCH_GRAFANA__TOKEN": "grafana-token-aa90",
}


def _run(args: list[str], tmp_path) -> str:
    env = {**os.environ, **SECRETS, "SOUNDWATCH_SERVICES__STATE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "deploy.main", "--debug", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    return out.stdout + out.stderr


@pytest.mark.parametrize("args", [["config", "show"], ["config", "show", "--json"], ["services", "status"]])
def test_cli_output_never_contains_secrets(args, tmp_path):
    text = _run(args, tmp_path)
    assert text.strip()
    for secret in SECRETS.values():
        assert secret not in text


def test_settings_repr_and_logging_mask_secrets(monkeypatch, caplog, tmp_path):
    from soundwatch.settings import load_settings

    monkeypatch.chdir(tmp_path)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("soundwatch.test").info("effective settings: %s / %r", settings, settings.masked())
    text = repr(settings) + str(settings) + caplog.text
    for secret in SECRETS.values():
        assert secret not in text
    # the secrets are still usable by the clients that need them
    assert settings.redis.client_kwargs()["password"] == SECRETS["SOUNDWATCH_REDIS__PASSWORD"]


# ---------------------------------------------------------------------------------------------------------------
# Every secret, through failing and --debug commands: never in any output or in anything written under var/.


def secret_fields(model: type[BaseModel] = Settings, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Paths of every SecretStr setting, found from the model's annotations (a secret added later is covered)."""
    out: list[tuple[str, ...]] = []
    for name, info in model.model_fields.items():
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        if SecretStr in kinds:
            out.append((*prefix, name))
        for kind in kinds:
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                out += secret_fields(kind, (*prefix, name))
    return out


def _env_name(path: tuple[str, ...]) -> str:
    return "SOUNDWATCH_" + "__".join(p.upper() for p in path)


def _recognisable(path: tuple[str, ...]) -> str:
    # 64 hex digits (valid for a hex key or a token), prefixed so a grep cannot hit anything else
    return "5ec7e7" + hashlib.sha256(".".join(path).encode()).hexdigest()[:58]


INFLUX_USER = "sw-writer"
INFLUX_PASSWORD = "Inf1ux:p@ss/w+rd=%7"  # ':' '@' '/' '+' '=' '%': its URL-encoded forms differ from it
REDIS_URL_PASSWORD = "R3dis/p@ss:w+rd=&x"


def _forms(secret: str, user: str | None = None) -> set[str]:
    """What a leak can look like: plain, URL-encoded, base64 — alone and as a Basic-auth token."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()}
    if user is not None:
        forms.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return forms


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when we return: nothing listens there


class Runs:
    """Runs `soundwatch` commands in ``cwd`` with ``env``; keeps every stdout/stderr for the grep."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.outputs: list[tuple[str, str]] = []

    def __call__(self, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        full = {**{k: v for k, v in os.environ.items() if not k.startswith("SOUNDWATCH_")}, **env}
        out = subprocess.run(
            [sys.executable, "-m", "deploy.main", *args],
            env=full,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.outputs.append((" ".join(args), out.stdout + out.stderr))
        return out


@pytest.mark.integration
def test_no_secret_in_any_output_or_under_var_even_with_debug_and_failures(stack, tmp_path, unique):
    paths = secret_fields()
    assert {
        ("kafka", "sasl_password"),
        ("redis", "password"),
        ("influx", "password"),
        ("influx", "token"),
        ("grafana", "token"),
        ("grafana", "webhook_url"),
    } <= set(paths)
    secrets = {path: _recognisable(path) for path in paths}
    secrets[("influx", "password")] = INFLUX_PASSWORD
    influxd_bin = Path("/usr/bin/influxd")
    if not influxd_bin.exists():
        pytest.skip("influxd not installed (apt-get install -y influxdb)")
    # a real InfluxDB that checks credentials; ours are wrong (its admin has another password)
    server = PrivateInflux(tmp_path / "influxd", auth=True)
    server.start()
    try:
        server.create_admin(INFLUX_USER, "the-right-password")
        work = tmp_path / "work"
        work.mkdir()
        base = {
            "SOUNDWATCH_SERVICES__STATE_DIR": str(work / "var" / "services"),
            "SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW": f"t{unique}.audio_raw",
            "SOUNDWATCH_INFLUX__USERNAME": INFLUX_USER,
            "SOUNDWATCH_INFLUX__DATABASE": f"test_{unique}",
            "SOUNDWATCH_REDIS__KEY_PREFIX": f"test:{unique}",
        }
        run = Runs(work)
        gateway = ["gateway", "--source", "sim", "--machines", "fan/id_00", "--duration", "2", "--health"]

        # A: every SecretStr set; InfluxDB answers 401 to the wrong password; Redis gets a password it does not use
        a = {**base, **{_env_name(p): v for p, v in secrets.items()}, "SOUNDWATCH_INFLUX__URL": server.url}
        for args in (["config", "show"], ["config", "show", "--json"], ["--debug", "config", "show"]):
            assert run(a, *args).returncode == 0, run.outputs[-1]
        render = run(a, "--debug", "dashboards", "render", "--from-influx", "--out", str(work / "png"))
        assert render.returncode != 0 and "401" in render.stderr  # the HTTP error path was taken
        health = run(a, *gateway)
        assert health.returncode == 0 and "HTTP 401" in health.stderr, health.stderr[-2000:]
        run(a, "--debug", *gateway)
        run(a, "--debug", "normal", "list")

        # B: the Redis password inside redis.url (redis.password unset); InfluxDB and Redis unreachable
        b = {k: v for k, v in a.items() if k != "SOUNDWATCH_REDIS__PASSWORD"}
        b["SOUNDWATCH_REDIS__URL"] = f"redis://:{quote(REDIS_URL_PASSWORD, safe='')}@127.0.0.1:{_closed_port()}/0"
        b["SOUNDWATCH_INFLUX__URL"] = f"http://127.0.0.1:{_closed_port()}"
        shown = run(b, "config", "show", "--json")
        assert shown.returncode == 0 and json.loads(shown.stdout)["redis"]["password"] == "**********"
        run(b, "--debug", "config", "show")
        unreachable = run(b, "--debug", "dashboards", "render", "--from-influx", "--out", str(work / "png"))
        assert unreachable.returncode != 0 and "cannot reach InfluxDB" in unreachable.stderr
        assert "cannot reach InfluxDB" in run(b, "--debug", *gateway).stderr
        redis_down = run(b, "--debug", "normal", "list")
        assert redis_down.returncode != 0 and "Redis" in redis_down.stderr

        # C: two different Redis passwords (URL and field): a settings error that names neither
        c = {**b, "SOUNDWATCH_REDIS__PASSWORD": secrets[("redis", "password")]}
        assert run(c, "config", "show").returncode == 3
        conflict = run(c, "--debug", "config", "show")  # the traceback must not show pydantic's input either
        assert conflict.returncode != 0 and "redis.password" in conflict.stderr and "Traceback" in conflict.stderr
    finally:
        server.kill()

    leaks = []
    watched = {p: _forms(v, INFLUX_USER if p == ("influx", "password") else None) for p, v in secrets.items()}
    watched[("redis", "url")] = _forms(REDIS_URL_PASSWORD)
    for name, text in run.outputs:
        leaks += [
            f"{'.'.join(p)} in the output of `{name}`" for p, forms in watched.items() if any(f in text for f in forms)
        ]
    files = [f for f in (work / "var").rglob("*") if f.is_file()]
    assert files, "the commands wrote nothing under var/: the check below would prove nothing"
    for f in files:
        data = f.read_bytes()
        leaks += [f"{'.'.join(p)} in {f}" for p, forms in watched.items() if any(x.encode() in data for x in forms)]
    assert leaks == []


def test_redaction_masks_url_credentials_parameters_headers_and_known_secrets():
    from soundwatch import redaction

    redaction.register_basic_auth("ops", "kn0wn:s3cret")
    basic = base64.b64encode(b"ops:kn0wn:s3cret").decode()
    text = (
        f"redis://:pw1@h:6379/0 http://u:pw2@h/x?db=a&u=ops&p=pw3&token=pw4 Authorization: Basic {basic} "
        f"headers={{'Authorization': 'Token pw5'}} kn0wn:s3cret kn0wn%3As3cret token-alone {basic}"
    )
    masked = redaction.redact(text)
    for secret in ("pw1", "pw2", "pw3", "pw4", "pw5", "ops&", "kn0wn", basic):
        assert secret not in masked, (secret, masked)
    assert "redis://***@h:6379/0" in masked and "db=a" in masked  # addresses and harmless parameters stay
    redaction.register_secret("wrong")  # too short to mask by value: it would eat ordinary words
    assert redaction.redact("something went wrong") == "something went wrong"
