"""Helpers for the scoring tests: feature windows, Kafka/InfluxDB read-back (models: deploy.private_services).

Imported by name (conftest.py only holds fixtures).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from deploy.private_services import plumbing_windows
from soundwatch.contracts import FeatureWindow, machine_key
from soundwatch.influx.client import InfluxClient
from soundwatch.params import FeatureParams
from soundwatch.settings import InfluxSettings, Settings

T0_NS = 1_763_900_000_000_000_000  # a fixed wall-clock origin keeps points inside any retention policy


def make_window(
    machine_type: str,
    machine_id: str,
    index: int,
    params: FeatureParams | None = None,
    values: np.ndarray | None = None,
) -> FeatureWindow:
    """The ``index``-th window of a machine, timed like the stream (end = start + window length)."""
    p = params or FeatureParams()
    hop_ns = int(p.hop_seconds * 1e9)
    start = T0_NS + index * hop_ns
    if values is None:
        values = plumbing_windows(1, p, seed=hash((machine_type, machine_id, index)) % 2**32)[0]
    return FeatureWindow(
        machine_type=machine_type,
        machine_id=machine_id,
        gateway_id="gw-test",
        segment=0,
        start_frame=index * p.hop_frames,
        start_ns=start,
        end_ns=start + int(p.window_seconds * 1e9),
        origin_ns=time.time_ns(),
        last_sequence=index,
        feature_params=p.canonical_json(),
        values=values,
    )


def produce(settings: Settings, windows: list[FeatureWindow], extra: list[tuple[bytes, bytes]] = ()) -> None:
    from soundwatch.kafka import make_producer

    producer = make_producer(settings)
    for w in windows:
        producer.send(settings.kafka.topics.features, key=machine_key(w.machine_type, w.machine_id), value=w.encode())
    for key, value in extra:
        producer.send(settings.kafka.topics.features, key=key, value=value)
    producer.flush(30)
    producer.close()


def read_topic(settings: Settings, topic: str, expect: int, timeout_s: float = 30.0) -> list:
    """All records of ``topic`` (no group), waiting until at least ``expect`` arrived."""
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None)
    parts = [TopicPartition(topic, p) for p in range(settings.kafka.topics.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    out: list = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=300).values():
            out.extend(recs)
        if len(out) >= expect:
            # one more short poll so that "more than expected" is seen too
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend(recs)
            break
    consumer.close()
    return out


def influx_query(url: str, database: str, q: str) -> list[dict]:
    """Run InfluxQL through the core client; rows as dicts (column -> value, plus the series' tags), times in ns."""
    with InfluxClient(InfluxSettings(url=url, database=database)) as client:
        return [row | series.tags for series in client.query(q, epoch="ns") for row in series.rows()]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def count_points(settings: Settings, url: str | None = None) -> int:
    rows = influx_query(url or settings.influx.url, settings.influx.database, "SELECT count(score) FROM asd_score")
    return int(rows[0]["count"]) if rows else 0
