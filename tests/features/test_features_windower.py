"""Streaming windows: any chunking of a real clip gives exactly the offline windows; gaps, duplicates,
wrong rates and state round-trips behave as documented."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from features_helpers import chunks_of, pcm16, real_clips
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.windower import EventKind, StreamWindower, peek_state
from soundwatch.audio.windows import n_windows, offline_windows
from soundwatch.contracts import AudioChunk, ContractError, FeatureWindow, Reason
from soundwatch.params import FeatureParams

P = FeatureParams()
CLIPS = real_clips()


@cache
def offline(index: int) -> tuple[np.ndarray, np.ndarray]:
    return offline_windows(pcm16(CLIPS[index]).astype(np.float32) / 32768, params=P)


def stream(
    chunks: list[AudioChunk], windower: StreamWindower | None = None, *, roundtrip_every: int = 0
) -> tuple[list[FeatureWindow], list, StreamWindower]:
    w = windower or StreamWindower(P)
    windows, events = [], []
    for i, chunk in enumerate(chunks):
        result = w.push(chunk)
        windows += result.windows
        events += result.events
        if roundtrip_every and i % roundtrip_every == 0:
            w = StreamWindower.from_bytes(w.to_bytes(), P)
    return windows, events, w


def assert_same_as_offline(windows: list[FeatureWindow], index: int) -> None:
    ref, starts = offline(index)
    assert [w.start_frame for w in windows] == starts.tolist()
    assert len(windows) == len(ref) > 0
    diff = max(float(np.abs(w.values - r).max()) for w, r in zip(windows, ref, strict=True))
    assert diff <= 1e-3


def test_ten_seconds_give_eight_windows():
    ref, starts = offline(CLIPS.index(next(c for c in CLIPS if "fan" in c.parts)))
    assert ref.shape == (8, 128, 64) and ref.dtype == np.float32
    assert starts.tolist() == [0, 32, 64, 96, 128, 160, 192, 224]
    assert n_windows(312, P) == 8 and n_windows(63, P) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(CLIPS) - 1),
    cuts=st.lists(st.integers(1, 175_999), max_size=60),
    roundtrip_every=st.sampled_from([0, 1, 7]),
)
def test_any_chunking_streams_exactly_the_offline_windows(index, cuts, roundtrip_every):
    chunks = chunks_of(pcm16(CLIPS[index]), cuts)
    windows, events, _ = stream(chunks, roundtrip_every=roundtrip_every)
    assert events == []
    assert_same_as_offline(windows, index)
    assert all(w.segment == 0 and w.feature_params == P.canonical_json() for w in windows)
    assert all(w.values.shape == (128, 64) for w in windows)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=40))
def test_tiny_chunks_keep_memory_bounded_and_state_small(sizes):
    pcm = pcm16(CLIPS[0])[: sum(sizes)]
    cuts = np.cumsum(sizes)[:-1].tolist()
    w = StreamWindower(P)
    for chunk in chunks_of(pcm, cuts):
        w.push(chunk)
        assert w._tail.size < P.n_fft + P.hop_length
        assert w._pending.shape[1] < P.window_frames
        assert len(w.to_bytes()) < 4 * (P.n_fft + P.hop_length + 128 * P.window_frames) + 1024


def test_gap_starts_a_new_segment_and_no_window_spans_it():
    index = 3
    pcm = pcm16(CLIPS[index])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))  # 1 s chunks
    before, after = chunks[:4], chunks[6:]  # chunks 4 and 5 are lost
    windows, events, w = stream(before + after)
    assert [e.kind for e in events] == [EventKind.GAP]
    assert events[0].expected == 4 and events[0].sequence == 6 and events[0].segment == 1
    assert "2 chunk(s) missing" in str(events[0])
    seg0 = [x for x in windows if x.segment == 0]
    seg1 = [x for x in windows if x.segment == 1]
    assert len(seg0) + len(seg1) == len(windows)
    ref0, s0 = offline_windows(pcm[:64_000].astype(np.float32) / 32768, params=P)
    ref1, s1 = offline_windows(pcm[96_000:].astype(np.float32) / 32768, params=P)
    assert [x.start_frame for x in seg0] == s0.tolist() and [x.start_frame for x in seg1] == s1.tolist()
    assert max(np.abs(x.values - r).max() for x, r in zip(seg0 + seg1, [*ref0, *ref1], strict=True)) <= 1e-3
    assert w.segment == 1 and w.last_sequence == chunks[-1].sequence


def test_duplicates_and_replays_are_ignored_and_reported():
    index = 5
    pcm = pcm16(CLIPS[index])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    replayed = chunks[:5] + chunks[3:5] + [chunks[2]] + chunks[5:]  # at-least-once redelivery
    windows, events, _ = stream(replayed)
    assert [e.kind for e in events] == [EventKind.DUPLICATE] * 3
    assert [e.sequence for e in events] == [3, 4, 2] and all(e.expected == 5 for e in events)
    assert_same_as_offline(windows, index)


def test_wrong_sample_rate_raises_and_leaves_the_state_alone():
    chunks = chunks_of(pcm16(CLIPS[0]), [20_000, 40_000])
    w = StreamWindower(P)
    w.push(chunks[0])
    before = w.to_bytes()
    bad = AudioChunk("fan", "id_00", "gw-test", 44_100, 1, 0, chunks[1].samples)
    with pytest.raises(ContractError) as err:
        w.push(bad)
    assert err.value.reason is Reason.WRONG_SAMPLE_RATE and "44100" in err.value.detail
    assert w.to_bytes() == before
    other = AudioChunk("fan", "id_99", "gw-test", 16_000, 1, 0, chunks[1].samples)
    with pytest.raises(ContractError, match="id_99"):
        w.push(other)


def test_state_round_trip_mid_stream_is_exact():
    index = 7
    chunks = chunks_of(pcm16(CLIPS[index]), [12_345, 50_000, 50_700, 99_999, 130_000])
    w = StreamWindower(P)
    first, _, w = stream(chunks[:3], w)
    data = w.to_bytes()
    restored = StreamWindower.from_bytes(data, P)
    assert restored.to_bytes() == data
    assert peek_state(data)["last_sequence"] == 2
    rest_a, _, _ = stream(chunks[3:], restored)
    rest_b, _, _ = stream(chunks[3:], w)
    assert [x.encode() for x in rest_a] == [x.encode() for x in rest_b]
    assert_same_as_offline(first + rest_a, index)


def test_state_refuses_other_parameters_and_garbage():
    w = StreamWindower(P)
    w.push(chunks_of(pcm16(CLIPS[0]), [])[0])
    with pytest.raises(ContractError) as err:
        StreamWindower.from_bytes(w.to_bytes(), FeatureParams(n_mels=64))
    assert err.value.reason is Reason.FEATURE_PARAMS_MISMATCH and "n_mels" in err.value.detail
    for garbage, reason in [
        (b"", Reason.TRUNCATED),
        (b"XXXX" + bytes(8), Reason.BAD_MAGIC),
        (w.to_bytes()[:-4], Reason.LENGTH_MISMATCH),
    ]:
        with pytest.raises(ContractError) as err:
            StreamWindower.from_bytes(garbage, P)
        assert err.value.reason is reason


def test_window_metadata_times_and_origin():
    pcm = pcm16(CLIPS[2])
    chunks = chunks_of(pcm, list(range(16_000, pcm.size, 16_000)))
    windows, _, _ = stream(chunks)
    t0 = chunks[0].start_ns
    w0, w1 = windows[0], windows[1]
    assert w0.start_ns == t0  # frame 0 reads from sample 0 (its left half is padding)
    assert w0.end_ns == t0 + (63 * 512 + 512) * 62_500  # just past the last sample of frame 63
    assert w1.start_ns == t0 + (32 * 512 - 512) * 62_500
    completing = next(c for c in chunks if c.start_ns < w0.end_ns <= c.start_ns + c.n_samples * 62_500)
    assert (w0.last_sequence, w0.origin_ns) == (completing.sequence, completing.origin_ns)
    assert all(b.end_ns - a.end_ns == 32 * 512 * 62_500 for a, b in zip(windows, windows[1:], strict=False))
    assert FeatureWindow.decode(w0.encode()).values.tobytes() == w0.values.tobytes()


def _as_version_1(state: bytes) -> bytes:
    """A state as the windower wrote it before producers had epochs (format version 1)."""
    import json
    import struct

    head = struct.Struct(">3sBI")
    _, _, n = head.unpack_from(state)
    h = json.loads(state[head.size : head.size + n])
    del h["epoch"], h["owner_origin_ns"]
    raw = json.dumps(h, separators=(",", ":")).encode()
    return head.pack(b"SWW", 1, len(raw)) + raw + state[head.size + n :]


def test_a_version_1_state_migrates_and_continues_exactly():
    index = 9
    chunks = chunks_of(pcm16(CLIPS[index]), list(range(16_000, 160_000, 16_000)))
    first, _, w = stream(chunks[:4])
    old = _as_version_1(w.to_bytes())
    assert old[3] == 1 and peek_state(old)["epoch"] == 0 and peek_state(old)["last_sequence"] == 3
    migrated = StreamWindower.from_bytes(old, P)
    assert (migrated.epoch, migrated.owner_origin_ns, migrated.gateway_id) == (0, 0, "gw-test")
    rest, events, _ = stream(chunks[4:], migrated)
    assert events == []
    assert_same_as_offline(first + rest, index)
    assert migrated.to_bytes()[3] == 2  # written back in the current format


def _from(chunks: list[AudioChunk], gateway: str, epoch: int, origin0: int = 10**18) -> list[AudioChunk]:
    from dataclasses import replace

    return [replace(c, gateway_id=gateway, epoch=epoch, origin_ns=origin0 + i * 10**9) for i, c in enumerate(chunks)]


def test_a_clean_gateway_restart_continues_the_segment_and_a_wiped_one_starts_a_new_one():
    index = 11
    chunks = chunks_of(pcm16(CLIPS[index]), list(range(16_000, 160_000, 16_000)))
    run1, run2 = _from(chunks[:5], "gw", 100), _from(chunks[5:], "gw", 200, 10**18 + 5 * 10**9)
    windows, events, _ = stream(run1 + run2)  # numbers continue at 5: the same stream
    assert [(e.kind, e.new_segment, e.missing) for e in events] == [(EventKind.TAKEOVER, False, 0)]
    assert_same_as_offline(windows, index)
    wiped = _from(chunks_of(pcm16(CLIPS[index]), list(range(16_000, 160_000, 16_000))), "gw", 300, 2 * 10**18)
    w = StreamWindower(P)
    stream(run1, w)
    more, events, _ = stream(wiped, w)  # numbers restart at 0 under a newer epoch: a new stream, no loss
    assert [(e.kind, e.new_segment, e.segment) for e in events] == [(EventKind.TAKEOVER, True, 1)]
    assert [x.start_frame for x in more] == offline(index)[1].tolist() and {x.segment for x in more} == {1}
    with pytest.raises(ContractError) as err:  # the superseded run, still sending: refused, state untouched
        before = w.to_bytes()
        w.push(_from(chunks[5:6], "gw", 100, 2 * 10**18)[0])
    assert err.value.reason is Reason.CONFLICTING_GATEWAY and w.to_bytes() == before


def test_version_1_chunks_keep_the_rules_before_epochs():
    chunks = chunks_of(pcm16(CLIPS[12]), list(range(16_000, 160_000, 16_000)))
    mixed = _from(chunks[:3], "gw-a", 0) + _from(chunks[3:], "gw-b", 0)  # no epochs: one producer per machine
    windows, events, _ = stream(mixed)
    assert events == []
    assert_same_as_offline(windows, 12)
