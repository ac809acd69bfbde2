"""Message contracts: versioned binary encoding and validation.

Every message starts with the same 4-byte preamble::

    magic  b"SW"   2 bytes
    kind   u8      1 = audio chunk, 2 = feature window, 3 = score, 4 = alert event
    version u8     schema version of that kind (audio chunk 2, the others 1)

followed by the kind's fields in network byte order. Strings are UTF-8 with a
u16 length prefix. Decoding anything malformed raises :class:`ContractError`,
whose ``reason`` is a short stable code a dead-letter record can carry.

Versions: a decoder reads every version it lists; encoders write the newest. Audio chunk
version 2 adds the gateway's ``epoch`` (version 1 chunks decode with ``epoch = 0``), so
upgrade the feature workers before the gateways.

Scores and alert events (the ``scores`` and ``alerts`` topics) are read outside soundwatch (a CMMS,
Kafka Connect), so they are UTF-8 JSON objects described by the JSON Schemas published in
``soundwatch/schemas/`` (``score.schema.json``, ``alert_event.schema.json``); their decoders still
read the binary form older workers wrote.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

MAGIC = b"SW"
_PREAMBLE = struct.Struct(">2sBB")
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class Reason(str, Enum):
    """Why a message was rejected. Stable codes: dashboards and DLQ consumers group by them."""

    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    WRONG_KIND = "wrong_kind"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_DTYPE = "unsupported_dtype"
    LENGTH_MISMATCH = "length_mismatch"
    EMPTY_PAYLOAD = "empty_payload"
    NON_FINITE = "non_finite"
    INVALID_FIELD = "invalid_field"
    TRAILING_BYTES = "trailing_bytes"
    # raised by stages, not by decoding:
    WRONG_SAMPLE_RATE = "wrong_sample_rate"
    FEATURE_PARAMS_MISMATCH = "feature_params_mismatch"
    UNKNOWN_MACHINE_TYPE = "unknown_machine_type"
    CONFLICTING_GATEWAY = "conflicting_gateway"  # another gateway (newer epoch) owns the machine right now
    UNDELIVERABLE = "undeliverable"  # the broker refused a stage's output record permanently (e.g. too large)


class ContractError(ValueError):
    """A message violates its contract. ``reason`` is a :class:`Reason`, ``detail`` says what exactly."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class MessageKind(IntEnum):
    AUDIO_CHUNK = 1
    FEATURE_WINDOW = 2
    SCORE = 3
    ALERT_EVENT = 4


class SampleFormat(IntEnum):
    PCM16 = 1
    FLOAT32 = 2


_DTYPES: dict[SampleFormat, np.dtype] = {
    SampleFormat.PCM16: np.dtype(">i2"),
    SampleFormat.FLOAT32: np.dtype(">f4"),
}


class _Writer:
    def __init__(self, kind: MessageKind, version: int) -> None:
        self._parts: list[bytes] = [_PREAMBLE.pack(MAGIC, int(kind), version)]

    def pack(self, fmt: str, *values: object) -> None:
        self._parts.append(struct.pack(">" + fmt, *values))

    def string(self, value: str) -> None:
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ContractError(Reason.INVALID_FIELD, f"string of {len(raw)} bytes exceeds 65535")
        self._parts.append(struct.pack(">H", len(raw)) + raw)

    def raw(self, data: bytes) -> None:
        self._parts.append(data)

    def bytes(self) -> bytes:
        return b"".join(self._parts)


class _Reader:
    def __init__(self, data: bytes, kind: MessageKind, supported: tuple[int, ...]) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ContractError(Reason.INVALID_FIELD, f"expected bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0
        magic, got_kind, version = self.unpack("2sBB")
        if magic != MAGIC:
            raise ContractError(Reason.BAD_MAGIC, f"first bytes {magic!r} are not {MAGIC!r}: not a soundwatch message")
        if got_kind != kind:
            name = MessageKind(got_kind).name if got_kind in MessageKind._value2member_map_ else str(got_kind)
            raise ContractError(Reason.WRONG_KIND, f"expected a {kind.name} message, got kind {name}")
        if version not in supported:
            raise ContractError(
                Reason.UNSUPPORTED_VERSION,
                f"{kind.name} schema version {version} is not supported (supported: {list(supported)}); "
                "upgrade soundwatch on this side",
            )
        self.version = version

    def unpack(self, fmt: str) -> tuple:
        s = struct.Struct(">" + fmt)
        if self._pos + s.size > len(self._data):
            raise ContractError(
                Reason.TRUNCATED, f"need {s.size} bytes at offset {self._pos}, only {len(self._data) - self._pos} left"
            )
        values = s.unpack_from(self._data, self._pos)
        self._pos += s.size
        return values

    def string(self, name: str) -> str:
        (n,) = self.unpack("H")
        raw = self.take(n, name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContractError(Reason.INVALID_FIELD, f"{name} is not valid UTF-8") from exc

    def take(self, n: int, name: str) -> bytes:
        if self._pos + n > len(self._data):
            raise ContractError(
                Reason.LENGTH_MISMATCH,
                f"{name} declares {n} bytes but only {len(self._data) - self._pos} follow",
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise ContractError(
                Reason.TRAILING_BYTES, f"{len(self._data) - self._pos} unexpected bytes after the declared payload"
            )


def _check_id(name: str, value: str) -> None:
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ContractError(
            Reason.INVALID_FIELD,
            f"{name}={value!r} must be 1-128 chars of letters, digits, '_', '.', '-' starting with a letter or digit",
        )


SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def json_schema(kind: str) -> dict[str, Any]:
    """The published JSON Schema of a JSON message kind (``"score"`` or ``"alert_event"``)."""
    return json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())


def _iso_time(timestamp_ns: int) -> str | None:
    """RFC 3339 UTC time of ``timestamp_ns`` for readers without a nanosecond clock; None if out of range."""
    try:
        moment = datetime.fromtimestamp(timestamp_ns // 1_000_000_000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{timestamp_ns % 1_000_000_000:09d}Z"


def _json_message(kind: str, version: int, fields: dict[str, Any]) -> bytes:
    out: dict[str, Any] = {"type": kind, "version": version, **fields}
    time_text = _iso_time(fields["timestamp_ns"])
    if time_text is not None:
        out["time"] = time_text
    return json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _json_fields(data: bytes, kind: str, versions: tuple[int, ...], types: dict[str, type | tuple]) -> dict[str, Any]:
    """The fields of a JSON message of ``kind``, each checked against ``types``; ContractError otherwise."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ContractError(Reason.INVALID_FIELD, f"not a JSON {kind} message: {exc}") from None
    if not isinstance(doc, dict):
        raise ContractError(Reason.INVALID_FIELD, f"a JSON {kind} message is an object, not {type(doc).__name__}")
    if doc.get("type") != kind:
        raise ContractError(Reason.WRONG_KIND, f"JSON message type {doc.get('type')!r} is not {kind!r}")
    if doc.get("version") not in versions:
        raise ContractError(Reason.UNSUPPORTED_VERSION, f"{kind} version {doc.get('version')!r} not in {versions}")
    out: dict[str, Any] = {}
    for name, kinds in types.items():
        value = doc.get(name)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in _as_tuple(kinds))
        if not ok:
            raise ContractError(Reason.INVALID_FIELD, f"{kind} field {name!r} is {value!r}, expected {kinds}")
        out[name] = float(value) if kinds == (int, float) else value
    return out


def _as_tuple(kinds: type | tuple) -> tuple:
    return kinds if isinstance(kinds, tuple) else (kinds,)


_NUMBER = (int, float)


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ContractError(Reason.NON_FINITE, f"{name} is {value}")


@dataclass(frozen=True, eq=False)
class AudioChunk:
    """A contiguous block of one machine's audio, as a gateway publishes it to ``audio.raw``.

    ``sequence`` is per machine and increases by one per chunk; a jump is a gap.
    ``samples`` is mono, int16 (PCM16, the default on the wire) or float32 in [-1, 1].
    ``origin_ns`` is the wall-clock time the gateway produced the chunk (for latency).
    ``epoch`` identifies one run of the gateway (set at its start, larger for a later start;
    0 = unknown, a version 1 chunk): ``(gateway_id, epoch)`` is the producer whose ``sequence``
    numbers count up without reuse. See :mod:`features.windower` for how producers are ranked.
    """

    KIND: ClassVar[MessageKind] = MessageKind.AUDIO_CHUNK
    VERSION: ClassVar[int] = 2

    machine_type: str
    machine_id: str
    gateway_id: str
    sample_rate: int
    sequence: int
    start_ns: int
    samples: np.ndarray
    origin_ns: int = 0
    schema_version: int = 2
    epoch: int = 0

    def __post_init__(self) -> None:
        for name in ("machine_type", "machine_id", "gateway_id"):
            _check_id(name, getattr(self, name))
        if not (0 <= self.epoch < 2**63):
            raise ContractError(Reason.INVALID_FIELD, f"epoch={self.epoch} must be in [0, 2^63)")
        if not (0 < self.sample_rate <= 768_000):
            raise ContractError(Reason.INVALID_FIELD, f"sample_rate={self.sample_rate} Hz is outside 1..768000")
        if not (0 <= self.sequence < 2**63):
            raise ContractError(Reason.INVALID_FIELD, f"sequence={self.sequence} must be in [0, 2^63)")
        samples = np.asarray(self.samples)
        if samples.ndim != 1:
            raise ContractError(Reason.INVALID_FIELD, f"samples must be mono (1-D), got shape {samples.shape}")
        if samples.size == 0:
            raise ContractError(Reason.EMPTY_PAYLOAD, "an audio chunk needs at least one sample")
        if samples.dtype == np.int16:
            pass
        elif samples.dtype == np.float32:
            if not np.isfinite(samples).all():
                bad = int((~np.isfinite(samples)).sum())
                raise ContractError(Reason.NON_FINITE, f"{bad} of {samples.size} samples are NaN or inf")
        else:
            raise ContractError(Reason.UNSUPPORTED_DTYPE, f"samples dtype {samples.dtype} is not int16 or float32")
        object.__setattr__(self, "samples", samples)

    @property
    def n_samples(self) -> int:
        return int(self.samples.size)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate

    @property
    def sample_format(self) -> SampleFormat:
        return SampleFormat.PCM16 if self.samples.dtype == np.int16 else SampleFormat.FLOAT32

    def as_float32(self) -> np.ndarray:
        """Samples as float32 in [-1, 1] (PCM16 scaled by 1/32768)."""
        if self.samples.dtype == np.int16:
            return self.samples.astype(np.float32) / np.float32(32768.0)
        return self.samples.astype(np.float32, copy=False)

    def encode(self) -> bytes:
        w = _Writer(self.KIND, self.VERSION)
        w.string(self.machine_type)
        w.string(self.machine_id)
        w.string(self.gateway_id)
        fmt = self.sample_format
        w.pack(
            "IQqqQBI",
            self.sample_rate,
            self.sequence,
            self.start_ns,
            self.origin_ns,
            self.epoch,
            int(fmt),
            self.n_samples,
        )
        w.raw(self.samples.astype(_DTYPES[fmt], copy=False).tobytes())
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> AudioChunk:
        """Versions 1 (no epoch: read as 0) and 2 (``epoch`` after ``origin_ns``)."""
        r = _Reader(data, cls.KIND, (1, 2))
        machine_type = r.string("machine_type")
        machine_id = r.string("machine_id")
        gateway_id = r.string("gateway_id")
        if r.version == 1:
            sample_rate, sequence, start_ns, origin_ns, fmt_code, n = r.unpack("IQqqBI")
            epoch = 0
        else:
            sample_rate, sequence, start_ns, origin_ns, epoch, fmt_code, n = r.unpack("IQqqQBI")
        if fmt_code not in SampleFormat._value2member_map_:
            raise ContractError(Reason.UNSUPPORTED_DTYPE, f"sample format code {fmt_code} (known: 1=PCM16, 2=FLOAT32)")
        fmt = SampleFormat(fmt_code)
        if n == 0:
            raise ContractError(Reason.EMPTY_PAYLOAD, "header declares 0 samples")
        dtype = _DTYPES[fmt]
        payload = r.take(n * dtype.itemsize, f"payload of {n} {fmt.name} samples")
        r.finish()
        native = np.int16 if fmt is SampleFormat.PCM16 else np.float32
        samples = np.frombuffer(payload, dtype=dtype).astype(native)
        return cls(
            machine_type=machine_type,
            machine_id=machine_id,
            gateway_id=gateway_id,
            sample_rate=sample_rate,
            sequence=sequence,
            start_ns=start_ns,
            samples=samples,
            origin_ns=origin_ns,
            schema_version=r.version,
            epoch=epoch,
        )


@dataclass(frozen=True, eq=False)
class FeatureWindow:
    """One model input: ``values`` float32 [n_mels, frames] log-mel dB of one machine.

    ``start_frame`` counts frames since the start of the machine's current segment
    (``segment`` increases whenever a sequence gap resets the stream state), so
    ``(segment, start_frame)`` identifies a window. ``feature_params`` is the
    canonical JSON of :class:`soundwatch.params.FeatureParams`.
    """

    KIND: ClassVar[MessageKind] = MessageKind.FEATURE_WINDOW
    VERSION: ClassVar[int] = 1

    machine_type: str
    machine_id: str
    gateway_id: str
    segment: int
    start_frame: int
    start_ns: int
    end_ns: int
    origin_ns: int
    last_sequence: int
    feature_params: str
    values: np.ndarray
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name in ("machine_type", "machine_id", "gateway_id"):
            _check_id(name, getattr(self, name))
        values = np.asarray(self.values)
        if values.dtype != np.float32:
            raise ContractError(Reason.UNSUPPORTED_DTYPE, f"values dtype {values.dtype} is not float32")
        if values.ndim != 2 or 0 in values.shape:
            raise ContractError(Reason.INVALID_FIELD, f"values must be non-empty [n_mels, frames], got {values.shape}")
        if not np.isfinite(values).all():
            bad = int((~np.isfinite(values)).sum())
            raise ContractError(Reason.NON_FINITE, f"{bad} of {values.size} feature values are NaN or inf")
        if self.segment < 0 or self.start_frame < 0 or self.last_sequence < 0:
            raise ContractError(Reason.INVALID_FIELD, "segment, start_frame and last_sequence must be >= 0")
        object.__setattr__(self, "values", values)

    @property
    def n_mels(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.values.shape[1])

    def encode(self) -> bytes:
        w = _Writer(self.KIND, self.VERSION)
        w.string(self.machine_type)
        w.string(self.machine_id)
        w.string(self.gateway_id)
        w.string(self.feature_params)
        w.pack(
            "QQqqqQBHH",
            self.segment,
            self.start_frame,
            self.start_ns,
            self.end_ns,
            self.origin_ns,
            self.last_sequence,
            2,
            self.n_mels,
            self.n_frames,
        )
        w.raw(self.values.astype(">f4", copy=False).tobytes())
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> FeatureWindow:
        r = _Reader(data, cls.KIND, (1,))
        machine_type = r.string("machine_type")
        machine_id = r.string("machine_id")
        gateway_id = r.string("gateway_id")
        params = r.string("feature_params")
        segment, start_frame, start_ns, end_ns, origin_ns, last_seq, fmt_code, n_mels, n_frames = r.unpack("QQqqqQBHH")
        if fmt_code != SampleFormat.FLOAT32:
            raise ContractError(Reason.UNSUPPORTED_DTYPE, f"feature values format code {fmt_code}, expected 2=FLOAT32")
        if n_mels == 0 or n_frames == 0:
            raise ContractError(Reason.EMPTY_PAYLOAD, f"header declares shape [{n_mels}, {n_frames}]")
        payload = r.take(n_mels * n_frames * 4, f"payload of [{n_mels}, {n_frames}] float32")
        r.finish()
        values = np.frombuffer(payload, dtype=">f4").astype(np.float32).reshape(n_mels, n_frames)
        return cls(
            machine_type=machine_type,
            machine_id=machine_id,
            gateway_id=gateway_id,
            segment=segment,
            start_frame=start_frame,
            start_ns=start_ns,
            end_ns=end_ns,
            origin_ns=origin_ns,
            last_sequence=last_seq,
            feature_params=params,
            values=values,
            schema_version=r.version,
        )


@dataclass(frozen=True)
class Score:
    """A window's anomaly score as the scoring worker computed it (high = anomalous)."""

    KIND: ClassVar[MessageKind] = MessageKind.SCORE
    VERSION: ClassVar[int] = 1

    machine_type: str
    machine_id: str
    model_version: str
    timestamp_ns: int
    score: float
    score_median: float
    threshold: float
    anomalous: bool
    segment: int = 0
    start_frame: int = 0
    origin_ns: int = 0
    schema_version: int = 1

    def __post_init__(self) -> None:
        for name in ("machine_type", "machine_id", "model_version"):
            _check_id(name, getattr(self, name))
        for name in ("score", "score_median", "threshold"):
            _check_finite(name, getattr(self, name))

    JSON_TYPES: ClassVar[dict[str, type | tuple]] = {
        "machine_type": str,
        "machine_id": str,
        "model_version": str,
        "timestamp_ns": int,
        "score": _NUMBER,
        "score_median": _NUMBER,
        "threshold": _NUMBER,
        "anomalous": bool,
        "segment": int,
        "start_frame": int,
        "origin_ns": int,
    }

    def encode(self) -> bytes:
        """UTF-8 JSON (``soundwatch/schemas/score.schema.json``)."""
        return _json_message("score", self.VERSION, {k: getattr(self, k) for k in self.JSON_TYPES})

    def encode_binary(self) -> bytes:
        """The binary form workers before the JSON schema wrote (still decoded)."""
        w = _Writer(self.KIND, self.VERSION)
        w.string(self.machine_type)
        w.string(self.machine_id)
        w.string(self.model_version)
        w.pack(
            "qdddBQQq",
            self.timestamp_ns,
            self.score,
            self.score_median,
            self.threshold,
            int(self.anomalous),
            self.segment,
            self.start_frame,
            self.origin_ns,
        )
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> Score:
        if data[:1] == b"{":
            return cls(**_json_fields(data, "score", (1,), cls.JSON_TYPES))
        r = _Reader(data, cls.KIND, (1,))
        mt, mid, mv = r.string("machine_type"), r.string("machine_id"), r.string("model_version")
        ts, score, med, thr, anom, seg, frame, origin = r.unpack("qdddBQQq")
        r.finish()
        if anom not in (0, 1):
            raise ContractError(Reason.INVALID_FIELD, f"anomalous flag is {anom}, expected 0 or 1")
        return cls(mt, mid, mv, ts, score, med, thr, bool(anom), seg, frame, origin, r.version)


class AlertState(str, Enum):
    NORMAL = "normal"
    ALERTING = "alerting"


@dataclass(frozen=True)
class AlertEvent:
    """A change of a machine's alert state, published to the ``alerts`` topic."""

    KIND: ClassVar[MessageKind] = MessageKind.ALERT_EVENT
    VERSION: ClassVar[int] = 1

    machine_type: str
    machine_id: str
    model_version: str
    timestamp_ns: int
    previous: AlertState
    current: AlertState
    score_median: float
    threshold: float
    message: str = ""
    schema_version: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("machine_type", "machine_id", "model_version"):
            _check_id(name, getattr(self, name))
        for name in ("score_median", "threshold"):
            _check_finite(name, getattr(self, name))
        object.__setattr__(self, "previous", AlertState(self.previous))
        object.__setattr__(self, "current", AlertState(self.current))

    JSON_TYPES: ClassVar[dict[str, type | tuple]] = {
        "machine_type": str,
        "machine_id": str,
        "model_version": str,
        "timestamp_ns": int,
        "previous": str,
        "current": str,
        "score_median": _NUMBER,
        "threshold": _NUMBER,
        "message": str,
        "extra": dict,
    }

    def encode(self) -> bytes:
        """UTF-8 JSON (``soundwatch/schemas/alert_event.schema.json``)."""
        fields = {k: getattr(self, k) for k in self.JSON_TYPES}
        fields["previous"], fields["current"] = self.previous.value, self.current.value
        return _json_message("alert_event", self.VERSION, fields)

    def encode_binary(self) -> bytes:
        """The binary form workers before the JSON schema wrote (still decoded)."""
        w = _Writer(self.KIND, self.VERSION)
        for value in (self.machine_type, self.machine_id, self.model_version):
            w.string(value)
        w.pack("qdd", self.timestamp_ns, self.score_median, self.threshold)
        w.string(self.previous.value)
        w.string(self.current.value)
        w.string(self.message)
        w.pack("H", len(self.extra))
        for key, value in sorted(self.extra.items()):
            w.string(key)
            w.string(value)
        return w.bytes()

    @classmethod
    def decode(cls, data: bytes) -> AlertEvent:
        if data[:1] == b"{":
            fields = _json_fields(data, "alert_event", (1,), cls.JSON_TYPES)
            for name in ("previous", "current"):
                if fields[name] not in AlertState._value2member_map_:
                    raise ContractError(
                        Reason.INVALID_FIELD,
                        f"{name} state {fields[name]!r} is not one of {[s.value for s in AlertState]}",
                    )
            extra = fields["extra"]
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
                raise ContractError(Reason.INVALID_FIELD, "alert_event extra must map strings to strings")
            return cls(**fields)
        r = _Reader(data, cls.KIND, (1,))
        mt, mid, mv = r.string("machine_type"), r.string("machine_id"), r.string("model_version")
        ts, med, thr = r.unpack("qdd")
        states = []
        for name in ("previous", "current"):
            text = r.string(name)
            try:
                states.append(AlertState(text))
            except ValueError as exc:
                raise ContractError(
                    Reason.INVALID_FIELD, f"{name} state {text!r} is not one of {[s.value for s in AlertState]}"
                ) from exc
        message = r.string("message")
        (n_extra,) = r.unpack("H")
        extra = {r.string("extra key"): r.string("extra value") for _ in range(n_extra)}
        r.finish()
        return cls(mt, mid, mv, ts, states[0], states[1], med, thr, message, r.version, extra)


def peek_kind(data: bytes) -> MessageKind:
    """The kind of a message, from its preamble (raises :class:`ContractError` on garbage)."""
    if len(data) < _PREAMBLE.size:
        raise ContractError(Reason.TRUNCATED, f"{len(data)} bytes is shorter than the 4-byte preamble")
    magic, kind, _ = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ContractError(Reason.BAD_MAGIC, f"first bytes {magic!r} are not {MAGIC!r}")
    if kind not in MessageKind._value2member_map_:
        raise ContractError(Reason.WRONG_KIND, f"unknown message kind {kind}")
    return MessageKind(kind)


@dataclass(frozen=True)
class DeadLetter:
    """Why a record was set aside. Sent to the dead-letter topic with the original bytes as value.

    A dead letter must always fit, or a huge bad record would block its partition forever:
    :meth:`fit` cuts the value to :attr:`MAX_VALUE_BYTES` (and the key to :attr:`MAX_KEY_BYTES`)
    and records the original value's size and SHA-256, so the original can still be identified.
    ``delivery_error`` says why even that copy could not be delivered, when a stage had to fall
    back to a letter without the value (see :meth:`without_value`).
    """

    MAX_VALUE_BYTES: ClassVar[int] = 512 * 1024  # under any producer's max request size (aiokafka: 1 MB)
    MAX_KEY_BYTES: ClassVar[int] = 1024

    reason: Reason
    detail: str
    stage: str
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    original_size: int = -1  # bytes of the original value (-1: not recorded)
    sha256: str = ""  # hex digest of the original value
    truncated: bool = False  # the letter's value is only the first MAX_VALUE_BYTES of the original (or empty)
    delivery_error: str = ""

    def fit(self, key: bytes | None, value: bytes | None) -> tuple[DeadLetter, bytes | None, bytes]:
        """``(letter, key, value)`` ready to send: sizes bounded, original size and hash in the letter."""
        value = bytes(value or b"")
        cut = len(value) > self.MAX_VALUE_BYTES
        letter = replace(
            self, original_size=len(value), sha256=hashlib.sha256(value).hexdigest(), truncated=self.truncated or cut
        )
        if key is not None and len(key) > self.MAX_KEY_BYTES:
            key = bytes(key[: self.MAX_KEY_BYTES])
        return letter, key, value[: self.MAX_VALUE_BYTES]

    def without_value(self, error: BaseException | str) -> DeadLetter:
        """This letter for sending with an empty value, after ``error`` refused the fitted one."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return replace(self, truncated=True, delivery_error=text[:1024])

    def headers(self) -> list[tuple[str, bytes]]:
        out = [
            ("sw-reason", self.reason.value.encode()),
            ("sw-detail", self.detail.encode("utf-8", "replace")[:4096]),
            ("sw-stage", self.stage.encode()),
            ("sw-source-topic", self.source_topic.encode()),
            ("sw-source-partition", str(self.source_partition).encode()),
            ("sw-source-offset", str(self.source_offset).encode()),
            ("sw-original-size", str(self.original_size).encode()),
            ("sw-sha256", self.sha256.encode()),
            ("sw-truncated", b"1" if self.truncated else b"0"),
        ]
        if self.delivery_error:
            out.append(("sw-delivery-error", self.delivery_error.encode("utf-8", "replace")[:1024]))
        return out

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes]] | None) -> DeadLetter:
        h = {k: v.decode("utf-8", "replace") for k, v in (headers or [])}
        if "sw-reason" not in h:
            raise ContractError(Reason.INVALID_FIELD, "record has no sw-reason header: not a dead letter")
        return cls(
            reason=Reason(h["sw-reason"]),
            detail=h.get("sw-detail", ""),
            stage=h.get("sw-stage", ""),
            source_topic=h.get("sw-source-topic", ""),
            source_partition=int(h.get("sw-source-partition", "-1")),
            source_offset=int(h.get("sw-source-offset", "-1")),
            original_size=int(h.get("sw-original-size", "-1")),
            sha256=h.get("sw-sha256", ""),
            truncated=h.get("sw-truncated", "0") == "1",
            delivery_error=h.get("sw-delivery-error", ""),
        )

    @classmethod
    def from_error(
        cls, error: ContractError, stage: str, topic: str = "", partition: int = -1, offset: int = -1
    ) -> DeadLetter:
        return cls(error.reason, error.detail, stage, topic, partition, offset)


def machine_key(machine_type: str, machine_id: str) -> bytes:
    """Kafka record key of a machine: ``b"<type>/<id>"`` — unique plant-wide, stable across restarts.

    All of a machine's records share the key, so they land on one partition in order.
    """
    _check_id("machine_type", machine_type)
    _check_id("machine_id", machine_id)
    return f"{machine_type}/{machine_id}".encode()
