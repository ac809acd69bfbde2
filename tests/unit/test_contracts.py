"""Message contracts: round trips (property-based) and every kind of bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from soundwatch.contracts import (
    AlertEvent,
    AlertState,
    AudioChunk,
    ContractError,
    DeadLetter,
    FeatureWindow,
    Reason,
    Score,
    json_schema,
    machine_key,
    peek_kind,
)
from soundwatch.params import FeatureParams

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
i63 = st.integers(min_value=0, max_value=2**63 - 1)
signed = st.integers(min_value=-(2**63), max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _chunk(**kw) -> AudioChunk:
    base = dict(
        machine_type="fan",
        machine_id="id_00",
        gateway_id="gw1",
        sample_rate=16000,
        sequence=7,
        start_ns=1_700_000_000_000_000_000,
        samples=np.arange(-5, 5, dtype=np.int16),
        origin_ns=42,
    )
    base.update(kw)
    return AudioChunk(**base)


def _window(**kw) -> FeatureWindow:
    base = dict(
        machine_type="pump",
        machine_id="id_02",
        gateway_id="gw1",
        segment=1,
        start_frame=32,
        start_ns=10,
        end_ns=20,
        origin_ns=15,
        last_sequence=3,
        feature_params=FeatureParams().canonical_json(),
        values=np.linspace(-100, 0, 128 * 4, dtype=np.float32).reshape(128, 4),
    )
    base.update(kw)
    return FeatureWindow(**base)


@settings(max_examples=150, deadline=None)
@given(
    mt=ids,
    mid=ids,
    gw=ids,
    sr=st.integers(1, 768_000),
    seq=i63,
    start=signed,
    origin=signed,
    pcm=hnp.arrays(np.int16, st.integers(1, 3000)),
)
def test_audio_chunk_pcm16_round_trip(mt, mid, gw, sr, seq, start, origin, pcm):
    epoch = seq // 3  # any value in [0, 2^63)
    chunk = AudioChunk(mt, mid, gw, sr, seq, start, pcm, origin, epoch=epoch)
    back = AudioChunk.decode(chunk.encode())
    assert (back.machine_type, back.machine_id, back.gateway_id) == (mt, mid, gw)
    assert (back.sample_rate, back.sequence, back.start_ns, back.origin_ns) == (sr, seq, start, origin)
    assert back.epoch == epoch and back.schema_version == 2
    assert back.samples.dtype == np.int16
    np.testing.assert_array_equal(back.samples, pcm)
    assert back.n_samples == pcm.size


@settings(max_examples=100, deadline=None)
@given(samples=hnp.arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1, 1, width=32, allow_nan=False)))
def test_audio_chunk_float32_round_trip(samples):
    back = AudioChunk.decode(_chunk(samples=samples).encode())
    assert back.samples.dtype == np.float32
    np.testing.assert_array_equal(back.samples, samples)


@settings(max_examples=100, deadline=None)
@given(
    seg=i63,
    frame=i63,
    start=signed,
    end=signed,
    origin=signed,
    last=i63,
    values=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.floats(-200, 50, width=32),
    ),
)
def test_feature_window_round_trip(seg, frame, start, end, origin, last, values):
    w = _window(
        segment=seg, start_frame=frame, start_ns=start, end_ns=end, origin_ns=origin, last_sequence=last, values=values
    )
    back = FeatureWindow.decode(w.encode())
    assert (back.segment, back.start_frame, back.start_ns, back.end_ns) == (seg, frame, start, end)
    assert (back.origin_ns, back.last_sequence) == (origin, last)
    assert FeatureParams.from_json(back.feature_params) == FeatureParams()
    np.testing.assert_array_equal(back.values, values)
    assert back.values.shape == values.shape


@settings(max_examples=100, deadline=None)
@given(mt=ids, mid=ids, mv=ids, ts=signed, score=finite, med=finite, thr=finite, anom=st.booleans())
def test_score_round_trip(mt, mid, mv, ts, score, med, thr, anom):
    s = Score(mt, mid, mv, ts, score, med, thr, anom, 3, 64, 99)
    assert Score.decode(s.encode()) == s


@settings(max_examples=100, deadline=None)
@given(
    ts=signed,
    med=finite,
    thr=finite,
    prev=st.sampled_from(AlertState),
    cur=st.sampled_from(AlertState),
    msg=st.text(max_size=200),
    extra=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=4),
)
def test_alert_event_round_trip(ts, med, thr, prev, cur, msg, extra):
    e = AlertEvent("fan", "id_00", "v3", ts, prev, cur, med, thr, msg, extra=extra)
    assert AlertEvent.decode(e.encode()) == e


def test_scores_and_alert_events_are_json_valid_against_the_published_schemas_and_old_binary_still_decodes():
    import json

    import jsonschema

    score = Score("fan", "id_00", "v0003", 1_763_900_000_123_456_789, 12.5, 11.0, 10.0, True, 2, 64, 99)
    event = AlertEvent(
        "fan",
        "id_00",
        "v0003",
        1_763_900_000_123_456_789,
        AlertState.NORMAL,
        AlertState.ALERTING,
        11.0,
        10.0,
        "fan/id_00 alerting",
        extra={"site": "hall 2"},
    )
    for kind, message in (("score", score), ("alert_event", event)):
        doc = json.loads(message.encode().decode("utf-8"))
        jsonschema.Draft202012Validator(json_schema(kind), format_checker=jsonschema.FormatChecker()).validate(doc)
        assert doc["type"] == kind and doc["time"] == "2025-11-23T12:13:20.123456789Z"
        assert type(message).decode(message.encode()) == message
        assert type(message).decode(message.encode_binary()) == message  # records older workers wrote
    bad = json.loads(score.encode())
    bad["anomalous"] = 1
    with pytest.raises(ContractError, match="anomalous"):
        Score.decode(json.dumps(bad).encode())
    with pytest.raises(ContractError) as info:
        AlertEvent.decode(score.encode())
    assert info.value.reason is Reason.WRONG_KIND


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("decode", [AudioChunk.decode, FeatureWindow.decode, Score.decode, AlertEvent.decode])
@given(garbage=st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_garbage_raises_only_contract_error(decode, garbage):
    try:
        decode(garbage)
    except ContractError as exc:
        assert isinstance(exc.reason, Reason) and exc.detail
    # decoding random bytes successfully is astronomically unlikely but not an error in itself


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 10, 40, -1, -7])
def test_truncated_bytes(cut):
    data = _chunk().encode()
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(data[:cut])
    assert info.value.reason in (Reason.TRUNCATED, Reason.LENGTH_MISMATCH, Reason.BAD_MAGIC)


def test_every_truncation_of_a_window_is_rejected():
    data = _window().encode()
    for cut in range(len(data)):
        with pytest.raises(ContractError):
            FeatureWindow.decode(data[:cut])


def test_wrong_version():
    data = bytearray(_chunk().encode())
    data[3] = 99
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(bytes(data))
    assert info.value.reason is Reason.UNSUPPORTED_VERSION
    assert "99" in info.value.detail


def test_wrong_magic_and_wrong_kind():
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(b"XX" + _chunk().encode()[2:])
    assert info.value.reason is Reason.BAD_MAGIC
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(_window().encode())
    assert info.value.reason is Reason.WRONG_KIND


def _header_offset_of_format(data: bytes) -> int:
    # preamble(4) + 3 length-prefixed strings, then IQqq (4+8+8+8), version 2: + Q epoch, then the format byte
    pos = 4
    for _ in range(3):
        (n,) = struct.unpack_from(">H", data, pos)
        pos += 2 + n
    return pos + (28 if data[3] == 1 else 36)


def test_wrong_dtype_code():
    data = bytearray(_chunk().encode())
    data[_header_offset_of_format(bytes(data))] = 9
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(bytes(data))
    assert info.value.reason is Reason.UNSUPPORTED_DTYPE


def test_wrong_dtype_on_construction():
    with pytest.raises(ContractError) as info:
        _chunk(samples=np.zeros(10, dtype=np.float64))
    assert info.value.reason is Reason.UNSUPPORTED_DTYPE
    with pytest.raises(ContractError) as info:
        _window(values=np.zeros((4, 4), dtype=np.float64))
    assert info.value.reason is Reason.UNSUPPORTED_DTYPE


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(bad):
    samples = np.zeros(100, dtype=np.float32)
    samples[17] = bad
    with pytest.raises(ContractError) as info:
        _chunk(samples=samples)
    assert info.value.reason is Reason.NON_FINITE
    # and on the wire: patch a finite encoded chunk with a NaN sample
    good = _chunk(samples=np.zeros(100, dtype=np.float32)).encode()
    patched = good[:-4] + struct.pack(">f", bad)
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(patched)
    assert info.value.reason is Reason.NON_FINITE


def test_non_finite_features_on_the_wire():
    good = _window().encode()
    patched = good[:-4] + struct.pack(">f", float("nan"))
    with pytest.raises(ContractError) as info:
        FeatureWindow.decode(patched)
    assert info.value.reason is Reason.NON_FINITE


def test_zero_length_payload():
    with pytest.raises(ContractError) as info:
        _chunk(samples=np.zeros(0, dtype=np.int16))
    assert info.value.reason is Reason.EMPTY_PAYLOAD
    data = _chunk(samples=np.zeros(1, dtype=np.int16)).encode()
    zeroed = data[:-6] + struct.pack(">I", 0)  # declare 0 samples, drop the payload
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(zeroed)
    assert info.value.reason is Reason.EMPTY_PAYLOAD


def test_header_payload_length_mismatch():
    data = _chunk(samples=np.zeros(10, dtype=np.int16)).encode()
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(data[:-2])  # header says 10 samples, 9 follow
    assert info.value.reason is Reason.LENGTH_MISMATCH
    with pytest.raises(ContractError) as info:
        AudioChunk.decode(data + b"\x00\x00")  # one sample too many
    assert info.value.reason is Reason.TRAILING_BYTES


@pytest.mark.parametrize(
    "field,value",
    [("machine_id", ""), ("machine_id", "a b"), ("machine_type", "x/y"), ("sample_rate", 0), ("sequence", -1)],
)
def test_invalid_header_fields(field, value):
    with pytest.raises(ContractError) as info:
        _chunk(**{field: value})
    assert info.value.reason is Reason.INVALID_FIELD


def test_score_rejects_non_finite():
    with pytest.raises(ContractError) as info:
        Score("fan", "id_00", "v1", 0, float("nan"), 0.0, 1.0, False)
    assert info.value.reason is Reason.NON_FINITE


def test_peek_kind_and_machine_key():
    assert peek_kind(_chunk().encode()).name == "AUDIO_CHUNK"
    assert peek_kind(_window().encode()).name == "FEATURE_WINDOW"
    with pytest.raises(ContractError):
        peek_kind(b"SW")
    assert machine_key("fan", "id_00") == b"fan/id_00"
    with pytest.raises(ContractError):
        machine_key("fan", "id 00")


def test_dead_letter_headers_round_trip():
    try:
        AudioChunk.decode(b"nonsense")
    except ContractError as exc:
        letter = DeadLetter.from_error(exc, stage="features", topic="audio.raw", partition=2, offset=99)
    back = DeadLetter.from_headers(letter.headers())
    assert back == letter
    assert back.reason is Reason.BAD_MAGIC


def _v1_chunk_bytes(samples: np.ndarray) -> bytes:
    """An audio chunk exactly as soundwatch wrote it before version 2 (no epoch), built field by field."""

    def string(text: str) -> bytes:
        return struct.pack(">H", len(text)) + text.encode()

    head = b"SW" + bytes([1, 1]) + string("fan") + string("id_00") + string("gw-old")
    fields = struct.pack(">IQqqBI", 16_000, 41, 1_700_000_000_000_000_000, 123, 1, samples.size)
    return head + fields + samples.astype(">i2").tobytes()


def test_version_1_chunks_still_decode_with_epoch_0():
    samples = np.array([1, -2, 300, -32768], dtype=np.int16)
    chunk = AudioChunk.decode(_v1_chunk_bytes(samples))
    assert chunk.schema_version == 1 and chunk.epoch == 0
    assert (chunk.machine_id, chunk.gateway_id, chunk.sequence, chunk.origin_ns) == ("id_00", "gw-old", 41, 123)
    np.testing.assert_array_equal(chunk.samples, samples)
    assert AudioChunk.decode(chunk.encode()).schema_version == 2  # re-encoded as the newest version
    with pytest.raises(ContractError) as info:
        _chunk(epoch=-1)
    assert info.value.reason is Reason.INVALID_FIELD


def test_dead_letter_fit_bounds_the_value_and_records_size_and_hash():
    import hashlib

    letter = DeadLetter(Reason.BAD_MAGIC, "not a chunk", "features", "audio.raw", 3, 1234)
    huge = bytes(range(256)) * (10 * 1024 * 1024 // 256)  # 10 MB
    fitted, key, value = letter.fit(b"k" * 5000, huge)
    assert len(value) == DeadLetter.MAX_VALUE_BYTES and value == huge[: DeadLetter.MAX_VALUE_BYTES]
    assert key is not None and len(key) == DeadLetter.MAX_KEY_BYTES
    assert fitted.truncated and fitted.original_size == len(huge)
    assert fitted.sha256 == hashlib.sha256(huge).hexdigest()
    assert sum(len(k) + len(v) for k, v in fitted.headers()) < 8 * 1024
    assert DeadLetter.from_headers(fitted.headers()) == fitted
    small, _, same = letter.fit(None, b"abc")
    assert same == b"abc" and not small.truncated and small.original_size == 3
    empty, _, nothing = letter.fit(None, None)
    assert nothing == b"" and empty.original_size == 0
    bare = fitted.without_value(ValueError("too large"))
    back = DeadLetter.from_headers(bare.headers())
    assert back.delivery_error == "ValueError: too large" and back.truncated and back.sha256 == fitted.sha256


def test_audio_as_float32_scaling():
    chunk = _chunk(samples=np.array([-32768, 0, 16384], dtype=np.int16))
    np.testing.assert_allclose(chunk.as_float32(), [-1.0, 0.0, 0.5])
