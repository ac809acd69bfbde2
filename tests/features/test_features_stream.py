"""The Faust worker on the real local broker: dead letters keep it running; kill -9 and restart loses and
repeats no window. Needs `soundwatch services up` (skipped otherwise, failed under CI=true)."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
from features_helpers import FeaturesWorker, chunks_of, pcm16, read_all, real_clips

from soundwatch.audio.windows import offline_windows
from soundwatch.contracts import AudioChunk, DeadLetter, FeatureWindow, Reason, machine_key
from soundwatch.kafka import make_producer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _partition_of(key: bytes, n: int) -> int:
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % n


def send(settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings)
    try:
        for key, value in records:
            producer.send(settings.kafka.topics.audio_raw, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def encoded(chunks: list[AudioChunk]) -> list[tuple[bytes, bytes]]:
    return [(machine_key(c.machine_type, c.machine_id), c.encode()) for c in chunks]


def windows_by_machine(records) -> dict[bytes, list[FeatureWindow]]:
    out: dict[bytes, list[FeatureWindow]] = {}
    for rec in records:
        w = FeatureWindow.decode(rec.value)
        assert rec.key == machine_key(w.machine_type, w.machine_id)
        out.setdefault(rec.key, []).append(w)
    return out


def assert_exactly_offline(windows: list[FeatureWindow], pcm: np.ndarray, params) -> None:
    ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=params)
    got = [(w.segment, w.start_frame) for w in windows]
    assert got == [(0, int(s)) for s in starts], "windows are not contiguous or repeat"
    assert max(float(np.abs(w.values - r).max()) for w, r in zip(windows, ref, strict=True)) <= 1e-3


def nan_chunk(template: AudioChunk) -> bytes:
    """A FLOAT32 chunk whose third sample is NaN (the constructor refuses to build one, so patch the bytes)."""
    floats = AudioChunk(
        template.machine_type,
        template.machine_id,
        template.gateway_id,
        template.sample_rate,
        template.sequence,
        template.start_ns,
        template.as_float32(),
    )
    data = bytearray(floats.encode())
    payload = len(data) - 4 * floats.n_samples
    data[payload + 8 : payload + 12] = struct.pack(">f", float("nan"))
    return bytes(data)


def test_bad_chunks_go_to_the_dead_letter_topic_and_the_worker_keeps_running(isolated_settings, tmp_path):
    s = isolated_settings
    pcm_a, pcm_b = pcm16(real_clips()[20]), pcm16(real_clips()[30])
    good_a = chunks_of(pcm_a, list(range(16_000, pcm_a.size, 16_000)), machine_id="id_a")
    good_b = chunks_of(pcm_b, list(range(16_000, pcm_b.size, 16_000)), machine_id="id_b")
    key_a = machine_key("fan", "id_a")
    wrong_rate = AudioChunk("fan", "id_a", "gw-test", 44_100, 0, 0, good_a[0].samples)
    bad = [
        (key_a, b"\x00garbage"),  # undecodable
        (key_a, good_a[0].encode()[:40]),  # truncated
        (key_a, nan_chunk(good_a[0])),  # NaN samples
        (key_a, wrong_rate.encode()),  # wrong sample rate
        (b"fan/not-this-machine", good_a[0].encode()),  # key is not the chunk's machine
    ]
    send(s, bad + encoded(good_a))
    worker = FeaturesWorker(s, tmp_path / "worker.log").start()
    try:
        dead = read_all(s, s.kafka.topics.deadletter, lambda r: len(r) >= len(bad), 90)
        letters = [DeadLetter.from_headers(r.headers) for r in dead]
        assert sorted(x.reason for x in letters) == sorted(
            [Reason.BAD_MAGIC, Reason.TRUNCATED, Reason.NON_FINITE, Reason.WRONG_SAMPLE_RATE, Reason.INVALID_FIELD]
        ), worker.log_tail()
        assert all(x.stage == "features" and x.source_topic == s.kafka.topics.audio_raw for x in letters)
        assert sorted(r.value for r in dead) == sorted(v for _, v in bad)
        n_a = len(offline_windows(pcm_a.astype(np.float32) / 32768, params=s.features)[1])
        out = read_all(s, s.kafka.topics.features, lambda r: len(r) >= n_a, 60)
        assert_exactly_offline(windows_by_machine(out)[key_a], pcm_a, s.features)
        assert worker.alive, worker.log_tail()

        newer = b"SW\x01\x07more garbage"  # a chunk of a schema version this side does not know
        send(s, [(key_a, newer)] + encoded(good_b))  # still running: more of both kinds
        n_b = len(offline_windows(pcm_b.astype(np.float32) / 32768, params=s.features)[1])
        out = read_all(s, s.kafka.topics.features, lambda r: len(r) >= n_a + n_b, 60)
        assert_exactly_offline(windows_by_machine(out)[machine_key("fan", "id_b")], pcm_b, s.features)
        dead = read_all(s, s.kafka.topics.deadletter, lambda r: len(r) >= len(bad) + 1, 30)
        assert len(dead) == len(bad) + 1, [r.value for r in dead]
        (late,) = [r for r in dead if r.value == newer]
        assert DeadLetter.from_headers(late.headers).reason is Reason.UNSUPPORTED_VERSION
        assert worker.alive
    finally:
        assert worker.stop() == 0, worker.log_tail()  # SIGTERM: a clean, graceful exit


def test_killed_and_restarted_worker_neither_loses_nor_repeats_windows(isolated_settings, tmp_path):
    s = isolated_settings
    clips = real_clips()
    machines = {}
    for m in range(4):  # 30 s per machine, 1 s chunks
        pcm = np.concatenate([pcm16(clips[24 + 3 * m + j])[:160_000] for j in range(3)])
        machines[f"m{m}"] = (pcm, chunks_of(pcm, list(range(16_000, pcm.size, 16_000)), machine_id=f"m{m}"))
    interleaved = [c for i in range(30) for _, chunks in machines.values() for c in chunks[i : i + 1]]
    first, rest = interleaved[:80], interleaved[80:]
    expected = {machine_key("fan", m): pcm for m, (pcm, _) in machines.items()}
    n_total = 4 * len(offline_windows(machines["m0"][0].astype(np.float32) / 32768, params=s.features)[1])

    worker = FeaturesWorker(s, tmp_path / "worker-1.log").start()
    send(s, encoded(first))
    before = read_all(s, s.kafka.topics.features, lambda r: len(r) >= 12, 90)
    worker.kill9()  # mid-stream: the worker is busy with the backlog and 40 chunks are not even sent yet
    assert 12 <= len(before) < n_total
    send(s, encoded(rest))
    restarted = FeaturesWorker(s, tmp_path / "worker-2.log").start()
    try:
        out = read_all(s, s.kafka.topics.features, lambda r: len(r) >= n_total, 120)
        time.sleep(2.0)  # a duplicate would arrive late: give it the chance
        out = read_all(s, s.kafka.topics.features, lambda r: len(r) > n_total, 3)
        got = windows_by_machine(out)
        assert set(got) == set(expected), restarted.log_tail()
        for key, pcm in expected.items():
            assert_exactly_offline(got[key], pcm, s.features)
        assert len(out) == n_total
    finally:
        assert restarted.stop() == 0, restarted.log_tail()


def test_two_workers_split_the_partitions_and_a_rebalance_loses_nothing(isolated_settings, tmp_path):
    s = isolated_settings
    clips = real_clips()
    # machine ids whose keys hash (murmur2, as every Kafka client) to partitions 3, 2, 0 and 1: both workers get work
    ids = ["w0", "w1", "w5", "w9"]
    assert sorted(_partition_of(machine_key("fan", m), 4) for m in ids) == [0, 1, 2, 3]
    machines = {
        m: np.concatenate([pcm16(clips[40 + 2 * i + j])[:160_000] for j in range(2)]) for i, m in enumerate(ids)
    }
    chunks = {m: chunks_of(pcm, list(range(16_000, pcm.size, 16_000)), machine_id=m) for m, pcm in machines.items()}
    interleaved = [c for i in range(20) for cs in chunks.values() for c in cs[i : i + 1]]
    n_total = 4 * len(offline_windows(machines["w0"].astype(np.float32) / 32768, params=s.features)[1])
    first = FeaturesWorker(s, tmp_path / "worker-a.log").start()
    second = FeaturesWorker(s, tmp_path / "worker-b.log")
    try:
        send(s, encoded(interleaved[:40]))
        read_all(s, s.kafka.topics.features, lambda r: len(r) >= 4, 90)
        second.start()  # joins mid-stream: the partitions are split between the two
        deadline = time.monotonic() + 90
        while "now has" not in second.log_tail(100_000) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "now has" in second.log_tail(100_000), second.log_tail()
        send(s, encoded(interleaved[40:]))
        out = read_all(s, s.kafka.topics.features, lambda r: len(r) >= n_total, 120)
        time.sleep(2.0)
        out = read_all(s, s.kafka.topics.features, lambda r: len(r) > n_total, 3)
        got = windows_by_machine(out)
        for m, pcm in machines.items():
            assert_exactly_offline(got[machine_key("fan", m)], pcm, s.features)
        assert len(out) == n_total
        assert "input partition" in second.log_tail(100_000), "the second worker processed nothing"
    finally:
        codes = [second.stop(), first.stop()]
        assert codes == [0, 0], first.log_tail() + second.log_tail()
