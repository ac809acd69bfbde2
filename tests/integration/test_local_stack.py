"""The real local services: Kafka protocol through a consumer group, Redis, InfluxDB 1.x."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from soundwatch.contracts import AudioChunk, machine_key
from soundwatch.influx.client import InfluxClient
from soundwatch.influx.schema import score_point
from soundwatch.kafka import make_consumer, make_producer
from soundwatch.settings import Settings

pytestmark = pytest.mark.integration


def test_services_status_reports_all_up(stack: Settings):
    from deploy.local_stack import LocalStack

    statuses = {s.name: s for s in LocalStack(stack).status()}
    assert set(statuses) == {"kafka", "redis", "influxdb"}
    assert all(s.answering for s in statuses.values())


def test_thousand_audio_chunks_through_a_consumer_group(isolated_settings: Settings, unique: str):
    s = isolated_settings
    topic = s.kafka.topics.audio_raw
    rng = np.random.default_rng(0)
    sent: dict[tuple[str, int], bytes] = {}
    producer = make_producer(s, compression_type="gzip")
    for i in range(1000):
        machine = f"id_{i % 8:02d}"
        chunk = AudioChunk(
            "fan",
            machine,
            "gw-test",
            16000,
            i // 8,
            i * 1_000_000,
            rng.integers(-32768, 32767, 1600, dtype=np.int16),
            origin_ns=time.time_ns(),
        )
        payload = chunk.encode()
        sent[(machine, i // 8)] = payload
        producer.send(topic, key=machine_key("fan", machine), value=payload)
    producer.flush(timeout=60)
    producer.close()

    consumer = make_consumer(s, topic, group_id=f"g-{unique}")
    received: dict[tuple[str, int], bytes] = {}
    last_seq: dict[str, int] = {}
    deadline = time.monotonic() + 90
    try:
        while len(received) < 1000 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for rec in records:
                    chunk = AudioChunk.decode(rec.value)
                    assert rec.key == machine_key(chunk.machine_type, chunk.machine_id)
                    assert last_seq.get(chunk.machine_id, -1) < chunk.sequence, "per-machine order broken"
                    last_seq[chunk.machine_id] = chunk.sequence
                    received[(chunk.machine_id, chunk.sequence)] = rec.value
            consumer.commit()
    finally:
        consumer.close()
    assert len(received) == 1000
    assert received == sent  # bytes identical


def test_redis_set_get_and_pubsub(stack: Settings, unique: str):
    import redis

    client = redis.Redis.from_url(stack.redis.url, **stack.redis.client_kwargs())
    key = f"test:{unique}:k"
    client.set(key, b"\x00\x01value", ex=60)
    assert client.get(key) == b"\x00\x01value"

    pubsub = client.pubsub()
    channel = f"test:{unique}:chan"
    pubsub.subscribe(channel)
    got: list[bytes] = []

    def listen() -> None:
        for msg in pubsub.listen():
            if msg["type"] == "message":
                got.append(msg["data"])
                return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while client.publish(channel, b"reload fan v2") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    t.join(timeout=10)
    assert got == [b"reload fan v2"]
    pubsub.close()
    client.delete(key)
    client.close()


def test_influx_write_and_influxql_read_back(isolated_settings: Settings):
    points = [
        score_point(
            machine_type="fan",
            machine_id=f"id_0{i % 2}",
            model_version="v1",
            end_ns=1_700_000_000_000_000_000 + i * 10**9,
            score=i * 0.5,
            score_median=i * 0.25,
            threshold=2.0,
            anomalous=i > 4,
        )
        for i in range(10)
    ]
    with InfluxClient(isolated_settings.influx) as client:
        client.write([p.to_line() for p in points])
        answer = client.query('SELECT count("score"), max("score") FROM "asd_score" GROUP BY "machine_id"')
    series = {sr.tags["machine_id"]: sr.values[0] for sr in answer}
    assert series["id_00"][1:] == [5, 4.0]
    assert series["id_01"][1:] == [5, 4.5]


def test_commit_from_a_rebalance_listener_lets_the_group_move_on(isolated_settings: Settings, unique: str):
    """A rebalance listener that commits (as the scoring worker and the archive do) must not wedge the group.

    kafka-python 3 calls listeners on its IO thread, where a blocking commit raises; escaping, that
    made the coordinator retry the revocation forever and the worker consumed nothing again.
    """
    from kafka import ConsumerRebalanceListener, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from soundwatch.kafka import commit_offsets, ensure_topics

    s = isolated_settings
    topic = f"rebalance-{unique}"
    ensure_topics(s, [topic])
    producer = make_producer(s)
    for i in range(40):
        producer.send(topic, key=f"k{i % 8}".encode(), value=b"x")
    producer.flush(timeout=30)
    producer.close()
    group = f"g-{unique}"
    consumed: dict[TopicPartition, int] = {}
    revocations: list[str] = []

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):  # noqa: ANN001
            offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in consumed.items() if tp in revoked}
            if offsets:
                commit_offsets(a, offsets)
            revocations.append(threading.current_thread().name)

        def on_partitions_assigned(self, assigned):  # noqa: ANN001
            pass

    a = make_consumer(s, group_id=group)
    a.subscribe([topic], listener=Listener())
    stop = threading.Event()
    errors: list[BaseException] = []

    def poll_a() -> None:
        try:
            while not stop.is_set():
                for tp, records in a.poll(timeout_ms=200).items():
                    consumed[tp] = records[-1].offset + 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=poll_a, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while sum(consumed.values()) < 40 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(consumed.values()) == 40, "the first consumer did not read the topic"
        b = make_consumer(s, group_id=group)
        b.subscribe([topic])
        try:
            deadline = time.monotonic() + 60
            while not b.assignment() and time.monotonic() < deadline:
                b.poll(timeout_ms=200)
            assert b.assignment(), f"the group never rebalanced (revocations: {len(revocations)}, errors: {errors})"
            assert len(revocations) <= 3, f"the revocation was retried {len(revocations)} times"
            assert not errors, errors
            deadline = time.monotonic() + 30  # the commit made in the listener landed (sync or scheduled)
            while time.monotonic() < deadline:
                committed = {tp: b.committed(tp) for tp in b.assignment()}
                if all(c == consumed.get(tp) for tp, c in committed.items()):
                    break
                time.sleep(0.5)
            assert committed == {tp: consumed.get(tp) for tp in b.assignment()}
        finally:
            b.close()
    finally:
        stop.set()
        thread.join(10)
        a.close()
