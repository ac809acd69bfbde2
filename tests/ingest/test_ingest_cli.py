"""The gateway and bench commands: exit codes, JSON output, graceful shutdown on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ingest_helpers import by_machine, read_chunks, wait_for_records
from typer.testing import CliRunner

from ingest.cli import app
from soundwatch.errors import BadInput, MissingDependency
from soundwatch.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli_env(isolated_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment that points the CLI at the test's private topic and directories."""
    env = {
        "SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW": isolated_settings.kafka.topics.audio_raw,
        "SOUNDWATCH_INGEST__STATE_DIR": str(isolated_settings.ingest.state_dir),
        "SOUNDWATCH_INGEST__SPOOL_DIR": str(isolated_settings.ingest.spool_dir),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


@pytest.mark.integration
def test_gateway_replays_files_and_prints_a_json_report(
    cli_env: dict[str, str], isolated_settings: Settings, real_mini: Path
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "gateway",
            "--source",
            "files",
            "--path",
            str(real_mini / "ToyConveyor"),
            "--speed",
            "0",
            "--gateway-id",
            "gw-cli",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["chunks_in"] == report["chunks_sent"] == 60  # 6 clips x 10 s, 1 s chunks
    assert report["undelivered_chunks"] == 0 and report["dropped_chunks"] == 0
    chunks = read_chunks(isolated_settings, cli_env["SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW"], 60)
    assert [c.sequence for c in by_machine(chunks)["ToyConveyor/id_01"]] == list(range(60))


def test_mic_without_sounddevice_names_the_install_command() -> None:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        pass
    else:
        pytest.skip("sounddevice and PortAudio are installed here")
    result = CliRunner().invoke(app, ["gateway", "--source", "mic", "--machine-type", "fan", "--machine-id", "id_00"])
    assert isinstance(result.exception, MissingDependency)
    assert "pip install 'soundwatch[mic]'" in str(result.exception)
    assert "libportaudio2" in str(result.exception)


def test_bad_options_are_user_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["gateway", "--source", "files"])
    assert isinstance(result.exception, BadInput) and "--path" in str(result.exception)
    result = runner.invoke(app, ["gateway", "--source", "files", "--path", str(tmp_path)])
    assert isinstance(result.exception, BadInput) and "no .wav/.flac files" in str(result.exception)
    result = runner.invoke(
        app, ["gateway", "--source", "sim", "--machines", "fan/id_00", "--fault", "fan/id_00:meltdown@1s"]
    )
    assert isinstance(result.exception, BadInput) and "bearing_ticks" in str(result.exception)


@pytest.mark.integration
def test_sigterm_stops_the_gateway_gracefully_and_delivers_everything(
    cli_env: dict[str, str], isolated_settings: Settings
) -> None:
    topic = cli_env["SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "gateway",
            "--source",
            "sim",
            "--machines",
            "fan/id_00,pump/id_00",
            "--speed",
            "4",
            "--gateway-id",
            "gw-sig",
            "--json",
        ],
        cwd=REPO,
        env={**os.environ, **cli_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_records(isolated_settings, topic, 6, timeout_s=60)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["chunks_sent"] == report["chunks_in"] > 0 and report["undelivered_chunks"] == 0
    assert "sent" in err and "ch/s" in err  # the status line and summary went to stderr
    chunks = read_chunks(isolated_settings, topic, report["chunks_in"])
    assert len(chunks) == report["chunks_in"]
    state = json.loads((isolated_settings.ingest.state_dir / "gw-sig" / "sequences.json").read_text())
    per_machine = by_machine(chunks)
    assert state["next"] == {k: len(v) for k, v in per_machine.items()}  # exact: a restart continues seamlessly


@pytest.mark.integration
def test_bench_prints_one_json_object(stack: Settings) -> None:
    get_settings.cache_clear()
    result = CliRunner().invoke(
        app,
        ["bench", "--json", "--seconds", "1", "--machines", "20", "--compression", "none", "--no-reference"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["chunks_per_s"] > 0 and data["mb_per_s"] > 0
    assert data["machines_realtime"] == pytest.approx(data["chunks_per_s"] * data["chunk_seconds"], rel=1e-3)
    assert data["undelivered_chunks"] == 0
