"""/healthz and /readyz of a real feature worker (Faust's web server, the k8s probes' contract)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import requests
from features_helpers import REPO_ROOT, FeaturesWorker, chunks_of, pcm16, read_all, real_clips
from test_features_stream import encoded, send

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The real worker (create_app + faust.Worker, as run_worker does), with its record handler held at a gate
# (a file) so that audio waits while processing is blocked -- the stall the liveness probe must report.
GATED_WORKER = """
import asyncio, pathlib, sys
import faust
from features.app import create_app
from soundwatch.settings import load_settings

app = create_app(load_settings())
gate, handle = pathlib.Path(sys.argv[1]), app.windowing.handle

async def gated(message):
    while not gate.exists():
        await asyncio.sleep(0.1)
    await handle(message)

app.windowing.handle = gated
worker = faust.Worker(app, loglevel="info", quiet=True, redirect_stdouts=False, override_logging=False)
worker.execute_from_commandline()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, dict] | None:
    try:
        response = requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except requests.ConnectionError:
        return None  # not listening yet
    return response.status_code, response.json()


def _wait(port: int, path: str, status: int, timeout_s: float, worker: FeaturesWorker) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = _get(port, path)
        if last is not None and last[0] == status:
            return last[1]
        assert worker.alive, worker.log_tail()
        time.sleep(0.3)
    raise AssertionError(f"{path} did not answer {status} within {timeout_s} s (last: {last}); {worker.log_tail()}")


def test_healthz_turns_503_while_audio_waits_and_the_handler_is_blocked(isolated_settings, tmp_path):
    s = isolated_settings
    port, gate = _free_port(), tmp_path / "open"
    worker = FeaturesWorker(s, tmp_path / "worker.log")
    worker.env.update(
        {
            "SOUNDWATCH_STREAM__WORKERS_WEB_HOST": "127.0.0.1",
            "SOUNDWATCH_STREAM__WORKERS_WEB_PORT": str(port),
            "SOUNDWATCH_STREAM__STALL_AFTER_S": "2s",
        }
    )
    log = open(worker.log_path, "ab")  # noqa: SIM115 - owned by the child
    worker.proc = subprocess.Popen(
        [sys.executable, "-c", GATED_WORKER, str(gate)],
        env=worker.env,
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        body = _wait(port, "/readyz", 200, 120, worker)  # joined the group, partitions assigned
        assert body["status"] == "ok" and body["waiting"] is False
        assert _get(port, "/healthz")[0] == 200

        pcm = pcm16(real_clips()[20])
        send(s, encoded(chunks_of(pcm, list(range(16_000, pcm.size, 16_000)), machine_id="id_h")))
        body = _wait(port, "/healthz", 503, 60, worker)
        assert body["status"] == "stalled" and body["waiting"] is True
        assert _get(port, "/readyz")[0] == 503

        gate.touch()  # the handler runs again: windows flow, the worker is healthy
        read_all(s, s.kafka.topics.features, lambda r: len(r) > 0, 60)
        _wait(port, "/healthz", 200, 30, worker)
        _wait(port, "/readyz", 200, 30, worker)
    finally:
        assert worker.stop() == 0, worker.log_tail()
