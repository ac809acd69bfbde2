"""End to end on the real services: simulator -> broker -> archive -> confirm -> retrain once ->
promoted -> reload message -> the scoring worker swaps models -> InfluxDB points carry the new
model_version."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from running_workers import running_worker

from soundwatch.contracts import AudioChunk, machine_key
from soundwatch.influx.client import InfluxClient
from soundwatch.model.registry import ModelRegistry
from soundwatch.settings import ArchiveSettings, GateSettings, RetrainSettings, Settings, load_settings
from training.service.archive import ArchiveReader, running_archive
from training.service.confirmations import AlertHistory, ConfirmationStore
from training.service.retrain import retrain_once

from .retrain_helpers import MACHINES, copy_registry

pytestmark = pytest.mark.integration


def _wait(predicate, timeout_s: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")


def _read_chunks(settings: Settings) -> list[AudioChunk]:
    """Everything on the test's audio.raw topic (no group), decoded."""
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    topic = settings.kafka.topics.audio_raw
    consumer = make_consumer(settings, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(settings.kafka.topics.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    out = []
    deadline = time.monotonic() + 30
    while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=300).values():
            out += [AudioChunk.decode(r.value) for r in recs]
    consumer.close()
    return out


def _points_by_version(settings: Settings) -> dict[str, int]:
    with InfluxClient(settings.influx) as client:
        answer = client.query("SELECT count(score) FROM asd_score GROUP BY model_version")
    return {series.tags["model_version"]: int(series.values[0][1]) for series in answer}


class _FirstBlocks:
    """A source limited to its first ``n`` blocks (a fixed amount of audio, whatever the CPU load)."""

    def __init__(self, source, n: int) -> None:  # noqa: ANN001
        self.source, self.n, self.sample_rate = source, n, source.sample_rate

    def describe(self) -> str:
        return f"first {self.n} blocks of {self.source.describe()}"

    def blocks(self, stop: threading.Event) -> Iterator:
        inner = self.source.blocks(stop)
        try:
            for i, block in enumerate(inner):
                if i >= self.n:
                    return
                yield block
        finally:
            inner.close()


def test_simulator_to_promoted_model_reloaded_by_the_scoring_worker(isolated_settings, base_model, tmp_path) -> None:
    """On the default method, ``clp``, with the default retraining (a kNN bank refresh: the encoder
    is kept, the bank gets the confirmed-normal embeddings, so the candidate cannot forget)."""
    from features.windower import StreamWindower
    from ingest.gateway import run_gateway
    from ingest.sources.simulator import SimulatorSource
    from soundwatch.kafka import make_producer

    s = load_settings(
        **{
            k: getattr(isolated_settings, k).model_dump()
            for k in ("kafka", "redis", "influx", "ingest", "stream", "features")
        },
        scoring={**isolated_settings.scoring.model_dump(), "device": "cpu", "max_batch": 32, "max_wait_ms": 20},
        registry_root=isolated_settings.registry_root,
    )
    copy_registry(base_model, s.registry_root)
    registry = ModelRegistry(s.registry_root, s.redis)
    registry.set_current("fan", "v0001")
    archive = ArchiveSettings(
        root=tmp_path / "archive", segment_seconds=10, idle_flush_s=1.0, group_id=f"archive-{s.redis.key_prefix}"
    )

    # 1. simulator -> broker (as fast as possible, 60 s per machine) while the archive records audio.raw
    with running_archive(s, archive) as consumer:
        source = _FirstBlocks(SimulatorSource([("fan", m) for m in MACHINES], 16_000, 16_000, speed=0.0), 120)
        report = run_gateway(s, source)
        assert report.chunks_sent == 120 and report.undelivered_chunks == 0
        _wait(lambda: consumer.chunks >= report.chunks_sent, 60, "the archive to take every chunk")
    chunks = sorted(_read_chunks(s), key=lambda c: (c.machine_id, c.sequence))
    reader = ArchiveReader(archive.root)
    spans = {}
    for mid in MACHINES:
        segs = reader.index.segments("fan", mid)
        spans[mid] = (segs[0].start_ns, segs[-1].end_ns)
        archived = sum(s_.n_samples for s_ in segs)
        assert archived == sum(c.n_samples for c in chunks if c.machine_id == mid), "archive == what was sent"
    reader.close()

    # 2. the features stage's windowing (the code the Faust app runs) -> features topic, in two halves
    windows = {mid: [] for mid in MACHINES}
    for mid in MACHINES:
        w = StreamWindower(s.features, "fan", mid)
        for c in (c for c in chunks if c.machine_id == mid):
            windows[mid] += w.push(c).windows
    producer = make_producer(s)

    def produce(half: int) -> int:
        n = 0
        for mid, ws in windows.items():
            part = ws[: len(ws) // 2] if half == 0 else ws[len(ws) // 2 :]
            for fw in part:
                producer.send(s.kafka.topics.features, key=machine_key("fan", mid), value=fw.encode())
                n += 1
        producer.flush(30)
        return n

    with running_worker(s) as worker:
        n_first = produce(0)
        _wait(lambda: _points_by_version(s).get("v0001", 0) >= n_first, 90, "points of v0001")

        # 3. confirm the archived audio as normal (the simulator ran ahead of the wall clock, so
        #    "now" for the confirmation is the end of the simulated audio)
        store = ConfirmationStore(s.redis)
        for mid, (a, b) in spans.items():
            iv = store.confirm("fan", mid, a, b, by="e2e", note="simulated, healthy", alerts=AlertHistory(s), now_ns=b)
            assert not iv.forced

        # 4. retrain once; listen for the reload announcement
        pubsub = registry._client().pubsub()
        pubsub.subscribe(registry.reload_channel)
        _wait(lambda: pubsub.get_message(timeout=0.2), 10, "the subscription")
        gate = GateSettings(far_tolerance=0.05, auc_tolerance=0.05, pauc_tolerance=0.1)  # small evaluation sets
        cfg = RetrainSettings(
            data_root=base_model.data_root, device="cpu", progress=False, min_confirmed_seconds=20, gate=gate
        )
        out = retrain_once(s, "fan", cfg, archive=archive, registry=registry, store=store)
        print("\n" + out.message)
        assert out.promoted and out.version == "v0002", out.message
        msg = _wait(lambda: pubsub.get_message(timeout=0.5), 10, "the reload message")
        assert json.loads(msg["data"]) == {"machine_type": "fan", "version": "v0002"}
        assert registry.current_version("fan") == "v0002"

        # 5. the worker swaps models and the next windows are scored by v0002
        _wait(lambda: worker.models.loaded.get("fan") == "v0002", 30, "the worker to load v0002")
        n_second = produce(1)
        _wait(lambda: _points_by_version(s).get("v0002", 0) >= n_second, 90, "points of v0002")
    producer.close()
    counts = _points_by_version(s)
    print(
        json.dumps(
            {
                "points_by_model_version": counts,
                "chunks": len(chunks),
                "windows_first": n_first,
                "windows_second": n_second,
                "retrain": out.stats,
            },
            default=str,
        )
    )
    meta = json.loads((s.registry_root / "fan" / "v0002" / "metadata.json").read_text())
    assert meta["parent_version"] == "v0001" and meta["metrics"]["gate"]["passed"] is True
    assert meta["method"] == "clp" and meta["data_summary"]["encoder_update"] == "bank"
    assert sorted(meta["data_summary"]["intervals"]) == sorted(
        iv["interval"] for iv in meta["data_summary"]["confirmed"]
    )
