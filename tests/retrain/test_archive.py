"""The archive keeps exactly the PCM that was sent: rolling FLAC segments, gaps, duplicates, retention."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from soundwatch.contracts import AudioChunk, DeadLetter, Reason, machine_key
from soundwatch.settings import ArchiveSettings
from training.service.archive import ArchiveReader, ArchiveWriter, running_archive

SR = 16_000
T0 = (time.time_ns() // 10**9 - 3600) * 10**9  # recent: retention keeps 30 days


def _chunks(machine_id: str, n: int, *, seq0: int = 0, t0: int = T0, seconds: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    size = int(SR * seconds)
    for i in range(n):
        pcm = rng.integers(-20000, 20000, size=size, dtype=np.int16)
        yield AudioChunk("fan", machine_id, "gw-test", SR, seq0 + i, t0 + int(i * seconds * 1e9), pcm)


def _pcm(pieces) -> np.ndarray:
    return np.concatenate([np.round(p.samples * 32768).astype(np.int16) for p in pieces])


def test_segments_roll_gaps_split_and_duplicates_are_ignored(tmp_path: Path) -> None:
    writer = ArchiveWriter(ArchiveSettings(root=tmp_path, segment_seconds=3.0))
    sent = list(_chunks("id_00", 8))
    for c in sent:
        assert writer.add(c)
    assert not writer.add(sent[5]), "a replayed chunk must be recognised as a duplicate"
    # a gap: sequences 8, 9 missing; audio resumes 2 s later
    after_gap = list(_chunks("id_00", 2, seq0=10, t0=T0 + 10 * 10**9, seed=1))
    for c in after_gap:
        writer.add(c)
    writer.flush_all()
    segs = writer.index.segments("fan", "id_00")
    assert [(s.first_sequence, s.last_sequence) for s in segs] == [(0, 2), (3, 5), (6, 7), (10, 11)]
    writer.close()

    reader = ArchiveReader(tmp_path)
    pieces = reader.read_range("fan", "id_00", T0, T0 + 20 * 10**9)
    assert len(pieces) == 2, "the sequence gap separates two contiguous pieces"
    assert np.array_equal(_pcm(pieces[:1]), np.concatenate([c.samples for c in sent]))
    assert np.array_equal(_pcm(pieces[1:]), np.concatenate([c.samples for c in after_gap]))
    # a sub-range, cut inside segments, is sample-exact
    part = reader.read_range("fan", "id_00", T0 + 2_500_000_000, T0 + 4_250_000_000)
    assert len(part) == 1 and part[0].start_ns == T0 + 2_500_000_000
    full = np.concatenate([c.samples for c in sent])
    assert np.array_equal(_pcm(part), full[int(2.5 * SR) : int(4.25 * SR)])
    assert reader.resolve("id_00") == ("fan", "id_00")


def test_retention_drops_oldest_segments_by_bytes(tmp_path: Path) -> None:
    writer = ArchiveWriter(ArchiveSettings(root=tmp_path, segment_seconds=1.0, max_bytes=3 * 40_000))
    now = time.time_ns()
    for c in _chunks("id_01", 6, t0=now - 10 * 10**9):
        writer.add(c)
    writer.flush_all()
    segs = writer.index.segments("fan", "id_01")
    assert 1 <= len(segs) <= 3 and segs[-1].last_sequence == 5, "newest audio kept, oldest deleted"
    assert writer.index.total_bytes() <= 3 * 40_000
    files = sorted(p.name for p in tmp_path.rglob("*.flac"))
    assert len(files) == len(segs), "deleted segments leave no files behind"
    writer.close()


def _read_all(settings, topic: str) -> list:  # noqa: ANN001
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(settings.kafka.topics.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    end = consumer.end_offsets(tps)
    out: list = []
    deadline = time.monotonic() + 20
    while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=300).values():
            out += recs
    consumer.close()
    return out


@pytest.mark.integration
def test_archive_consumer_writes_flac_equal_to_pcm_sent(isolated_settings, tmp_path: Path) -> None:
    from soundwatch.kafka import make_producer

    settings = isolated_settings
    topic = settings.kafka.topics.audio_raw
    sent = {mid: list(_chunks(mid, 5, seed=i)) for i, mid in enumerate(("id_00", "id_02"))}
    producer = make_producer(settings)
    for mid, chunks in sent.items():
        for c in chunks:
            producer.send(topic, key=machine_key("fan", mid), value=c.encode())
        producer.send(topic, key=machine_key("fan", mid), value=chunks[2].encode())  # an at-least-once duplicate
    producer.send(topic, key=b"fan/bad", value=b"not a chunk")
    producer.flush()

    config = ArchiveSettings(
        root=tmp_path / "archive",
        segment_seconds=2.0,
        idle_flush_s=0.5,
        group_id=f"archive-{settings.redis.key_prefix}",
    )
    with running_archive(settings, config) as consumer:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and consumer.chunks + consumer.writer.duplicates < 12:
            time.sleep(0.3)
    assert consumer.dead_letters == 1
    letters = _read_all(settings, settings.kafka.topics.deadletter)
    assert [DeadLetter.from_headers(r.headers).reason for r in letters] == [Reason.BAD_MAGIC]
    assert letters[0].value == b"not a chunk" and DeadLetter.from_headers(letters[0].headers).stage == "archive"
    reader = ArchiveReader(config.root)
    for mid, chunks in sent.items():
        pieces = reader.read_range("fan", mid, T0, T0 + 10 * 10**9)
        assert len(pieces) == 1
        assert np.array_equal(_pcm(pieces), np.concatenate([c.samples for c in chunks]))

    # offsets were committed: a restarted archive in the same group replays nothing new
    with running_archive(settings, config) as again:
        time.sleep(8)  # group join on the local broker takes ~half the session timeout
    assert again.chunks == 0 and again.writer.segments_written == 0
