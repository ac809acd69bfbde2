"""Private services for tests and benches that must kill or reconfigure one: a Tansu broker and an
influxd 1.x of their own on free ports (the shared ones on the default ports are never stopped),
and the small untrained model the delivery tests score with.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import requests
import torch

from deploy.local_stack import influx_config, require_binary, tansu_binary
from soundwatch.errors import ServiceUnavailable
from soundwatch.influx.client import InfluxClient, quote_ident, quote_literal
from soundwatch.model.networks import ArcMarginHead, Encoder, EncoderConfig
from soundwatch.model.registry import Artifact, ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.settings import InfluxSettings, Settings

NEVER_ALERTS = 1e9  # a threshold no neglogp score of the plumbing model reaches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


class PrivateBroker:
    """A Tansu broker of our own on a free port (memory storage: a restart loses every topic)."""

    def __init__(self, log_dir: Path) -> None:
        self.binary = tansu_binary()
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def settings(self, base: Settings) -> Settings:
        """``base`` pointed at this broker."""
        return base.model_copy(update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": self.bootstrap})})

    def start(self) -> PrivateBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"tansu-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--storage-engine",
                    "memory://tansu/",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_port(self.port, 20, "the private broker")
        return self

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


class PrivateInflux:
    """The local stack's influxd config on free ports; its data survives :meth:`kill` + :meth:`start`.

    ``auth=True`` turns on ``auth-enabled`` (create the first admin with :meth:`create_admin`);
    ``access_log=True`` turns on the HTTP access log in ``log_path``, which records each request
    line as the server received it.
    """

    def __init__(self, state_dir: Path, *, auth: bool = False, access_log: bool = False) -> None:
        self.binary = require_binary("influxd", "apt-get install -y influxdb")
        self.port, rpc = free_port(), free_port()
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        text = influx_config(state_dir, http_port=self.port, rpc_port=rpc)
        if auth:
            text = text.replace("auth-enabled = false", "auth-enabled = true")
        if access_log:
            text = text.replace("log-enabled = false", "log-enabled = true")
        self.config = state_dir / "influxdb.conf"
        self.config.write_text(text)
        self.log_path = state_dir / "influxd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> PrivateInflux:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):  # /ping: no query, no credentials
                if requests.get(f"{self.url}/ping", timeout=1).status_code == 204:
                    return self
            time.sleep(0.2)
        raise ServiceUnavailable(f"the private influxd did not answer within {timeout_s:.0f} s; see {self.log_path}")

    def create_admin(self, username: str, password: str) -> None:
        """The first user of an auth-enabled server (allowed without credentials while none exists)."""
        with InfluxClient(InfluxSettings(url=self.url)) as client:
            client.execute(
                f"CREATE USER {quote_ident(username)} WITH PASSWORD {quote_literal(password)} WITH ALL PRIVILEGES"
            )

    def kill(self) -> None:
        """SIGKILL: an outage, not a polite shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


def plumbing_windows(n: int, params: FeatureParams, seed: int = 0) -> np.ndarray:
    """Log-mel-like dB windows: a per-bin spectral tilt plus noise, float32 [n, n_mels, W]."""
    rng = np.random.default_rng(seed)
    tilt = np.linspace(-20, -70, params.n_mels, dtype=np.float32)[None, :, None]
    return (tilt + rng.normal(0, 3, size=(n, params.n_mels, params.window_frames))).astype(np.float32)


def plumbing_model(
    registry_root: Path,
    machine_type: str,
    machine_ids: list[str],
    params: FeatureParams | None = None,
    *,
    thresholds: dict[str, float] | None = None,
    seed: int = 0,
    median_k: int = 3,
) -> str:
    """Register a real but untrained ``clp`` artifact (seeded, small encoder + ArcFace head).

    Delivery tests and the fault bench measure plumbing, not detection quality: any model with the
    right feature parameters will do, and training one would cost minutes. It never alerts unless
    ``thresholds`` lowers some machines' thresholds.
    """
    params = params or FeatureParams()
    torch.manual_seed(seed)
    cfg = EncoderConfig(n_mels=params.n_mels, window_frames=params.window_frames, channels=(8, 16), embedding_dim=32)
    enc = Encoder(cfg)
    enc.norm.fit(torch.from_numpy(plumbing_windows(64, params, seed)))
    head = ArcMarginHead(cfg.embedding_dim, len(machine_ids), 30.0, 0.5)
    artifact = Artifact(
        machine_type=machine_type,
        method="clp",
        score_kind="neglogp",
        feature_params=params,
        median_k=median_k,
        model_config={"encoder": cfg.to_dict(), "head": {"n_classes": len(machine_ids), "scale": 30.0, "margin": 0.5}},
        state={"encoder": enc.state_dict(), "head": head.state_dict()},
        class_map=list(machine_ids),
        id_classes={m: [i] for i, m in enumerate(machine_ids)},
        thresholds={m: NEVER_ALERTS for m in machine_ids} | (thresholds or {}),
        default_threshold=NEVER_ALERTS,
        threshold_rule="plumbing model: fixed",
        data_summary={"source": "deploy.private_services (untrained, plumbing only)"},
    )
    return ModelRegistry(registry_root).save(artifact)
