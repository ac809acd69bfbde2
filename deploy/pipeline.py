"""Run the whole pipeline as separate processes: gateway, feature worker(s), scoring worker(s).

The same CLI commands a production deployment runs, supervised on one machine:
a crashed stage is restarted with back-off (and said so), Ctrl-C / SIGTERM stops
the stages in data-flow order — gateways first so they flush their spool, then
feature workers, then scoring workers — so nothing in flight is lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageProcess:
    """One supervised process running ``soundwatch <args>``."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_restart_at: float = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        cmd = [sys.executable, "-m", "deploy.main", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Pipeline:
    """Start, watch and stop a list of stages. ``say`` receives one-line status messages."""

    def __init__(
        self, stages: list[StageProcess], say: Callable[[str], None] = print, max_backoff_s: float = 30.0
    ) -> None:
        self.stages = stages
        self.say = say
        self.max_backoff_s = max_backoff_s

    def start(self) -> None:
        for stage in self.stages:
            stage.start()
            self.say(f"started {stage.name} (pid {stage.proc.pid}), log {stage.log_path}")

    def watch_once(self) -> None:
        """Restart stages that died, with exponential back-off."""
        now = time.monotonic()
        for stage in self.stages:
            if stage.running or stage.proc is None:
                continue
            if stage.next_restart_at == 0.0:
                delay = min(self.max_backoff_s, 2.0**stage.restarts)
                stage.next_restart_at = now + delay
                tail = _tail(stage.log_path)
                self.say(
                    f"{stage.name} exited with code {stage.proc.returncode}; restarting in {delay:.0f}s. "
                    f"Last log lines:\n{tail}"
                )
            elif now >= stage.next_restart_at:
                stage.restarts += 1
                stage.next_restart_at = 0.0
                stage.start()
                self.say(f"restarted {stage.name} (pid {stage.proc.pid}, restart #{stage.restarts})")

    def stop(self, timeout_s: float = 30.0) -> None:
        for stage in self.stages:  # data-flow order: producers first
            code = stage.stop(timeout_s)
            if code is not None:
                self.say(f"stopped {stage.name} (exit {code})")

    def run(
        self, duration_s: float | None = None, tick: Callable[[], None] | None = None, interval_s: float = 1.0
    ) -> None:
        """Start, supervise until ``duration_s`` elapses or SIGINT/SIGTERM, then stop everything."""
        stop_requested = False

        def _request_stop(signum, frame) -> None:  # noqa: ARG001
            nonlocal stop_requested
            stop_requested = True

        previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        deadline = None if duration_s is None else time.monotonic() + duration_s
        self.start()
        try:
            while not stop_requested and (deadline is None or time.monotonic() < deadline):
                self.watch_once()
                if tick is not None:
                    tick()
                time.sleep(interval_s)
        finally:
            self.say("stopping the pipeline ...")
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "    (no log)"
