"""Secrets from the environment never appear in `config show`, reprs or logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

SECRETS = {
    "SOUNDWATCH_KAFKA__SASL_PASSWORD": "kafka-pw-9f3a",
    "SOUNDWATCH_INFLUX__TOKEN": "influx-token-77c1",
    "SOUNDWATCH_INFLUX__PASSWORD": "influx-pw-51d2",
    "SOUNDWATCH_REDIS__PASSWORD": "redis-pw-0be4",
    "SOUNDWATCH_GRAFANA__TOKEN": "grafana-token-aa90",
}


def _run(args: list[str], tmp_path) -> str:
    env = {**os.environ, **SECRETS, "SOUNDWATCH_SERVICES__STATE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "soundwatch.cli", "--debug", *args], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)  # fmt: skip
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
