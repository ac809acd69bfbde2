"""The Faust agent's logic without a broker: at-least-once replays after a crash neither lose nor repeat
windows, bad records become dead letters. (The real-broker versions are in test_features_stream.py.)"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest
from features_helpers import chunks_of, pcm16, real_clips

import features.app as feature_app
from features.app import WindowingProcessor
from features.windows import offline_windows
from soundwatch.contracts import DeadLetter, FeatureWindow, Reason, machine_key
from soundwatch.settings import load_settings


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class FakeTopic:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes, int | None, list]] = []

    async def send(self, *, key, value, partition=None, headers=None, force=False):
        assert force, "sends must not be deferred to the commit (Faust attachments)"
        self.records.append((key, value, partition, headers or []))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class FakeTable(dict):
    pass


@pytest.fixture
def settings(tmp_path):
    return load_settings(stream={"data_dir": tmp_path})


def processor(settings, table, out, dead, monkeypatch) -> WindowingProcessor:
    async def read_back(_settings, _topic, _partition, _depth):  # what the output partition holds
        newest: dict = {}
        for key, value, _, _ in out.records:
            w = FeatureWindow.decode(value)
            newest[key] = max(newest.get(key, (-1, -1)), (w.segment, w.start_frame))
        return 4, newest

    async def seek(topic, partition, offset):
        seeks.append((topic, partition, offset))

    async def earliest(topic, partition):
        return 0

    monkeypatch.setattr(feature_app, "read_emitted_tail", read_back)
    seeks: list = []
    proc = WindowingProcessor(settings, table, out, dead, seek=seek, earliest=earliest)
    proc.seeks = seeks  # type: ignore[attr-defined]
    return proc


def run(proc: WindowingProcessor, msgs: list[Msg]) -> None:
    async def go():
        for m in msgs:
            await proc.handle(m)

    asyncio.run(go())


def messages(chunks, topic="audio.raw", partition=2, first_offset=0) -> list[Msg]:
    return [Msg(topic, partition, first_offset + i, machine_key(c.machine_type, c.machine_id), c.encode())
            for i, c in enumerate(chunks)]  # fmt: skip


@pytest.mark.parametrize("state_lost_for", [0, 1, 3])
def test_crash_with_output_ahead_of_state_gives_no_duplicates_and_no_gaps(settings, monkeypatch, state_lost_for):
    """Crash after publishing the windows of the last ``state_lost_for`` chunks but before their state was
    stored; the restarted worker replays from an older committed offset."""
    pcm = pcm16(real_clips()[4])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    msgs = messages(chunks)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    first = processor(settings, table, out, dead, monkeypatch)
    crash_at = 6
    snapshots = []
    for m in msgs[:crash_at]:
        run(first, [m])
        snapshots.append(dict(table))
    # the changelog kept only the state as of chunk crash_at - 1 - state_lost_for
    restored = FakeTable(snapshots[crash_at - 1 - state_lost_for] if state_lost_for < crash_at else {})
    second = processor(settings, restored, out, dead, monkeypatch)
    run(second, msgs[2:])  # input committed offset was older still: chunks 2.. are delivered again
    windows = [FeatureWindow.decode(v) for _, v, _, _ in out.records]
    ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [w.start_frame for w in windows] == starts.tolist()
    assert all(w.segment == 0 for w in windows)
    assert max(np.abs(w.values - r).max() for w, r in zip(windows, ref, strict=True)) <= 1e-3
    assert {p for _, _, p, _ in out.records} == {2}  # input partition 2 -> output partition 2 % 4
    assert dead.records == []
    assert second.stats.replayed > 0 and second.seeks == []


def test_bad_records_become_dead_letters_and_processing_goes_on(settings, monkeypatch):
    pcm = pcm16(real_clips()[0])
    good = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    wrong_rate = chunks_of(pcm[:16_000], [])[0]
    object.__setattr__(wrong_rate, "sample_rate", 48_000)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    key = machine_key("fan", "id_00")
    bad = [
        Msg("audio.raw", 1, 0, key, b"not a chunk"),
        Msg("audio.raw", 1, 1, key, good[0].encode()[:-10]),
        Msg("audio.raw", 1, 2, key, wrong_rate.encode()),
        Msg("audio.raw", 1, 3, b"fan/someone-else", good[0].encode()),
    ]
    run(proc, bad + messages(good, partition=1, first_offset=4))
    letters = [DeadLetter.from_headers(h) for _, _, _, h in dead.records]
    assert [x.reason for x in letters] == [Reason.BAD_MAGIC, Reason.LENGTH_MISMATCH, Reason.WRONG_SAMPLE_RATE,
                                           Reason.INVALID_FIELD]  # fmt: skip
    assert [(x.source_topic, x.source_partition, x.source_offset) for x in letters] == [("audio.raw", 1, i)
                                                                                       for i in range(4)]  # fmt: skip
    assert [v for _, v, _, _ in dead.records] == [m.value for m in bad]  # original bytes kept
    _, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [FeatureWindow.decode(v).start_frame for _, v, _, _ in out.records] == starts.tolist()
    assert proc.stats.dead_letters == {"bad_magic": 1, "length_mismatch": 1, "wrong_sample_rate": 1, "invalid_field": 1}


def test_changed_feature_parameters_start_a_new_segment(settings, monkeypatch, tmp_path):
    pcm = pcm16(real_clips()[1])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    run(processor(settings, table, out, dead, monkeypatch), messages(chunks[:5]))
    changed = load_settings(stream={"data_dir": tmp_path}, features={"n_mels": 64, "window_frames": 32,
                                                                      "hop_frames": 16})  # fmt: skip
    out2 = FakeTopic()
    run(processor(changed, table, out2, dead, monkeypatch), messages(chunks[5:], first_offset=5))
    windows = [FeatureWindow.decode(v) for _, v, _, _ in out2.records]
    assert windows and all(w.segment == 1 and w.n_mels == 64 for w in windows)
    assert windows[0].start_frame == 0


def test_records_skipped_by_the_consumer_are_read_again(settings, monkeypatch):
    """Faust can drop fetched records (paused partitions during recovery) without seeking back."""
    pcm = pcm16(real_clips()[6])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    msgs = messages(chunks, partition=3)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, msgs[:4] + msgs[7:9])  # 4..6 vanished: 7 and 8 must not be processed
    assert proc.seeks == [("audio.raw", 3, 4)]
    run(proc, msgs[4:])  # what the consumer delivers after the seek
    windows = [FeatureWindow.decode(v) for _, v, _, _ in out.records]
    ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [w.start_frame for w in windows] == starts.tolist() and proc.stats.gaps == 0


def test_a_partition_starts_at_its_earliest_offset(settings, monkeypatch):
    pcm = pcm16(real_clips()[6])
    msgs = messages(chunks_of(pcm, list(range(16_000, pcm.size, 16_000))), partition=0, first_offset=0)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, msgs[2:4])  # the first records were dropped before anything was processed
    assert proc.seeks == [("audio.raw", 0, 0)] and out.records == []
