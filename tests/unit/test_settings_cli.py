"""Settings sources, secret masking and the root CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from deploy.main import app
from soundwatch.errors import ConfigError
from soundwatch.settings import load_settings

runner = CliRunner()


def test_defaults_point_at_loopback(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.redis.url.startswith("redis://127.0.0.1:")
    assert s.influx.url.startswith("http://127.0.0.1:")


def test_env_and_toml_sources(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "plant.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "kafka-1:9092,kafka-2:9092"\n[scoring]\nmedian_k = 7\n')
    monkeypatch.setenv("SOUNDWATCH_CONFIG", str(cfg))
    monkeypatch.setenv("SOUNDWATCH_SCORING__MEDIAN_K", "9")  # env beats the file
    s = load_settings()
    assert s.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert s.scoring.median_k == 9
    assert s.kafka.client_kwargs()["bootstrap_servers"] == ["kafka-1:9092", "kafka-2:9092"]


def test_invalid_value_names_field_and_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_SCORING__MAX_BATCH", "0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "scoring.max_batch" in info.value.message
    assert "SOUNDWATCH_SCORING__MAX_BATCH" in info.value.message


def test_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not name a file"):
        load_settings()


def test_config_show_masks_secrets(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    secrets = {
        "SOUNDWATCH_KAFKA__SASL_PASSWORD": "kafka-s3cret",
        "SOUNDWATCH_INFLUX__TOKEN": "influx-s3cret",
        "SOUNDWATCH_REDIS__PASSWORD": "redis-s3cret",
        "SOUNDWATCH_GRAFANA__TOKEN": "grafana-s3cret",
        "SOUNDWATCH_INFLUX__PASSWORD": "influxpw-s3cret",
        "SOUNDWATCH_REGISTRY_SIGNING_KEY": "registry-signing-s3cret",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    for args in (["config", "show"], ["config", "show", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        for v in secrets.values():
            assert v not in result.output
        assert "**********" in result.output
    data = json.loads(runner.invoke(app, ["config", "show", "--json"]).output)
    assert data["kafka"]["sasl_password"] == "**********"
    assert data["registry_signing_key"] == "**********"
    assert data["features"]["n_mels"] == 128


def test_console_script_help_and_bad_config_exit_code(tmp_path):
    exe = [sys.executable, "-m", "deploy.main"]
    out = subprocess.run([*exe, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "services" in out.stdout
    env = {"SOUNDWATCH_SCORING__MAX_BATCH": "-1", "PATH": "/usr/bin:/bin"}
    bad = subprocess.run([*exe, "config", "show"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert bad.returncode == 3, bad.stderr
    assert "SOUNDWATCH_SCORING__MAX_BATCH" in bad.stderr and "Traceback" not in bad.stderr


def test_to_env_round_trips_through_the_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    original = load_settings(
        kafka={"bootstrap_servers": "k1:9092,k2:9092", "sasl_password": "pw", "topics": {"audio_raw": "a.raw"}},
        grafana={"email_addresses": ["ops@plant.example", "night@plant.example"]},
        scoring={"median_k": 7},
        registry_root=tmp_path / "models",
    )
    env = original.to_env()
    assert env["SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW"] == "a.raw"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings() == original


def test_error_hints_keep_bracketed_text(tmp_path):
    """Rich markup must not eat `[mic]` in `pip install 'soundwatch[mic]'`."""
    import importlib.util

    if importlib.util.find_spec("sounddevice") is not None:
        pytest.skip("sounddevice is installed here: the missing-extra error cannot happen")
    cmd = [
        sys.executable,
        "-m",
        "deploy.main",
        "gateway",
        "--source",
        "mic",
        "--machine-type",
        "fan",
        "--machine-id",
        "id_00",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 5, out.stderr
    assert "soundwatch[mic]" in out.stderr


def test_credentials_in_urls_move_to_the_secret_fields(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_REDIS__URL", "redis://ops:p%40ss%3Aw0rd@redis.plant:6379/2")
    monkeypatch.setenv("SOUNDWATCH_INFLUX__URL", "https://writer:infl%2Fpw@influx.plant:8086")
    s = load_settings()
    assert s.redis.url == "redis://redis.plant:6379/2" and s.redis.username == "ops"
    assert s.redis.client_kwargs() == {"username": "ops", "password": "p@ss:w0rd"}
    assert s.influx.url == "https://influx.plant:8086" and s.influx.username == "writer"
    assert s.influx.password is not None and s.influx.password.get_secret_value() == "infl/pw"
    shown = runner.invoke(app, ["config", "show", "--json"]).output
    assert not any(secret in shown for secret in ("p@ss", "p%40ss", "infl/pw", "infl%2Fpw"))
    assert json.loads(shown)["redis"]["password"] == "**********"
    for key, value in s.to_env().items():  # child processes get the clean URL and the secret separately
        monkeypatch.setenv(key, value)
    assert load_settings() == s


def test_one_password_two_ways_must_agree(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_REDIS__URL", "redis://:first-pw@h:6379/0")
    monkeypatch.setenv("SOUNDWATCH_REDIS__PASSWORD", "first-pw")
    assert load_settings().redis.client_kwargs()["password"] == "first-pw"
    monkeypatch.setenv("SOUNDWATCH_REDIS__PASSWORD", "second-pw")
    with pytest.raises(ConfigError, match="keep only redis.password") as info:
        load_settings()
    assert "first-pw" not in str(info.value) and "second-pw" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # pydantic's text repeats inputs


def test_staleness_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.scoring.status_interval_s, s.scoring.stale_after_s) == (10.0, 60.0)
    monkeypatch.setenv("SOUNDWATCH_SCORING__STALE_AFTER_S", "0")
    with pytest.raises(ConfigError, match="scoring.stale_after_s"):
        load_settings()


def test_a_short_registry_signing_key_is_a_settings_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_REGISTRY_SIGNING_KEY", "short-key")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "SOUNDWATCH_REGISTRY_SIGNING_KEY" in info.value.message and "at least 16 characters" in info.value.message
    assert "short-key" not in str(info.value)


def test_config_show_prints_toml_that_loads_back_as_the_same_settings(monkeypatch, tmp_path):
    import tomllib

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_KAFKA__SASL_USERNAME", 'plant "one"\\x')  # quotes and a backslash
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__EMAIL_ADDRESSES", '["a@example.com", "b@example.com"]')
    monkeypatch.setenv("SOUNDWATCH_SCORING__STALE_AFTER_S", "2m")
    shown = runner.invoke(app, ["config", "show"])
    assert shown.exit_code == 0, shown.output
    assert "null" not in shown.output and "None" not in shown.output
    data = tomllib.loads(shown.output)  # valid TOML; unset settings are comments, not values
    assert "sasl_password" not in data["kafka"] and "# sasl_password =" in shown.output
    cfg = tmp_path / "shown.toml"
    cfg.write_text(shown.output)
    before = load_settings()
    for key in (
        "SOUNDWATCH_KAFKA__SASL_USERNAME",
        "SOUNDWATCH_GRAFANA__EMAIL_ADDRESSES",
        "SOUNDWATCH_SCORING__STALE_AFTER_S",
    ):
        monkeypatch.delenv(key)
    monkeypatch.setenv("SOUNDWATCH_CONFIG", str(cfg))
    assert load_settings() == before  # the printed file reproduces the effective settings


def test_log_level_from_the_toml_file_is_honoured(tmp_path):
    cfg = tmp_path / "quiet.toml"
    cfg.write_text('log_level = "WARNING"\n')
    code = (
        "import logging, sys\n"
        "from deploy.main import app\n"
        "app(['--config', sys.argv[1], 'config', 'show', '--json'], standalone_mode=False)\n"
        "logging.getLogger('soundwatch.probe').info('info-line')\n"
        "logging.getLogger('soundwatch.probe').warning('warning-line')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SOUNDWATCH_")}
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "warning-line" in out.stderr and "info-line" not in out.stderr
    cfg.write_text('log_level = "DEBUG"\n')
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "info-line" in out.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1d", 86400.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1h30m", 5400.0), ("2.5", 2.5), ("500ms", 0.5)],
)
def test_durations_accept_units(monkeypatch, tmp_path, text, seconds):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_ARCHIVE__MAX_AGE_S", text)
    assert load_settings().archive.max_age_s == seconds
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'[archive]\nmax_age_s = "{text}"\n[scoring]\nstale_after_s = {seconds}\nmax_wait_ms = "2s"\n')
    monkeypatch.delenv("SOUNDWATCH_ARCHIVE__MAX_AGE_S")
    monkeypatch.setenv("SOUNDWATCH_CONFIG", str(cfg))
    s = load_settings()
    assert (s.archive.max_age_s, s.scoring.stale_after_s, s.scoring.max_wait_ms) == (seconds, seconds, 2000)


@pytest.mark.parametrize("text", ["1x", "d", "1d2", "-5m", "1 day"])
def test_a_bad_duration_names_the_units(monkeypatch, tmp_path, text):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_SCORING__STALE_AFTER_S", text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "scoring.stale_after_s" in info.value.message
    assert "90s, 15m, 1d" in info.value.message
