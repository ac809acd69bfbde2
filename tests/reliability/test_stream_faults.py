"""Issue 16 defects on a real broker with real workers: a broker that restarts empty, and 10 MB bad records.

Each test runs its OWN Tansu broker on a free port (deploy.private_services.PrivateBroker): it is killed and
restarted, and 10 MB records do not bloat the shared broker on 9092.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import requests

from deploy.pipeline import StageProcess
from deploy.private_services import PrivateBroker, plumbing_model
from soundwatch.audio.logmel import complete_frames
from soundwatch.audio.windows import n_windows
from soundwatch.contracts import AudioChunk, DeadLetter, FeatureWindow, Reason, machine_key
from soundwatch.kafka import ensure_topics, make_consumer, make_producer
from soundwatch.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SR = 16_000
HUGE = b"\x00" + bytes(10 * 1024 * 1024)  # 10 MB that decode as nothing


def on_private_broker(settings: Settings, tmp_path: Path) -> tuple[PrivateBroker, Settings]:
    broker = PrivateBroker(tmp_path / "broker").start()
    s = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})})
    ensure_topics(s)
    return broker, s


def chunks(machine: str, n: int, first: int = 0) -> list[AudioChunk]:
    """``n`` one-second PCM16 noise chunks of ``fan/<machine>`` from sequence ``first`` on."""
    rng = np.random.default_rng(abs(hash(machine)) % 2**32)
    pcm = rng.integers(-3000, 3000, size=(first + n) * SR).astype(np.int16)
    t0 = 1_790_000_000 * 10**9
    return [
        AudioChunk(
            "fan", machine, "gw-test", SR, i, t0 + i * 10**9, pcm[i * SR : (i + 1) * SR], origin_ns=t0 + i * 10**9
        )
        for i in range(first, first + n)
    ]


def send(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings, max_request_size=32 * 1024 * 1024)
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(60)
    finally:
        producer.close()


def encoded(cs: list[AudioChunk]) -> list[tuple[bytes | None, bytes]]:
    return [(machine_key(c.machine_type, c.machine_id), c.encode()) for c in cs]


def read_all(settings: Settings, topic: str, until, timeout_s: float) -> list:
    from kafka import TopicPartition

    consumer = make_consumer(settings, group_id=None)
    try:
        deadline = time.monotonic() + timeout_s
        out: list = []
        parts = None
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts or [])])
        consumer.seek_to_beginning()
        while time.monotonic() < deadline and not until(out):
            for records in consumer.poll(timeout_ms=300).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


def windows_of(records) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for rec in records:
        w = FeatureWindow.decode(rec.value)
        out.setdefault(w.machine_id, []).append((w.segment, w.start_frame))
    return out


def expected_windows(settings: Settings, seconds: int) -> int:
    return n_windows(complete_frames(seconds * SR, settings.features), settings.features)


def features_worker(settings: Settings, log: Path) -> StageProcess:
    worker = StageProcess("features", ["features", "run", "--web-port", "0"], log, settings.to_env())
    worker.start()
    return worker


def test_new_audio_after_a_broker_restart_is_not_dropped_as_a_replay(isolated_settings, tmp_path):
    """Issue 16.1: the broker restarted empty; the worker's stored next offset (12) outlived the topic and every
    new record below it was skipped as a replay: a 40 s hole and no metric. Now: resynchronised, counted."""
    broker, s = on_private_broker(isolated_settings, tmp_path)
    worker = features_worker(s, tmp_path / "features.log")
    t = s.kafka.topics
    machines = ["m0", "m1"]
    try:
        send(s, t.audio_raw, [r for m in machines for r in encoded(chunks(m, 12))])
        per = expected_windows(s, 12)
        before = read_all(s, t.features, lambda r: len(r) >= 2 * per, 120)
        assert len(before) == 2 * per, worker.log_path.read_text()[-3000:]
        broker.kill()
        time.sleep(3.0)
        broker.start()
        ensure_topics(s)  # the operator's `soundwatch services up` after the broker lost its data
        send(s, t.audio_raw, [r for m in machines for r in encoded(chunks(m, 18, first=12))])
        after_n = 2 * (expected_windows(s, 30) - per)
        after = read_all(s, t.features, lambda r: len(r) >= after_n, 120)
        log = worker.log_path.read_text()
        got = windows_of(after)
        for m in machines:  # the stream goes on in the same segment, nothing missing, nothing repeated
            hop = s.features.hop_frames
            assert got.get(m) == [(0, i * hop) for i in range(per, expected_windows(s, 30))], log[-3000:]
        assert "recreated or truncated" in log
        # the pipeline point says so (a recreated topic, no chunk lost)
        q = "SELECT max(topic_resyncs), max(chunks_skipped) FROM pipeline WHERE stage='features'"
        deadline, rows = time.monotonic() + 40, []
        while time.monotonic() < deadline:
            result = requests.get(f"{s.influx.url}/query", params={"db": s.influx.database, "q": q}, timeout=10).json()[
                "results"
            ][0]
            rows = result.get("series", [{}])[0].get("values", [])
            if rows and rows[0][1]:
                break
            time.sleep(1)
        assert rows and rows[0][1] >= 1 and rows[0][2] == 0, rows
    finally:
        worker.stop(30)
        broker.kill()


def test_a_10_mb_bad_record_on_audio_raw_is_dead_lettered_cut_down_and_the_partition_moves_on(
    isolated_settings, tmp_path
):
    """Issue 16.2: the dead letter exceeded the producer's 1 MB limit, the agent crashed in a loop and the
    partition stalled. 16.6: an empty value is ``empty_payload``."""
    broker, s = on_private_broker(isolated_settings, tmp_path)
    t = s.kafka.topics
    key = machine_key("fan", "m0")
    send(s, t.audio_raw, encoded(chunks("m0", 4)) + [(key, HUGE), (key, b"")] + encoded(chunks("m0", 8, first=4)))
    worker = features_worker(s, tmp_path / "features.log")
    try:
        dead = read_all(s, t.deadletter, lambda r: len(r) >= 2, 120)
        out = read_all(s, t.features, lambda r: len(r) >= expected_windows(s, 12), 60)
        log = worker.log_path.read_text()
        letters = [DeadLetter.from_headers(r.headers) for r in dead]
        assert [x.reason for x in letters] == [Reason.BAD_MAGIC, Reason.EMPTY_PAYLOAD], log[-3000:]
        big = letters[0]
        assert big.original_size == len(HUGE) and big.truncated and len(big.sha256) == 64
        assert len(dead[0].value) <= DeadLetter.MAX_VALUE_BYTES and (big.source_offset, letters[1].source_offset) == (
            4,
            5,
        )
        hop = s.features.hop_frames
        assert windows_of(out)["m0"] == [(0, i * hop) for i in range(expected_windows(s, 12))], log[-3000:]
        assert worker.running and "Traceback" not in log
    finally:
        worker.stop(30)
        broker.kill()


def test_a_10_mb_bad_record_on_features_does_not_stop_the_scoring_worker_committing(isolated_settings, tmp_path):
    """Issue 16.2: the dead letter exceeded max_request_size; the worker resent it forever and never committed."""
    from running_workers import running_worker

    broker, base = on_private_broker(isolated_settings, tmp_path)
    s = load_settings(
        **{
            **base.model_dump(),
            "scoring": {**base.scoring.model_dump(), "max_batch": 16, "max_wait_ms": 20, "device": "cpu"},
        }
    )
    params = s.features
    plumbing_model(s.registry_root, "fan", ["id_00"], params)
    rng = np.random.default_rng(1)
    hop_ns, win_ns = int(params.hop_seconds * 1e9), int(params.window_seconds * 1e9)
    t0 = 1_790_000_000 * 10**9

    def window(i: int) -> bytes:
        values = (
            np.linspace(-20, -70, params.n_mels)[:, None] + rng.normal(0, 3, (params.n_mels, params.window_frames))
        ).astype(np.float32)
        return FeatureWindow(
            "fan",
            "id_00",
            "gw-test",
            0,
            i * params.hop_frames,
            t0 + i * hop_ns,
            t0 + i * hop_ns + win_ns,
            t0,
            i,
            params.canonical_json(),
            values,
        ).encode()

    key = machine_key("fan", "id_00")
    t = s.kafka.topics
    send(s, t.features, [(key, window(i)) for i in range(5)] + [(key, HUGE)] + [(key, window(i)) for i in range(5, 10)])
    try:
        with running_worker(s) as worker:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (worker.windows_scored < 10 or worker._pending):
                time.sleep(0.3)
            assert worker.windows_scored == 10 and not worker._pending, "the 10 MB record's batch never committed"
        dead = read_all(s, t.deadletter, lambda r: len(r) >= 1, 30)
        letter = DeadLetter.from_headers(dead[0].headers)
        assert letter.reason is Reason.BAD_MAGIC and letter.original_size == len(HUGE) and letter.truncated
        assert len(dead[0].value) <= DeadLetter.MAX_VALUE_BYTES and letter.source_offset == 5
    finally:
        broker.kill()


def test_a_letter_the_broker_still_refuses_goes_without_its_value_and_the_worker_commits(
    isolated_settings, tmp_path, monkeypatch
):
    """A producer whose request limit (200 kB) is below even the cut-down letter (512 KiB): the letter is sent
    again with headers only (sw-delivery-error says why) instead of being resent forever."""
    from running_workers import running_worker

    import scoring.worker

    broker, base = on_private_broker(isolated_settings, tmp_path)
    s = load_settings(
        **{
            **base.model_dump(),
            "scoring": {**base.scoring.model_dump(), "max_batch": 16, "max_wait_ms": 20, "device": "cpu"},
        }
    )
    plumbing_model(s.registry_root, "fan", ["id_00"], s.features)
    monkeypatch.setattr(
        scoring.worker, "make_producer", lambda settings: make_producer(settings, max_request_size=200_000)
    )
    key, t = machine_key("fan", "id_00"), s.kafka.topics
    send(s, t.features, [(key, b"\x00" + bytes(1024 * 1024))])
    try:
        with running_worker(s) as worker:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and (
                worker._pending or not read_all(s, t.deadletter, lambda r: len(r) >= 1, 1)
            ):
                time.sleep(0.3)
            assert not worker._pending, "the refused letter's batch never committed"
        dead = read_all(s, t.deadletter, lambda r: len(r) >= 1, 30)
        letter = DeadLetter.from_headers(dead[0].headers)
        assert dead[0].value in (b"", None) and letter.reason is Reason.BAD_MAGIC and letter.truncated
        assert "MessageSizeTooLarge" in letter.delivery_error and letter.original_size == 1024 * 1024 + 1
    finally:
        broker.kill()
