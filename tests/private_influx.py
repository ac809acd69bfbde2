"""A private influxd 1.x for tests that must stop InfluxDB or turn on authentication.

The shared InfluxDB on 8086 is never stopped or reconfigured (other test processes use it): a test
that needs an outage or a server that checks credentials starts one of these on free ports.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

from deploy.local_stack import influx_config

INFLUXD = "/usr/bin/influxd"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateInfluxd:
    """The local stack's influxd config on other ports, restartable on its data.

    ``auth=True`` turns on ``auth-enabled`` (create the first admin with :meth:`create_admin`);
    ``access_log=True`` turns on the HTTP access log in ``log_path``, which records each request
    line as the server received it.
    """

    def __init__(self, root: Path, *, auth: bool = False, access_log: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port, rpc = free_port(), free_port()
        self.config = root / "influxdb.conf"
        text = influx_config(root, http_port=self.port, rpc_port=rpc)
        if auth:
            text = text.replace("auth-enabled = false", "auth-enabled = true")
        if access_log:
            text = text.replace("log-enabled = false", "log-enabled = true")
        self.config.write_text(text)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "influxd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [INFLUXD, "-config", str(self.config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:  # /ping is a liveness probe: no query, no credentials
                if requests.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"private influxd did not answer /ping within {timeout_s:.0f}s: {self.log_path}")

    def create_admin(self, username: str, password: str) -> None:
        """The first user of an auth-enabled server (allowed without credentials while none exists)."""
        from soundwatch.influx.client import InfluxClient, quote_ident, quote_literal
        from soundwatch.settings import InfluxSettings

        with InfluxClient(InfluxSettings(url=self.url)) as client:
            client.execute(
                f"CREATE USER {quote_ident(username)} WITH PASSWORD {quote_literal(password)} WITH ALL PRIVILEGES"
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # an outage, not a polite shutdown
            self.proc.wait(10)
        self.proc = None
