"""Helpers for the ingest tests: read a topic back, run a private broker, cut a source short."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator

from ingest.producer import Block
from soundwatch.contracts import AudioChunk
from soundwatch.settings import Settings


def read_chunks(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0) -> list[AudioChunk]:
    """Every chunk on ``topic`` (all partitions, from the start) in partition order; stops at ``expected``."""
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None, consumer_timeout_ms=1000)
    try:
        deadline = time.monotonic() + timeout_s
        parts = None
        while parts is None and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                time.sleep(0.2)
        assert parts, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        consumer.seek_to_beginning()
        out: list[AudioChunk] = []
        while len(out) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    chunk = AudioChunk.decode(rec.value)
                    assert rec.key == f"{chunk.machine_type}/{chunk.machine_id}".encode()
                    out.append(chunk)
        # anything beyond ``expected`` would be a duplicate: give it a moment to show up
        for records in consumer.poll(timeout_ms=500).values():
            out.extend(AudioChunk.decode(rec.value) for rec in records)
        return out
    finally:
        consumer.close()


def wait_for_records(settings: Settings, topic: str, at_least: int, timeout_s: float = 30.0) -> int:
    """Wait until ``topic`` holds ``at_least`` records in all; return how many it holds."""
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        total = 0
        while time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or set()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts]) if parts else {}
            total = sum(ends.values())
            if total >= at_least:
                return total
            time.sleep(0.1)
        raise AssertionError(f"{topic} holds {total} records after {timeout_s} s, expected {at_least}")
    finally:
        consumer.close()


def by_machine(chunks: list[AudioChunk]) -> dict[str, list[AudioChunk]]:
    """Chunks per machine in arrival order (a machine has one partition: arrival order is log order)."""
    out: dict[str, list[AudioChunk]] = {}
    for c in chunks:
        out.setdefault(f"{c.machine_type}/{c.machine_id}", []).append(c)
    return out


class FirstBlocks:
    """A source cut short: the first ``n`` blocks of another source (then it ends like a finished file)."""

    def __init__(self, source, n: int) -> None:
        self.source = source
        self.n = n
        self.sample_rate = source.sample_rate

    def describe(self) -> str:
        return f"first {self.n} blocks of {self.source.describe()}"

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        gen = self.source.blocks(stop)
        try:
            for i, block in enumerate(gen):
                yield block
                if i + 1 >= self.n:
                    return
        finally:
            gen.close()


class Recorded:
    """A source wrapper that notes the wall time each block is handed to the gateway, per machine."""

    def __init__(self, source) -> None:
        self.source = source
        self.sample_rate = source.sample_rate
        self.handed_ns: dict[str, list[int]] = {}

    def describe(self) -> str:
        return self.source.describe()

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        gen = self.source.blocks(stop)
        try:
            for block in gen:
                self.handed_ns.setdefault(f"{block.machine_type}/{block.machine_id}", []).append(time.time_ns())
                yield block
        finally:
            gen.close()
