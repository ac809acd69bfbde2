"""Per-machine streaming windows: audio chunks in, :class:`FeatureWindow` messages out. Pure, no Kafka.

One :class:`StreamWindower` per machine. Fed that machine's chunks in sequence order, in any sizes,
it emits exactly the windows :func:`soundwatch.audio.windows.offline_windows` computes for the concatenated
audio of the current *segment*: same count, same start frames, values equal to within float64
rounding (the same code computes both).

Producers. A machine's chunks come from a *producer*: ``(gateway_id, epoch)``, where the
gateway picks a new, larger ``epoch`` at every start (:class:`~ingest.sequences.SequenceStore`).
Within one producer, sequence numbers (+1 per chunk) decide what a chunk means:

* ``last + 1`` — continues the segment.
* ``> last + 1`` — a **gap**: chunks were lost (:attr:`StreamEvent.missing` of them). The state
  is reset and a new segment starts (``segment + 1``, frames counted from 0 again), so no window
  spans the gap. Reported as an event.
* ``<= last`` — a **duplicate** or a replay (at-least-once delivery, a restarted worker): ignored,
  no windows, reported as an event.

Between producers the policy is **the newest epoch wins**:

* a chunk of a *newer* producer (larger epoch) **takes over** the machine: a restarted gateway, a
  gateway whose state directory was wiped (numbers restart at 0), a replacement gateway. A new
  segment starts — two sources are never mixed into one window — unless it is the same gateway
  id continuing at ``last + 1`` (a clean restart). Not a loss: reported as a takeover event.
* a chunk of an *older* producer while the owner is live is **conflicting**: two gateways claim
  the machine. :meth:`StreamWindower.push` raises ``ContractError(CONFLICTING_GATEWAY)``
  without touching the state, and the app dead-letters the chunk.
* the owner counts as live until a chunk of the other producer was made ``claim_timeout_s``
  (default :data:`CLAIM_TIMEOUT_S`) after the owner's newest chunk (``origin_ns``, the gateways'
  wall clocks: they must agree to within a few seconds). Then the older producer takes over,
  so a machine never goes dark because a newer gateway ran for a while and stopped.

Chunks of version 1 (no epoch, ``epoch = 0``) following an epoch-0 owner are one producer,
whatever their gateway id: the rules before epochs existed.

Every decision depends only on the state and the chunk (never on the clock of the worker), so
a replay after a crash decides the same way.

Bounded memory: between chunks the state holds fewer than ``n_fft + hop`` padded samples and
fewer than ``window_frames`` computed frames (plus the chunk being processed). The state
round-trips through :meth:`StreamWindower.to_bytes` / :meth:`StreamWindower.from_bytes` mid-stream,
which is how the Faust app keeps it in a changelog-backed table.

Timestamps: sample ``s`` of a segment is at ``start_ns(chunk) + (s - first_sample(chunk)) * 1e9 / sr``
using the newest chunk (the one that completed the window). A window's ``start_ns`` is the time of
the first audio sample its frames read (``start_frame*hop - n_fft//2``, not before the segment
start) and ``end_ns`` the time just past the last one, ``(start_frame + W - 1)*hop + n_fft - n_fft//2``
— the moment the window became computable.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from soundwatch.audio.logmel import frames_db
from soundwatch.contracts import AudioChunk, ContractError, FeatureWindow, Reason
from soundwatch.params import FeatureParams

__all__ = ["EventKind", "PushResult", "StreamEvent", "StreamWindower", "peek_state"]

_STATE_MAGIC = b"SWW"
_STATE_VERSION = 2  # 2: + epoch, owner_origin_ns (version 1 states load with both 0)
_STATE_HEAD = struct.Struct(">3sBI")  # magic, version, header length

CLAIM_TIMEOUT_S = 10.0


class _Verdict(Enum):
    FIRST = "first"  # the machine's first chunk
    CONTINUE = "continue"  # the owner's next chunk
    DUPLICATE = "duplicate"
    GAP = "gap"
    HANDOVER = "handover"  # a newer run of the owner's gateway, continuing its numbers
    TAKEOVER = "takeover"  # a newer producer (or an older one after the owner went silent): new segment
    CONFLICT = "conflict"  # an older producer while the owner is live


class EventKind(str, Enum):
    GAP = "gap"  # sequence jumped forward: state reset, new segment
    DUPLICATE = "duplicate"  # sequence not newer than the last one: chunk ignored
    TAKEOVER = "takeover"  # another producer (gateway id, epoch) owns the machine from this chunk on


@dataclass(frozen=True)
class StreamEvent:
    """Something about the sequence of chunks worth reporting (logged and counted by the app)."""

    kind: EventKind
    machine_type: str
    machine_id: str
    sequence: int  # the chunk's
    expected: int  # last_sequence + 1 before the chunk
    segment: int  # the segment after handling the chunk
    producer: str = ""  # the chunk's "gateway_id@epoch"
    previous: str = ""  # TAKEOVER: the producer it replaced
    new_segment: bool = False  # TAKEOVER: whether the stream restarted (False: a clean gateway restart)

    @property
    def missing(self) -> int:
        """Chunks known lost: the numbers a GAP skipped within one producer (0 for other events)."""
        return self.sequence - self.expected if self.kind is EventKind.GAP else 0

    def __str__(self) -> str:
        who = f"{self.machine_type}/{self.machine_id}"
        if self.kind is EventKind.GAP:
            return (
                f"{who}: sequence gap, expected {self.expected} got {self.sequence} "
                f"({self.missing} chunk(s) missing); new segment {self.segment}"
            )
        if self.kind is EventKind.TAKEOVER:
            how = f"new segment {self.segment}" if self.new_segment else f"continues segment {self.segment}"
            return f"{who}: gateway {self.producer} took over from {self.previous} at chunk {self.sequence} ({how})"
        return f"{who}: duplicate/old chunk {self.sequence} (expected {self.expected}) ignored"


@dataclass
class PushResult:
    windows: list[FeatureWindow] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)


class StreamWindower:
    """Incremental log-mel windows for one machine (see the module docstring for the rules)."""

    def __init__(
        self,
        params: FeatureParams,
        machine_type: str | None = None,
        machine_id: str | None = None,
        *,
        claim_timeout_s: float = CLAIM_TIMEOUT_S,
    ) -> None:
        self.params = params
        self._params_json = params.canonical_json()
        self.machine_type = machine_type
        self.machine_id = machine_id
        self.claim_timeout_ns = int(claim_timeout_s * 1e9)
        self.gateway_id = ""  # the owner: the producer (gateway_id, epoch) whose chunks are windowed
        self.epoch = 0
        self.owner_origin_ns = 0  # origin_ns of the owner's newest chunk (is it still live?)
        self.segment = 0
        self.last_sequence = -1  # -1: no chunk seen yet
        self._reset_segment()

    # ------------------------------------------------------------------ state
    def _reset_segment(self) -> None:
        p = self.params
        self.frames_done = 0  # complete frames computed in this segment
        self.next_window = 0  # start frame of the next window to emit
        self.samples_seen = 0  # samples received in this segment
        # padded-domain samples from frame `frames_done`'s first sample on (n_fft//2 zeros at segment start)
        self._tail = np.zeros(p.n_fft // 2, np.float32)
        # frames [next_window, frames_done), not yet emitted as the start of a window
        self._pending = np.zeros((p.n_mels, 0), np.float32)
        self._anchor_sample = 0  # segment sample index of the newest chunk's first sample ...
        self._anchor_ns = 0  # ... and that chunk's start_ns

    @property
    def started(self) -> bool:
        return self.last_sequence >= 0

    @property
    def owner(self) -> str:
        return f"{self.gateway_id}@{self.epoch}"

    def _same_producer(self, chunk: AudioChunk) -> bool:
        return chunk.epoch == self.epoch and (chunk.epoch == 0 or chunk.gateway_id == self.gateway_id)

    def _verdict(self, chunk: AudioChunk) -> _Verdict:
        """What ``chunk`` means for this machine's stream (the rules of the module docstring)."""
        if not self.started:
            return _Verdict.FIRST
        expected = self.last_sequence + 1
        if self._same_producer(chunk):
            if chunk.sequence < expected:
                return _Verdict.DUPLICATE
            return _Verdict.GAP if chunk.sequence > expected else _Verdict.CONTINUE
        newer = (chunk.epoch, chunk.gateway_id) > (self.epoch, self.gateway_id)
        if not newer and chunk.origin_ns - self.owner_origin_ns <= self.claim_timeout_ns:
            return _Verdict.CONFLICT
        if newer and chunk.gateway_id == self.gateway_id and chunk.sequence == expected:
            return _Verdict.HANDOVER  # a clean restart of the same gateway: the stream goes on
        return _Verdict.TAKEOVER

    def discontinuous(self, chunk: AudioChunk) -> bool:
        """True when pushing ``chunk`` would end the current segment: a sequence gap or a takeover.

        The app then makes sure no records of a replaced log were skipped before the gap.
        """
        return self._verdict(chunk) in (_Verdict.GAP, _Verdict.TAKEOVER)

    def unseen(self, chunk: AudioChunk) -> bool:
        """True when ``chunk`` cannot have been pushed before: the owner's, numbered past its last chunk.

        The app uses it to tell a replayed record from new audio in a recreated topic.
        """
        return self.started and self._same_producer(chunk) and chunk.sequence > self.last_sequence

    # ------------------------------------------------------------------ processing
    def push(self, chunk: AudioChunk) -> PushResult:
        """Feed one chunk; return the windows it completes and the sequence events it causes.

        Raises :class:`ContractError` (``WRONG_SAMPLE_RATE``, or ``INVALID_FIELD`` for a chunk of
        another machine) without changing the state.
        """
        p = self.params
        if chunk.sample_rate != p.sample_rate:
            raise ContractError(
                Reason.WRONG_SAMPLE_RATE,
                f"{chunk.machine_type}/{chunk.machine_id} chunk {chunk.sequence} is at {chunk.sample_rate} Hz; "
                f"features are computed at {p.sample_rate} Hz (resample at the gateway)",
            )
        if self.machine_type is None:
            self.machine_type, self.machine_id = chunk.machine_type, chunk.machine_id
        elif (chunk.machine_type, chunk.machine_id) != (self.machine_type, self.machine_id):
            raise ContractError(
                Reason.INVALID_FIELD,
                f"chunk of {chunk.machine_type}/{chunk.machine_id} fed to the windower of "
                f"{self.machine_type}/{self.machine_id}",
            )
        result = PushResult()
        expected = self.last_sequence + 1
        verdict = self._verdict(chunk)
        producer = f"{chunk.gateway_id}@{chunk.epoch}"

        def event(kind: EventKind, previous: str = "", new_segment: bool = False) -> StreamEvent:
            return StreamEvent(
                kind,
                chunk.machine_type,
                chunk.machine_id,
                chunk.sequence,
                expected,
                self.segment,
                producer,
                previous,
                new_segment,
            )

        if verdict is _Verdict.CONFLICT:
            raise ContractError(
                Reason.CONFLICTING_GATEWAY,
                f"{chunk.machine_type}/{chunk.machine_id} chunk {chunk.sequence} of gateway {producer} while "
                f"gateway {self.owner} (newer epoch) owns the machine and is live (its newest chunk was made less "
                f"than {self.claim_timeout_ns / 1e9:g} s before this one); the newest gateway wins: stop the other "
                "gateway or give it other machines",
            )
        if verdict is _Verdict.DUPLICATE:
            result.events.append(event(EventKind.DUPLICATE))
            return result
        same = verdict in (_Verdict.CONTINUE, _Verdict.GAP)
        if verdict in (_Verdict.GAP, _Verdict.TAKEOVER):
            self.segment += 1
            self._reset_segment()
        if verdict is _Verdict.GAP:
            result.events.append(event(EventKind.GAP))
        elif verdict in (_Verdict.TAKEOVER, _Verdict.HANDOVER):
            result.events.append(event(EventKind.TAKEOVER, self.owner, new_segment=verdict is _Verdict.TAKEOVER))
        self.owner_origin_ns = max(self.owner_origin_ns, chunk.origin_ns) if same else chunk.origin_ns
        self.last_sequence = chunk.sequence
        self.gateway_id, self.epoch = chunk.gateway_id, chunk.epoch
        self._anchor_sample, self._anchor_ns = self.samples_seen, chunk.start_ns
        self.samples_seen += chunk.n_samples

        tail = np.concatenate([self._tail, chunk.as_float32()])
        n_new = 0 if tail.size < p.n_fft else (tail.size - p.n_fft) // p.hop_length + 1
        if n_new:
            new = frames_db(tail, n_new, params=p)
            tail = tail[n_new * p.hop_length :]
            self._pending = np.concatenate([self._pending, new], axis=1) if self._pending.shape[1] else new
            self.frames_done += n_new
        self._tail = tail.copy() if tail.base is not None else tail  # drop the reference to the big buffer

        W, H = p.window_frames, p.hop_frames
        while self._pending.shape[1] >= W:
            result.windows.append(self._window(chunk, self._pending[:, :W]))
            self._pending = self._pending[:, H:]
            self.next_window += H
        self._pending = np.ascontiguousarray(self._pending)
        return result

    def _window(self, chunk: AudioChunk, values: np.ndarray) -> FeatureWindow:
        p = self.params
        first = max(0, self.next_window * p.hop_length - p.n_fft // 2)
        end = (self.next_window + p.window_frames - 1) * p.hop_length + (p.n_fft - p.n_fft // 2)
        assert self.machine_type is not None and self.machine_id is not None
        return FeatureWindow(
            machine_type=self.machine_type,
            machine_id=self.machine_id,
            gateway_id=chunk.gateway_id,
            segment=self.segment,
            start_frame=self.next_window,
            start_ns=self._time_ns(first),
            end_ns=self._time_ns(end),
            origin_ns=chunk.origin_ns,
            last_sequence=chunk.sequence,
            feature_params=self._params_json,
            values=np.array(values, dtype=np.float32, copy=True),
        )

    def _time_ns(self, sample: int) -> int:
        return self._anchor_ns + (sample - self._anchor_sample) * 1_000_000_000 // self.params.sample_rate

    # ------------------------------------------------------------------ serialisation
    def to_bytes(self) -> bytes:
        """The whole state: a small JSON header, then the float32 tail samples and pending frames."""
        header = {
            "params": self._params_json,
            "machine_type": self.machine_type,
            "machine_id": self.machine_id,
            "gateway_id": self.gateway_id,
            "epoch": self.epoch,
            "owner_origin_ns": self.owner_origin_ns,
            "segment": self.segment,
            "last_sequence": self.last_sequence,
            "frames_done": self.frames_done,
            "next_window": self.next_window,
            "samples_seen": self.samples_seen,
            "anchor_sample": self._anchor_sample,
            "anchor_ns": self._anchor_ns,
            "tail": int(self._tail.size),
            "pending": int(self._pending.shape[1]),
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        return b"".join(
            [
                _STATE_HEAD.pack(_STATE_MAGIC, _STATE_VERSION, len(head)),
                head,
                self._tail.astype("<f4").tobytes(),
                self._pending.astype("<f4").tobytes(),
            ]
        )

    def take_producer(self, header: dict) -> None:
        """Adopt the owner and its last sequence from a stored state's header (:func:`peek_state`)."""
        self.gateway_id, self.epoch = header["gateway_id"], int(header["epoch"])
        self.owner_origin_ns = int(header["owner_origin_ns"])
        self.last_sequence = int(header["last_sequence"])

    @classmethod
    def from_bytes(
        cls, data: bytes, params: FeatureParams, *, claim_timeout_s: float = CLAIM_TIMEOUT_S
    ) -> StreamWindower:
        """Rebuild a windower; raises :class:`ContractError` for garbage or a state computed with other
        feature parameters (``FEATURE_PARAMS_MISMATCH``: its frames cannot continue a new definition)."""
        h, n_head = _header(data)
        if h["params"] != params.canonical_json():
            diff = params.differences(FeatureParams.from_json(h["params"]))
            raise ContractError(Reason.FEATURE_PARAMS_MISMATCH, f"state was computed with other parameters: {diff}")
        off = _STATE_HEAD.size + n_head
        n_tail, n_pending = int(h["tail"]), int(h["pending"])
        expected = off + 4 * (n_tail + params.n_mels * n_pending)
        if len(data) != expected:
            raise ContractError(Reason.LENGTH_MISMATCH, f"windower state has {len(data)} bytes, header says {expected}")
        w = cls(params, h["machine_type"], h["machine_id"], claim_timeout_s=claim_timeout_s)
        w.take_producer(h)
        w.segment = int(h["segment"])
        w.frames_done, w.next_window = int(h["frames_done"]), int(h["next_window"])
        w.samples_seen = int(h["samples_seen"])
        w._anchor_sample, w._anchor_ns = int(h["anchor_sample"]), int(h["anchor_ns"])
        w._tail = np.frombuffer(data, "<f4", n_tail, off).astype(np.float32)
        w._pending = np.frombuffer(data, "<f4", params.n_mels * n_pending, off + 4 * n_tail).astype(np.float32)
        w._pending = w._pending.reshape(params.n_mels, n_pending)
        return w


def peek_state(data: bytes) -> dict:
    """The JSON header of a stored state (segment, machine, owner, params...) without checking the parameters.

    Any supported version; fields a version 1 state lacks come back with their migrated values.
    """
    return _header(data)[0]


def _header(data: bytes) -> tuple[dict, int]:
    if len(data) < _STATE_HEAD.size:
        raise ContractError(Reason.TRUNCATED, f"windower state of {len(data)} bytes is too short")
    magic, version, n_head = _STATE_HEAD.unpack_from(data)
    if magic != _STATE_MAGIC:
        raise ContractError(Reason.BAD_MAGIC, f"windower state starts with {magic!r}, not {_STATE_MAGIC!r}")
    if version not in (1, 2):
        raise ContractError(Reason.UNSUPPORTED_VERSION, f"windower state version {version} (supported: 1, 2)")
    try:
        h = json.loads(data[_STATE_HEAD.size : _STATE_HEAD.size + n_head])
    except ValueError as exc:
        raise ContractError(Reason.INVALID_FIELD, f"windower state header is not JSON: {exc}") from exc
    if version == 1:  # before producers had epochs: the owner is an epoch-0 (legacy) producer
        h.update(epoch=0, owner_origin_ns=0)
    return h, n_head
