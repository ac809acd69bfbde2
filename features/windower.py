"""Per-machine streaming windows: audio chunks in, :class:`FeatureWindow` messages out. Pure, no Kafka.

One :class:`StreamWindower` per machine. Fed that machine's chunks in sequence order, in any sizes,
it emits exactly the windows :func:`features.windows.offline_windows` computes for the concatenated
audio of the current *segment*: same count, same start frames, values equal to within float64
rounding (the same code computes both).

Sequence numbers (per machine, +1 per chunk) decide what a chunk means:

* ``last + 1`` — continues the segment.
* ``> last + 1`` — a **gap**: chunks were lost. The state is reset and a new segment starts
  (``segment + 1``, frames counted from 0 again), so no window spans the gap. Reported as an event.
* ``<= last`` — a **duplicate** or a replay (at-least-once delivery, a restarted worker): ignored,
  no windows, reported as an event.

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

from features.logmel import frames_db
from soundwatch.contracts import AudioChunk, ContractError, FeatureWindow, Reason
from soundwatch.params import FeatureParams

__all__ = ["EventKind", "PushResult", "StreamEvent", "StreamWindower", "peek_state"]

_STATE_MAGIC = b"SWW"
_STATE_VERSION = 1
_STATE_HEAD = struct.Struct(">3sBI")  # magic, version, header length


class EventKind(str, Enum):
    GAP = "gap"  # sequence jumped forward: state reset, new segment
    DUPLICATE = "duplicate"  # sequence not newer than the last one: chunk ignored


@dataclass(frozen=True)
class StreamEvent:
    """Something about the sequence of chunks worth reporting (logged and counted by the app)."""

    kind: EventKind
    machine_type: str
    machine_id: str
    sequence: int  # the chunk's
    expected: int  # last_sequence + 1 before the chunk
    segment: int  # the segment after handling the chunk

    def __str__(self) -> str:
        who = f"{self.machine_type}/{self.machine_id}"
        if self.kind is EventKind.GAP:
            return (f"{who}: sequence gap, expected {self.expected} got {self.sequence} "
                    f"({self.sequence - self.expected} chunk(s) missing); new segment {self.segment}")  # fmt: skip
        return f"{who}: duplicate/old chunk {self.sequence} (expected {self.expected}) ignored"


@dataclass
class PushResult:
    windows: list[FeatureWindow] = field(default_factory=list)
    events: list[StreamEvent] = field(default_factory=list)


class StreamWindower:
    """Incremental log-mel windows for one machine (see the module docstring for the rules)."""

    def __init__(self, params: FeatureParams, machine_type: str | None = None, machine_id: str | None = None) -> None:
        self.params = params
        self._params_json = params.canonical_json()
        self.machine_type = machine_type
        self.machine_id = machine_id
        self.gateway_id = ""
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
        if self.started and chunk.sequence < expected:
            result.events.append(StreamEvent(EventKind.DUPLICATE, chunk.machine_type, chunk.machine_id,
                                             chunk.sequence, expected, self.segment))  # fmt: skip
            return result
        if self.started and chunk.sequence > expected:
            self.segment += 1
            self._reset_segment()
            result.events.append(StreamEvent(EventKind.GAP, chunk.machine_type, chunk.machine_id,
                                             chunk.sequence, expected, self.segment))  # fmt: skip
        self.last_sequence = chunk.sequence
        self.gateway_id = chunk.gateway_id
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
        return b"".join([_STATE_HEAD.pack(_STATE_MAGIC, _STATE_VERSION, len(head)), head,
                         self._tail.astype("<f4").tobytes(), self._pending.astype("<f4").tobytes()])  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes, params: FeatureParams) -> StreamWindower:
        """Rebuild a windower; raises :class:`ContractError` for garbage or a state computed with other
        feature parameters (``FEATURE_PARAMS_MISMATCH``: its frames cannot continue a new definition)."""
        if len(data) < _STATE_HEAD.size:
            raise ContractError(Reason.TRUNCATED, f"windower state of {len(data)} bytes is too short")
        magic, version, n_head = _STATE_HEAD.unpack_from(data)
        if magic != _STATE_MAGIC:
            raise ContractError(Reason.BAD_MAGIC, f"windower state starts with {magic!r}, not {_STATE_MAGIC!r}")
        if version != _STATE_VERSION:
            raise ContractError(Reason.UNSUPPORTED_VERSION, f"windower state version {version} (supported: 1)")
        try:
            h = json.loads(data[_STATE_HEAD.size : _STATE_HEAD.size + n_head])
        except ValueError as exc:
            raise ContractError(Reason.INVALID_FIELD, f"windower state header is not JSON: {exc}") from exc
        if h["params"] != params.canonical_json():
            diff = params.differences(FeatureParams.from_json(h["params"]))
            raise ContractError(Reason.FEATURE_PARAMS_MISMATCH, f"state was computed with other parameters: {diff}")
        off = _STATE_HEAD.size + n_head
        n_tail, n_pending = int(h["tail"]), int(h["pending"])
        expected = off + 4 * (n_tail + params.n_mels * n_pending)
        if len(data) != expected:
            raise ContractError(Reason.LENGTH_MISMATCH, f"windower state has {len(data)} bytes, header says {expected}")
        w = cls(params, h["machine_type"], h["machine_id"])
        w.gateway_id = h["gateway_id"]
        w.segment, w.last_sequence = int(h["segment"]), int(h["last_sequence"])
        w.frames_done, w.next_window = int(h["frames_done"]), int(h["next_window"])
        w.samples_seen = int(h["samples_seen"])
        w._anchor_sample, w._anchor_ns = int(h["anchor_sample"]), int(h["anchor_ns"])
        w._tail = np.frombuffer(data, "<f4", n_tail, off).astype(np.float32)
        w._pending = np.frombuffer(data, "<f4", params.n_mels * n_pending, off + 4 * n_tail).astype(np.float32)
        w._pending = w._pending.reshape(params.n_mels, n_pending)
        return w


def peek_state(data: bytes) -> dict:
    """The JSON header of a stored state (segment, machine, params...) without checking the parameters."""
    magic, _version, n_head = _STATE_HEAD.unpack_from(data)
    if magic != _STATE_MAGIC:
        raise ContractError(Reason.BAD_MAGIC, f"windower state starts with {magic!r}, not {_STATE_MAGIC!r}")
    return json.loads(data[_STATE_HEAD.size : _STATE_HEAD.size + n_head])
