"""``soundwatch bench ingest``: how many 16 kHz machines can one gateway process carry?

Runs the real gateway path (chunk building with durable sequence numbers, PCM16 encoding,
spool write-ahead log, ordered shipper with acks=all) from an as-fast-as-possible source to a
private topic on the configured broker, and measures delivered (acknowledged) chunks per second.
The source cycles over pre-rendered simulator audio, so synthesis cost is not measured but the
audio compresses like machine sound. As a reference measured in the same run, a bare
kafka-python producer sends the same records without spool or sequence bookkeeping.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ingest.gateway import run_gateway
from ingest.producer import Block, producer_options
from ingest.sources import AudioClock
from soundwatch.errors import SoundwatchError
from soundwatch.kafka import ensure_topics, make_admin, make_producer
from soundwatch.settings import Settings
from soundwatch.simulator import MachineSound, signature_for


class _PoolSource:
    """``machines`` machines cycling over pre-rendered simulator seconds, as fast as possible."""

    def __init__(self, machines: int, sample_rate: int, chunk_samples: int, pool: int = 16) -> None:
        self.sample_rate = sample_rate
        self.machines = machines
        types = ("fan", "pump", "slider", "valve")
        self._pool = [
            MachineSound(signature_for(types[i % 4], f"id_{i:02d}"), sample_rate).render(chunk_samples)
            for i in range(pool)
        ]

    def describe(self) -> str:
        return f"{self.machines} benchmark machines (pre-rendered simulator audio), as fast as possible"

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        clock = AudioClock(self.sample_rate)
        while not stop.is_set():
            start = clock.take(self._pool[0].size)
            for m in range(self.machines):
                yield Block("bench", f"m{m:05d}", self._pool[m % len(self._pool)], start)


def _reference(settings: Settings, topic: str, records: list[tuple[bytes, bytes]], seconds: float) -> float:
    """Chunks/s of a bare kafka-python producer with the gateway's producer options (no spool)."""
    producer = make_producer(settings, **producer_options(settings))
    try:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            for key, value in records:
                producer.send(topic, key=key, value=value)
            n += len(records)
        producer.flush(timeout=60)
        return n / (time.monotonic() - t0)
    finally:
        producer.close(timeout=5)


def run_bench(
    settings: Settings, seconds: float = 10.0, machines: int = 1000, reference: bool = True
) -> dict[str, Any]:
    """Measure one gateway process against the configured broker on a private, deleted-afterwards topic."""
    from kafka.errors import KafkaError  # deferred: loads kafka

    topic = f"bench.ingest.{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic], settings.kafka.topics.partitions)
    sr = settings.features.sample_rate
    chunk = int(round(settings.ingest.chunk_seconds * sr))
    try:
        with tempfile.TemporaryDirectory(prefix="soundwatch-bench-") as tmp:
            bench_settings = settings.model_copy(
                update={
                    "ingest": settings.ingest.model_copy(
                        update={"state_dir": Path(tmp) / "state", "spool_dir": Path(tmp) / "spool"}
                    )
                }
            )
            source = _PoolSource(machines, sr, chunk)
            t0 = time.monotonic()
            report = run_gateway(
                bench_settings,
                source,
                topic=topic,
                gateway_id="bench",
                duration_s=seconds,
                backpressure=True,
                flush_timeout_s=60.0,
            )
            wall = time.monotonic() - t0  # includes the final flush: only acknowledged chunks count
        chunks_per_s = report.chunks_sent / wall
        result: dict[str, Any] = {
            "chunks_per_s": round(chunks_per_s, 1),
            "mb_per_s": round(report.bytes_sent / wall / 1e6, 2),
            "machines_realtime": round(chunks_per_s * settings.ingest.chunk_seconds, 1),
            "target_machines_realtime": 500,
            "chunk_seconds": settings.ingest.chunk_seconds,
            "sample_rate": sr,
            "chunk_bytes": report.bytes_in // max(report.chunks_in, 1),
            "compression": settings.ingest.compression,
            "seconds": round(wall, 2),
            "chunks_sent": report.chunks_sent,
            "undelivered_chunks": report.undelivered_chunks,
            "dropped_chunks": report.dropped_chunks,
            "broker": settings.kafka.bootstrap_servers,
        }
        if reference:
            from ingest.producer import quantize_pcm16
            from soundwatch.contracts import AudioChunk, machine_key

            records = []
            for m, samples in enumerate(source._pool):
                c = AudioChunk("bench", f"r{m:03d}", "bench", sr, 0, 0, quantize_pcm16(samples))
                records.append((machine_key("bench", f"r{m:03d}"), c.encode()))
            ref = _reference(settings, topic, records, min(seconds, 5.0))
            result["reference_bare_producer_chunks_per_s"] = round(ref, 1)
            result["gateway_vs_bare_producer"] = round(chunks_per_s / ref, 3) if ref else None
        return result
    finally:
        try:
            admin = make_admin(settings)
            try:
                admin.delete_topics([topic])
            finally:
                admin.close()
        except (KafkaError, SoundwatchError):
            pass  # a leftover private benchmark topic is harmless
