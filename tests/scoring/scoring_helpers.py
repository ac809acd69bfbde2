"""Helpers for the scoring tests: real model artifacts, feature windows, Kafka/InfluxDB read-back.

Imported by name (conftest.py only holds fixtures).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from soundwatch.contracts import FeatureWindow, machine_key
from soundwatch.influx.client import InfluxClient
from soundwatch.params import FeatureParams
from soundwatch.settings import InfluxSettings, Settings

T0_NS = 1_763_900_000_000_000_000  # a fixed wall-clock origin keeps points inside any retention policy


def save_model(
    root: Path,
    machine_type: str,
    machine_ids: list[str],
    *,
    thresholds: dict[str, float] | None = None,
    seed: int = 0,
    median_k: int = 3,
    params: FeatureParams | None = None,
) -> str:
    """Save a real ``clp`` artifact (small encoder + ArcFace head, seeded init) through the real registry.

    Untrained on purpose: these tests check plumbing (delivery, reload, DLQ), and training is
    covered by tests/training; ``thresholds`` decide which machines look anomalous.
    """
    import torch

    from soundwatch.model.networks import ArcMarginHead, Encoder, EncoderConfig
    from soundwatch.model.registry import Artifact, ModelRegistry

    params = params or FeatureParams()
    torch.manual_seed(seed)
    cfg = EncoderConfig(n_mels=params.n_mels, window_frames=params.window_frames, channels=(8, 16), embedding_dim=32)
    enc = Encoder(cfg)
    enc.norm.fit(torch.from_numpy(windows_values(64, params, seed)))
    head = ArcMarginHead(cfg.embedding_dim, len(machine_ids), 30.0, 0.5)
    th = {m: 1e6 for m in machine_ids} | (thresholds or {})
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
        thresholds=th,
        default_threshold=1e6,
        threshold_rule="test: fixed",
        data_summary={"source": "tests/scoring (untrained)"},
    )
    return ModelRegistry(root).save(artifact)


def windows_values(n: int, params: FeatureParams, seed: int) -> np.ndarray:
    """Log-mel-like dB windows: a per-bin spectral tilt plus noise, float32 [n, n_mels, W]."""
    rng = np.random.default_rng(seed)
    tilt = np.linspace(-20, -70, params.n_mels, dtype=np.float32)[None, :, None]
    return (tilt + rng.normal(0, 3, size=(n, params.n_mels, params.window_frames))).astype(np.float32)


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
        values = windows_values(1, p, seed=hash((machine_type, machine_id, index)) % 2**32)[0]
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
