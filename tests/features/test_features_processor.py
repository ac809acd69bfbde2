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
from features.windower import StreamWindower
from soundwatch.audio.windows import offline_windows
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
    """The windower table: the processor writes with ``put`` (the changelog partition is the Faust table's)."""

    def put(self, key, value, partition):
        assert isinstance(partition, int)
        self[key] = value


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

    async def end(topic, partition):  # what the broker says the partition's end offset is (None: no answer)
        return proc.log_end.get((topic, partition))  # type: ignore[attr-defined]

    async def value_at(topic, partition, offset):  # the value the log holds at an offset (None: not there)
        return proc.log_values.get((topic, partition, offset))  # type: ignore[attr-defined]

    monkeypatch.setattr(feature_app, "read_emitted_tail", read_back)
    seeks: list = []
    proc = WindowingProcessor(settings, table, out, dead, seek=seek, earliest=earliest, end=end, value_at=value_at)
    proc.seeks = seeks  # type: ignore[attr-defined]
    proc.log_end = {}  # type: ignore[attr-defined]
    proc.log_values = {}  # type: ignore[attr-defined]
    return proc


def run(proc: WindowingProcessor, msgs: list[Msg]) -> None:
    async def go():
        for m in msgs:
            await proc.handle(m)

    asyncio.run(go())


def messages(chunks, topic="audio.raw", partition=2, first_offset=0) -> list[Msg]:
    return [
        Msg(topic, partition, first_offset + i, machine_key(c.machine_type, c.machine_id), c.encode())
        for i, c in enumerate(chunks)
    ]


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
    assert [x.reason for x in letters] == [
        Reason.BAD_MAGIC,
        Reason.LENGTH_MISMATCH,
        Reason.WRONG_SAMPLE_RATE,
        Reason.INVALID_FIELD,
    ]
    assert [(x.source_topic, x.source_partition, x.source_offset) for x in letters] == [
        ("audio.raw", 1, i) for i in range(4)
    ]
    assert [v for _, v, _, _ in dead.records] == [m.value for m in bad]  # original bytes kept
    _, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [FeatureWindow.decode(v).start_frame for _, v, _, _ in out.records] == starts.tolist()
    assert proc.stats.dead_letters == {"bad_magic": 1, "length_mismatch": 1, "wrong_sample_rate": 1, "invalid_field": 1}


def test_changed_feature_parameters_start_a_new_segment(settings, monkeypatch, tmp_path):
    pcm = pcm16(real_clips()[1])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    run(processor(settings, table, out, dead, monkeypatch), messages(chunks[:5]))
    changed = load_settings(
        stream={"data_dir": tmp_path}, features={"n_mels": 64, "window_frames": 32, "hop_frames": 16}
    )
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


def four_chunks_in_on_a_clock(settings, monkeypatch):
    """A processor that handled chunks 0..3 of a clip in partition 3, with ``clock[0]`` as its monotonic time."""
    clock = [1000.0]
    monkeypatch.setattr(feature_app.time, "monotonic", lambda: clock[0])
    pcm = pcm16(real_clips()[6])
    msgs = messages(chunks_of(pcm, list(range(16_000, pcm.size, 16_000))), partition=3)
    out = FakeTopic()
    proc = processor(settings, FakeTable(), out, FakeTopic(), monkeypatch)
    run(proc, msgs[:4])
    return clock, pcm, msgs, out, proc


def test_a_seek_back_defeated_by_records_fetched_before_it_is_repeated_until_the_record_arrives(settings, monkeypatch):
    """Records fetched before a seek can move Faust's read offset past it again, and Faust then drops the
    re-read records: while later records keep coming the consumer is sent back again (a 10 s grace used to
    skip them for good: windows lost after a broker restart)."""
    clock, pcm, msgs, out, proc = four_chunks_in_on_a_clock(settings, monkeypatch)
    before = len(out.records)
    for _ in range(50):  # for 50 s the consumer delivers 7 and 8 again and again, never 4..6
        run(proc, msgs[7:9])
        clock[0] += 1.0
    assert len(out.records) == before  # 7 and 8 were never processed ahead of 4..6
    assert len(proc.seeks) >= 45 and set(proc.seeks) == {("audio.raw", 3, 4)}  # sent back again and again
    run(proc, msgs[4:])  # the seek finally sticks
    windows = [FeatureWindow.decode(v) for _, v, _, _ in out.records]
    ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert len(out.records) > before and [w.start_frame for w in windows] == starts.tolist()
    assert proc.stats.gaps == 0


def test_a_seek_back_whose_records_were_dropped_again_is_repeated_while_no_record_comes(settings, monkeypatch):
    """After a broker restart the records re-read after a seek back can all be dropped by Faust (its read offset
    moved past them again) and the gateway may send nothing for a while: the worker's timer seeks again every
    second instead of waiting for the next record (the stream stalled for the whole idle period)."""
    clock, pcm, msgs, out, proc = four_chunks_in_on_a_clock(settings, monkeypatch)

    def resync_timer() -> None:
        asyncio.run(proc.resync_idle_partitions("audio.raw", [3], lambda partition: len(msgs)))

    run(proc, msgs[7:9])  # 4..6 skipped by the consumer: sent back to 4
    assert proc.seeks == [("audio.raw", 3, 4)]
    clock[0] += 0.5
    resync_timer()
    assert len(proc.seeks) == 1  # the seek is fresh: its records may be on their way
    clock[0] += 0.6
    resync_timer()
    assert proc.seeks == [("audio.raw", 3, 4)] * 2  # 1.1 s and nothing came: sought again
    resync_timer()
    assert len(proc.seeks) == 2  # not again within the second
    run(proc, msgs[4:])  # the second seek sticks
    clock[0] += 5.0
    resync_timer()
    assert len(proc.seeks) == 2  # nothing waited for any more
    windows = [FeatureWindow.decode(v) for _, v, _, _ in out.records]
    ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [w.start_frame for w in windows] == starts.tolist() and proc.stats.gaps == 0


def test_a_revoked_partition_is_not_sought_back_any_more(settings, monkeypatch):
    _, _, msgs, _, proc = four_chunks_in_on_a_clock(settings, monkeypatch)
    run(proc, msgs[7:9])  # sent back to 4 ...
    proc.forget_partitions({3})  # ... then partition 3 moved to another worker
    assert proc._rewinds == {}  # its new owner reads it from its own stored offset


def test_records_deleted_by_retention_before_they_were_read_are_skipped_at_once_and_counted(
    settings, monkeypatch, caplog
):
    clock, _, msgs, _, proc = four_chunks_in_on_a_clock(settings, monkeypatch)

    async def earliest(topic, partition):  # retention deleted offsets 0..6
        return 7

    proc._earliest = earliest  # type: ignore[method-assign]
    run(proc, msgs[7:8])
    assert proc.seeks == [("audio.raw", 3, 4)]
    clock[0] += 1.5
    with caplog.at_level("ERROR", logger="features.app"):
        run(proc, msgs[8:9])  # a record after one re-seek period: 4..6 are gone, so on to 7, the earliest
    assert "offsets 4..6 were deleted by retention" in caplog.text
    assert proc.seeks == [("audio.raw", 3, 4), ("audio.raw", 3, 7)]
    run(proc, msgs[7:])
    assert proc.stats.gaps == 1 and proc.stats.chunks_skipped == 3  # chunks 4..6, no more


def test_a_partition_starts_at_its_earliest_offset(settings, monkeypatch):
    pcm = pcm16(real_clips()[6])
    msgs = messages(chunks_of(pcm, list(range(16_000, pcm.size, 16_000))), partition=0, first_offset=0)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, msgs[2:4])  # the first records were dropped before anything was processed
    assert proc.seeks == [("audio.raw", 0, 0)] and out.records == []


# --------------------------------------------------------------------------- a recreated topic (issue 16.1)
def whole_stream_windows(out: FakeTopic) -> list[FeatureWindow]:
    return [FeatureWindow.decode(v) for _, v, _, _ in out.records]


@pytest.mark.parametrize("sign", ["content", "end_offset"])
def test_a_recreated_input_topic_is_resynchronised_and_no_new_chunk_is_dropped(settings, monkeypatch, sign):
    """The broker lost its data: the gateway's next chunks arrive at offsets 0, 1, ... while the table says 10
    is next. They are new audio. Either sign finds it: a chunk newer than the machine's state, or (when the
    first record of the new log is a chunk the gateway resent after the outage, seen before) the broker's end
    offset below the stored one."""
    pcm = pcm16(real_clips()[8])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, messages(chunks[:6], partition=1))  # the old log: offsets 0..5, next offset 6
    new_log = chunks[6:] if sign == "content" else chunks[5:]  # chunk 5 resent: its ack was lost in the outage
    if sign == "end_offset":
        proc.log_end[("audio.raw", 1)] = len(new_log)  # below 6
    run(proc, messages(new_log, partition=1, first_offset=0))
    windows = whole_stream_windows(out)
    _, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [(w.segment, w.start_frame) for w in windows] == [(0, int(s)) for s in starts]  # nothing lost
    assert proc.stats.topic_resyncs == 1 and proc.stats.replayed == 0 and proc.seeks == []
    assert proc.stats.chunks_skipped == 0 and proc.stats.duplicates == (1 if sign == "end_offset" else 0)
    assert feature_app._position(table[feature_app._offset_key("audio.raw", 1)])[0] == len(new_log)


def test_a_new_log_that_outgrew_the_old_position_is_found_by_the_gap_and_read_from_its_start(settings, monkeypatch):
    """The gateway refilled the recreated topic past the old position before the worker fetched again: the
    consumer, still at offset 6, silently skips offsets 0..5 of the new log. The sequence gap that follows makes
    the worker compare offset 5 with the record it processed there: another record, so it reads the new log
    from its start."""
    pcm = np.concatenate([pcm16(c) for c in real_clips()[8:10]])  # 20 s
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, messages(chunks[:6], partition=1))  # old log: offsets 0..5
    before = len(out.records)
    new_log = messages(chunks[6:], partition=1, first_offset=0)
    proc.log_end[("audio.raw", 1)] = len(new_log)
    proc.log_values.update({("audio.raw", 1, m.offset): m.value for m in new_log})
    run(proc, new_log[6:7])  # what the consumer fetches at its old position: chunk 12 -> a gap
    assert proc.seeks == [("audio.raw", 1, 0)] and len(out.records) == before and proc.stats.gaps == 0
    run(proc, new_log[7:8] + new_log)  # one fetched before the seek (ignored), then the new log from 0
    windows = whole_stream_windows(out)
    _, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [(w.segment, w.start_frame) for w in windows] == [(0, int(s)) for s in starts]
    assert proc.stats.topic_resyncs == 1 and proc.stats.chunks_skipped == 0


def test_a_real_gap_in_the_same_log_is_counted_not_resynchronised(settings, monkeypatch):
    pcm = pcm16(real_clips()[8])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    msgs = messages(chunks[:4] + chunks[6:], partition=1)  # chunks 4 and 5 never reached the topic
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    proc.log_end[("audio.raw", 1)] = len(msgs)
    proc.log_values.update({("audio.raw", 1, m.offset): m.value for m in msgs})
    run(proc, msgs)
    assert proc.stats.topic_resyncs == 0 and proc.seeks == []
    assert proc.stats.gaps == 1 and proc.stats.chunks_skipped == 2


def test_a_true_replay_is_still_skipped_and_chunks_lost_with_the_old_log_are_counted(settings, monkeypatch):
    pcm = pcm16(real_clips()[9])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, messages(chunks[:4]))
    proc.log_end[("audio.raw", 2)] = 4  # the same log: a restarted consumer re-reads 1..3
    run(proc, messages(chunks[1:4], first_offset=1))
    assert proc.stats.replayed == 3 and proc.stats.topic_resyncs == 0
    # now the log is replaced, and chunks 4 and 5 were in the old one only: lost with it, and counted
    run(proc, messages(chunks[6:], first_offset=0))
    assert proc.stats.topic_resyncs == 1 and proc.stats.chunks_skipped == 2 and proc.stats.gaps == 1
    assert {w.segment for w in whole_stream_windows(out)} == {0, 1}


# --------------------------------------------------------------------------- producers (issue 16.5)
def chunks_from(pcm, gateway: str, epoch: int, origin0: int, first_sequence: int = 0) -> list:
    """1 s chunks of ``pcm`` from one gateway run, made one second apart (origin_ns)."""
    from dataclasses import replace

    plain = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)), first_sequence=first_sequence)
    return [replace(c, gateway_id=gateway, epoch=epoch, origin_ns=origin0 + i * 10**9) for i, c in enumerate(plain)]


def test_a_second_gateway_for_one_machine_never_mixes_into_a_window_and_its_chunks_are_dead_lettered(
    settings, monkeypatch
):
    t0 = 1_800_000_000 * 10**9
    pcm_a, pcm_b = pcm16(real_clips()[10]), pcm16(real_clips()[11])
    a = chunks_from(pcm_a, "gw-plant", epoch=t0, origin0=t0, first_sequence=279)  # running for a while
    b = chunks_from(pcm_b, "gw-plant", epoch=t0 + 4 * 10**9, origin0=t0 + 4 * 10**9)  # same id, wiped state
    # a's first 4 chunks, then both interleaved: b (newest epoch) wins while it is live
    stream_ = a[:4] + [c for pair in zip(b[:4], a[4:8], strict=True) for c in pair]
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, messages(stream_))
    letters = [DeadLetter.from_headers(h) for _, _, _, h in dead.records]
    assert [x.reason for x in letters] == [Reason.CONFLICTING_GATEWAY] * 4
    assert [v for _, v, _, _ in dead.records] == [c.encode() for c in a[4:8]]  # the whole chunks, for inspection
    assert proc.stats.chunks_conflicting == 4 and proc.stats.takeovers == 1 and proc.stats.chunks_skipped == 0
    windows = whole_stream_windows(out)
    assert {w.segment for w in windows} == {0, 1}
    by_seg = {seg: [w for w in windows if w.segment == seg] for seg in (0, 1)}
    ref_a, _ = offline_windows(pcm_a[:64_000].astype(np.float32) / 32768, params=settings.features)
    ref_b, _ = offline_windows(pcm_b[:64_000].astype(np.float32) / 32768, params=settings.features)
    for got, ref in ((by_seg[0], ref_a), (by_seg[1], ref_b)):  # each segment is exactly one source's audio
        assert len(got) == len(ref) and max(np.abs(w.values - r).max() for w, r in zip(got, ref, strict=True)) < 1e-3


def test_a_gateway_restarted_with_fresh_state_is_not_taken_for_a_replay(settings, monkeypatch):
    """Sequences restart at 0 under a new epoch: before epochs the machine went dark ('duplicate/old')."""
    t0 = 1_800_000_000 * 10**9
    pcm = pcm16(real_clips()[12])
    first = chunks_from(pcm[:96_000], "gw-1", epoch=t0, origin0=t0, first_sequence=90)
    second = chunks_from(pcm[96_000:], "gw-1", epoch=t0 + 60 * 10**9, origin0=t0 + 60 * 10**9)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, messages(first + second))
    windows = whole_stream_windows(out)
    _, s1 = offline_windows(pcm[96_000:].astype(np.float32) / 32768, params=settings.features)
    assert [w.start_frame for w in windows if w.segment == 1] == s1.tolist()
    assert proc.stats.duplicates == 0 and proc.stats.takeovers == 1 and dead.records == []


def test_an_older_gateway_takes_the_machine_back_when_the_newer_one_went_silent(settings, monkeypatch):
    t0 = 1_800_000_000 * 10**9
    pcm = np.concatenate([pcm16(c) for c in real_clips()[13:16]])  # 30 s
    old = chunks_from(pcm, "gw-a", epoch=t0, origin0=t0)
    brief = chunks_from(pcm[:32_000], "gw-b", epoch=t0 + 10**9, origin0=t0 + 2 * 10**9)  # ran for 2 s, stopped
    stream_ = old[:2] + brief + old[2:]
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    run(proc, messages(stream_))
    conflicting = [DeadLetter.from_headers(h).reason for _, _, _, h in dead.records]
    # gw-a's chunks made within 10 s (CLAIM_TIMEOUT_S) of gw-b's last one (t0 + 3 s) are refused: 2..13
    assert len(conflicting) == 12 and set(conflicting) == {Reason.CONFLICTING_GATEWAY}
    assert proc.stats.takeovers == 2
    back = [w for w in whole_stream_windows(out) if w.segment == 2]  # from chunk 14 on, a fresh segment
    _, starts = offline_windows(pcm[14 * 16_000 :].astype(np.float32) / 32768, params=settings.features)
    assert [w.start_frame for w in back] == starts.tolist()
    last_owner = StreamWindower.from_bytes(table[machine_key("fan", "id_00")], settings.features)
    assert (last_owner.gateway_id, last_owner.epoch) == ("gw-a", t0)


# --------------------------------------------------------------------------- dead letters always fit (16.2, 16.6)
class SizeLimitedTopic(FakeTopic):
    """Refuses values over ``limit`` bytes at send time, as aiokafka's producer does over max_request_size."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.refused = 0

    async def send(self, *, key, value, partition=None, headers=None, force=False):
        from aiokafka.errors import MessageSizeTooLargeError

        if len(value) > self.limit:
            self.refused += 1
            raise MessageSizeTooLargeError(f"The message is {len(value)} bytes when serialized")
        return await super().send(key=key, value=value, partition=partition, headers=headers, force=force)


@pytest.mark.parametrize("limit", [1024 * 1024, 100])
def test_an_oversized_bad_record_is_dead_lettered_cut_down_and_the_partition_moves_on(settings, monkeypatch, limit):
    import hashlib

    pcm = pcm16(real_clips()[14])
    good = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    key = machine_key("fan", "id_00")
    huge = b"\x00" + bytes(10 * 1024 * 1024)  # 10 MB of garbage
    table, out, dead = FakeTable(), FakeTopic(), SizeLimitedTopic(limit)
    proc = processor(settings, table, out, dead, monkeypatch)
    run(
        proc,
        [Msg("audio.raw", 0, 0, key, huge), Msg("audio.raw", 0, 1, key, b"")]
        + messages(good, partition=0, first_offset=2),
    )
    letters = [DeadLetter.from_headers(h) for _, _, _, h in dead.records]
    assert [x.reason for x in letters] == [Reason.BAD_MAGIC, Reason.EMPTY_PAYLOAD]
    big = letters[0]
    assert big.original_size == len(huge) and big.sha256 == hashlib.sha256(huge).hexdigest() and big.truncated
    assert len(dead.records[0][1]) == (DeadLetter.MAX_VALUE_BYTES if limit > 100 else 0)
    assert (big.delivery_error != "") == (limit == 100)
    _, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
    assert [w.start_frame for w in whole_stream_windows(out)] == starts.tolist()


def test_health_fields_count_skipped_conflicting_and_resyncs_since_start(settings):
    ticker = feature_app._HealthTicker(settings, feature_app.StreamStats())
    ticker.stats.chunks_skipped, ticker.stats.chunks_conflicting, ticker.stats.topic_resyncs = 5, 2, 1
    first = ticker.fields(consumer_lag=3)
    assert (first["chunks_skipped"], first["chunks_conflicting"], first["topic_resyncs"]) == (5, 2, 1)
    assert all(type(first[k]) is int for k in ("chunks_skipped", "chunks_conflicting", "topic_resyncs"))
    ticker.stats.chunks_skipped += 1
    second = ticker.fields(consumer_lag=None)  # counters: a point lost on the way loses no count
    assert (second["chunks_skipped"], second["chunks_conflicting"], second["topic_resyncs"]) == (6, 2, 1)
    assert "1 topic resyncs" in ticker.stats.line() and "6 chunks skipped" in ticker.stats.line()


# --------------------------------------------------------------------------- batches (issue 19)
class HeldTopic(FakeTopic):
    """Acks only when the test resolves ``waiting``: what the table holds while windows wait for the broker."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[asyncio.Future] = []

    async def send(self, *, key, value, partition=None, headers=None, force=False):
        assert force
        self.records.append((key, value, partition, headers or []))
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        return fut


def interleaved(n_machines: int, partition: int = 1) -> tuple[list[Msg], dict[str, np.ndarray]]:
    """Chunks of ``n_machines`` machines in one partition, machine after machine per second of audio."""
    streams, pcms = [], {}
    for i in range(n_machines):
        pcm = pcm16(real_clips()[10 + i])
        pcms[f"id_{i:02d}"] = pcm
        streams.append(chunks_of(pcm, list(range(16_000, pcm.size, 16_000)), machine_id=f"id_{i:02d}"))
    order = [c for group in zip(*streams, strict=False) for c in group]
    return messages(order, partition=partition), pcms


def by_machine(out: FakeTopic) -> dict[str, list[FeatureWindow]]:
    got: dict[str, list[FeatureWindow]] = {}
    for _, v, _, _ in out.records:
        w = FeatureWindow.decode(v)
        got.setdefault(w.machine_id, []).append(w)
    return got


@pytest.mark.parametrize("size", [2, 5, 64])
def test_batches_give_the_offline_windows_of_every_machine(settings, monkeypatch, size):
    msgs, pcms = interleaved(3)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)

    async def go():
        for i in range(0, len(msgs), size):
            await proc.handle_batch(msgs[i : i + size])

    asyncio.run(go())
    got = by_machine(out)
    for mid, pcm in pcms.items():
        ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
        assert [w.start_frame for w in got[mid]] == starts.tolist()
        assert max(np.abs(w.values - r).max() for w, r in zip(got[mid], ref, strict=True)) <= 1e-3
    assert proc.stats.chunks == len(msgs) and dead.records == []
    assert table[feature_app._offset_key("audio.raw", 1)].startswith(f"{len(msgs)}:".encode())


def test_a_batch_stores_nothing_before_every_window_is_acked(settings, monkeypatch):
    msgs, _ = interleaved(2)
    table, out, dead = FakeTable(), HeldTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)

    async def go():
        task = asyncio.create_task(proc.handle_batch(msgs[:8]))
        while len(out.records) < 2:  # the batch's windows are out, none acked
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not task.done() and table == {}, "state stored before its windows were acked"
        for fut in out.waiting:
            fut.set_result(None)
        await task

    asyncio.run(go())
    assert set(table) == {
        machine_key("fan", "id_00"),
        machine_key("fan", "id_01"),
        feature_app._offset_key("audio.raw", 1),
    }


def test_a_batch_that_fails_midway_stores_nothing_and_its_replay_loses_and_repeats_nothing(settings, monkeypatch):
    msgs, pcms = interleaved(2)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    asyncio.run(proc.handle_batch(msgs[:6]))
    before = dict(table)
    broken = Msg("audio.raw", 1, 9, None, b"")  # stands in for a crash: a record handle cannot take

    async def crash(message):
        raise RuntimeError("worker killed")

    original = proc.handle
    monkeypatch.setattr(proc, "handle", lambda m: crash(m) if m is broken else original(m))
    with pytest.raises(RuntimeError):
        asyncio.run(proc.handle_batch(msgs[6:9] + [broken]))
    assert table == before  # windows of chunks 6..8 went out, their state did not: output ahead of state
    restarted = processor(settings, FakeTable(before), out, dead, monkeypatch)
    asyncio.run(restarted.handle_batch(msgs[6:]))
    got = by_machine(out)
    for mid, pcm in pcms.items():
        _, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
        assert [w.start_frame for w in got[mid]] == starts.tolist()  # none lost, none twice
    assert restarted.stats.suppressed > 0


def test_the_same_worker_continues_its_windowers_without_parsing_and_a_failed_batch_leaves_no_trace(
    settings, monkeypatch
):
    """A machine's next chunk continues the windower this worker stored (not parsed again); after a batch
    fails midway, or when the table holds a value this worker did not store, the state is parsed."""
    msgs, pcms = interleaved(2)
    table, out, dead = FakeTable(), FakeTopic(), FakeTopic()
    proc = processor(settings, table, out, dead, monkeypatch)
    parsed: list[bytes] = []
    original_from_bytes = StreamWindower.from_bytes.__func__

    def counting(cls, data, params, **kw):
        parsed.append(data)
        return original_from_bytes(cls, data, params, **kw)

    monkeypatch.setattr(StreamWindower, "from_bytes", classmethod(counting))
    asyncio.run(proc.handle_batch(msgs[:4]))
    asyncio.run(proc.handle_batch(msgs[4:6]))
    assert parsed == []  # continued in memory

    broken = Msg("audio.raw", 1, 99, None, b"")

    async def crash(message):
        raise RuntimeError("worker killed")

    original = proc.handle
    monkeypatch.setattr(proc, "handle", lambda m: crash(m) if m is broken else original(m))
    with pytest.raises(RuntimeError):
        asyncio.run(proc.handle_batch(msgs[6:8] + [broken]))  # the two windowers changed, then the batch failed
    monkeypatch.setattr(proc, "handle", original)
    asyncio.run(proc.handle_batch(msgs[6:10]))  # replayed: parsed from the stored bytes, not the changed objects
    assert len(parsed) == 2
    for key in list(table):
        table[key] = bytes(bytearray(table[key]))  # the same values, other objects (as recovered from a changelog)
    asyncio.run(proc.handle_batch(msgs[10:]))
    assert len(parsed) == 4
    got = by_machine(out)
    for mid, pcm in pcms.items():
        ref, starts = offline_windows(pcm.astype(np.float32) / 32768, params=settings.features)
        # the failed batch's windows went out twice (the same worker goes on: only a restarted one reads the
        # output back to suppress them); every window is the offline one, none lost
        assert sorted({w.start_frame for w in got[mid]}) == starts.tolist()
        for w in got[mid]:
            np.testing.assert_allclose(w.values, ref[starts.tolist().index(w.start_frame)], rtol=0, atol=1e-3)
