"""`soundwatch services up|status|down` on private ports and a private state dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_up_is_idempotent_status_and_down(tmp_path, stack):
    env = {
        **os.environ,
        "SOUNDWATCH_SERVICES__STATE_DIR": str(tmp_path / "state"),
        "SOUNDWATCH_SERVICES__KAFKA_PORT": str(_free_port()),
        "SOUNDWATCH_SERVICES__REDIS_PORT": str(_free_port()),
        "SOUNDWATCH_SERVICES__INFLUX_PORT": str(_free_port()),
    }
    env["SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{env['SOUNDWATCH_SERVICES__KAFKA_PORT']}"

    def sw(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "deploy.main", "services", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )

    down = sw("status")
    assert down.returncode == 4
    assert "soundwatch services up" in down.stderr
    try:
        first = sw("up")
        assert first.returncode == 0, first.stderr
        assert first.stderr.count("started") == 3
        second = sw("up")
        assert second.returncode == 0, second.stderr
        assert second.stderr.count("already running") == 3
        status = sw("status", "--json")
        assert status.returncode == 0, status.stderr
        assert all(s["answering"] and s["pid"] for s in json.loads(status.stdout))
        for name in ("kafka", "redis", "influxdb"):
            assert (tmp_path / "state" / name / "service.pid").is_file()
            assert (tmp_path / "state" / name / "service.log").is_file()
    finally:
        stopped = sw("down")
    assert stopped.returncode == 0, stopped.stderr
    after = sw("status", "--json")
    assert after.returncode == 4
    assert not any(s["answering"] for s in json.loads(after.stdout))


def test_missing_system_package_names_install_command():
    from deploy.local_stack import require_binary
    from soundwatch.errors import MissingDependency

    with pytest.raises(MissingDependency) as info:
        require_binary("influxd-not-installed-here", "apt-get install -y influxdb")
    assert "apt-get install -y influxdb" in str(info.value)
