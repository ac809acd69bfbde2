"""Shared helpers for the features tests: real clips as PCM16, chunking into AudioChunk messages."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

from soundwatch.contracts import AudioChunk

REAL_MINI = (Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-mini").resolve()


def real_clips() -> list[Path]:
    clips = sorted(REAL_MINI.rglob("*.wav"))
    assert len(clips) >= 80, f"real-mini clips not found at {REAL_MINI}: the repo must sit beside ../shared"
    return clips


@cache
def pcm16(path: Path) -> np.ndarray:
    data, rate = sf.read(str(path), dtype="int16")
    assert rate == 16_000 and data.ndim == 1
    data.setflags(write=False)
    return data


def chunks_of(
    pcm: np.ndarray,
    cuts: list[int],
    *,
    machine_id: str = "id_00",
    first_sequence: int = 0,
    start_ns: int = 1_700_000_000_000_000_000,
) -> list[AudioChunk]:
    """Split ``pcm`` at ``cuts`` (sample indices) into consecutive chunks with sequence numbers."""
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < pcm.size)), pcm.size]
    out = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        out.append(
            AudioChunk(
                "fan",
                machine_id,
                "gw-test",
                16_000,
                first_sequence + i,
                start_ns + a * 62_500,
                pcm[a:b],
                origin_ns=1000 + i,
            )
        )
    return out


# --------------------------------------------------------------------------- a worker subprocess
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from soundwatch.settings import Settings  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


class FeaturesWorker:
    """``python -m features.cli run`` for ``settings`` as a subprocess (its own session: kill -9 hits only it)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        t = settings.kafka.topics
        self.env = dict(os.environ)
        self.env.update(
            {
                "SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
                "SOUNDWATCH_KAFKA__TOPICS__AUDIO_RAW": t.audio_raw,
                "SOUNDWATCH_KAFKA__TOPICS__FEATURES": t.features,
                "SOUNDWATCH_KAFKA__TOPICS__DEADLETTER": t.deadletter,
                "SOUNDWATCH_KAFKA__TOPICS__PARTITIONS": str(t.partitions),
                "SOUNDWATCH_STREAM__APP_ID": settings.stream.app_id,
                "SOUNDWATCH_STREAM__DATA_DIR": str(settings.stream.data_dir),
            }
        )
        self.env.pop("SOUNDWATCH_CONFIG", None)
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> FeaturesWorker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        command = [sys.executable, "-m", "features.cli", "run", "--web-port", "0"]
        self.proc = subprocess.Popen(
            command, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker ignored SIGTERM for {timeout_s} s; log: {self.log_tail()}") from None

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""


def read_all(settings: Settings, topic: str, until, timeout_s: float) -> list:
    """Records of ``topic`` from the start, until ``until(records)`` is true or the time is up."""
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None)
    try:
        parts = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        consumer.seek_to_beginning()
        out: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not until(out):
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(records)
        return out
    finally:
        consumer.close()
