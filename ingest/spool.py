"""A bounded, crash-safe, on-disk FIFO of encoded audio chunks: the gateway's write-ahead log.

Every chunk is appended here *before* it is sent, so a broker outage or a gateway crash
loses nothing that reached the spool, and chunks leave in the order they arrived
(per-machine order holds because the whole spool is one FIFO: while any chunk waits,
later chunks queue behind it).

Layout under ``directory``::

    00000000000000000000.seg   append-only segment files, named by their first position
    00000000000000004096.seg
    cursor                     first position not yet acknowledged (written atomically)

A record is ``u32 length | u32 crc32c | i64 appended_ns | u16 key_len | key | value``;
``length`` counts everything after the crc. On start-up the segments are scanned and a
torn or corrupt tail (a crash mid-write) is cut off and reported. A crash can make the
gateway resend chunks acknowledged after the last cursor write (at-least-once; the
``(machine, sequence)`` pair identifies duplicates).

Positions are global and keep increasing across restarts. Each position is *pending*
(waits to be sent), *in flight* (handed to the producer), or *done* (acknowledged).

Limit policy: **drop oldest**. When appending would push the segment files over
``max_bytes``, whole oldest segments are deleted and every pending chunk in them is
counted as dropped (bytes, chunks, per machine) and logged at ERROR. Rationale: during
a long outage the most recent audio is what tells whether a machine is healthy *now*;
sequence numbers make the hole visible downstream. Nothing is dropped silently.
"""

from __future__ import annotations

import heapq
import io
import logging
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import crc32c

from ingest.sequences import fsync_dir, write_atomic

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")  # length, crc
_META = struct.Struct(">qH")  # appended_ns, key_len
_SUFFIX = ".seg"
_MIN_SEGMENT = 64 * 1024
_MAX_SEGMENT = 64 * 1024 * 1024


@dataclass(frozen=True)
class SpoolRecord:
    position: int
    key: bytes
    value: bytes


@dataclass(frozen=True)
class SpoolStats:
    """What the status line and the final report show."""

    pending_chunks: int  # appended, not yet acknowledged (includes in flight)
    pending_bytes: int
    in_flight: int
    disk_bytes: int  # size of the segment files
    oldest_age_s: float  # age of the oldest unacknowledged chunk, 0 when none
    dropped_chunks: int
    dropped_bytes: int
    dropped_by_machine: dict[str, int]
    corrupt_bytes: int  # cut off during recovery


@dataclass
class _Segment:
    first: int
    path: Path
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    nbytes: int = 0

    @property
    def end(self) -> int:
        return self.first + len(self.offsets)


class Spool:
    """Durable FIFO with per-position status. Not thread-safe: the caller holds one lock around it."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int | None = None,
        cache_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        if max_bytes < 1024:
            raise ValueError(f"max_bytes={max_bytes} is below the 1024-byte minimum")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or min(_MAX_SEGMENT, max(_MIN_SEGMENT, max_bytes // 8))
        self._segments: list[_Segment] = []
        self._fds: dict[int, int] = {}  # segment first -> read fd
        self._active_fh: io.FileIO | None = None  # unbuffered: a failed write fails here, not at a later flush
        self._sealed = False  # after a write error the active segment takes no more records
        self._write_errors = 0
        self._committed = 0  # every position below is done or dropped
        self._end = 0  # next position to append
        self._send_cursor = 0  # next never-sent position
        self._retry: list[int] = []  # min-heap of failed positions to resend first
        self._done: set[int] = set()  # acknowledged positions >= committed
        self._in_flight: dict[int, tuple[bytes, int]] = {}  # position -> (key, size)
        self._cache: dict[int, SpoolRecord] = {}  # appended, not yet handed out
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._pending_bytes = 0
        self._dropped_chunks = 0
        self._dropped_bytes = 0
        self._dropped_by_machine: Counter[str] = Counter()
        self._corrupt_bytes = 0
        self._dirty = False
        self._cursor_written = -1
        self._recover()

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        cursor_path = self.directory / "cursor"
        committed = int(cursor_path.read_text().strip() or 0) if cursor_path.exists() else 0
        paths = sorted(self.directory.glob("*" + _SUFFIX))
        for i, path in enumerate(paths):
            seg = _Segment(first=int(path.stem), path=path)
            if self._segments and seg.first != self._segments[-1].end:
                log.error(
                    "spool segment %s does not follow %s (expected first position %d); positions in between are lost",
                    path.name,
                    self._segments[-1].path.name,
                    self._segments[-1].end,
                )
            self._scan(seg, is_last=i == len(paths) - 1)
            self._segments.append(seg)
        if self._segments:
            self._end = self._segments[-1].end
            committed = max(committed, self._segments[0].first)
        else:
            self._end = committed
        self._committed = min(committed, self._end)
        self._send_cursor = self._committed
        for seg in self._segments:
            for j, size in enumerate(seg.sizes):
                if seg.first + j >= self._committed:
                    self._pending_bytes += size
        self._delete_committed_segments()
        if self.pending_chunks:
            log.warning(
                "spool %s holds %d unsent chunks (%.1f MB) from a previous run; they are sent first",
                self.directory,
                self.pending_chunks,
                self._pending_bytes / 1e6,
            )

    def _scan(self, seg: _Segment, is_last: bool) -> None:
        data = seg.path.read_bytes()
        pos = 0
        while pos < len(data):
            good = False
            if pos + _HEADER.size <= len(data):
                length, crc = _HEADER.unpack_from(data, pos)
                body_start = pos + _HEADER.size
                body = data[body_start : body_start + length]
                if len(body) == length and length >= _META.size and crc32c.crc32c(body) == crc:
                    appended_ns, key_len = _META.unpack_from(body, 0)
                    if _META.size + key_len <= length:
                        seg.offsets.append(pos)
                        seg.sizes.append(_HEADER.size + length)
                        seg.keys.append(bytes(body[_META.size : _META.size + key_len]))
                        seg.times.append(appended_ns)
                        pos = body_start + length
                        good = True
            if not good:
                cut = len(data) - pos
                self._corrupt_bytes += cut
                level = logging.WARNING if is_last else logging.ERROR
                log.log(
                    level,
                    "spool segment %s: %d bytes at offset %d are torn or corrupt (crash during a write?); "
                    "cutting them off",
                    seg.path.name,
                    cut,
                    pos,
                )
                with open(seg.path, "r+b") as fh:
                    fh.truncate(pos)
                    fh.flush()
                    os.fsync(fh.fileno())
                break
        seg.nbytes = pos

    # ------------------------------------------------------------------ writing
    def append(self, key: bytes, value: bytes, now_ns: int | None = None) -> int | None:
        """Append one record; return its position, or None if it alone exceeds the limit (counted dropped)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        body = _META.pack(now_ns, len(key)) + key + value
        size = _HEADER.size + len(body)
        if size > self.max_bytes:
            self._count_drop(key, size)
            log.error(
                "spool: a %d-byte chunk of %s is larger than the whole spool limit (%d bytes); dropped it",
                size,
                key.decode(errors="replace"),
                self.max_bytes,
            )
            return None
        self._make_room(size)
        seg: _Segment | None = None
        try:
            seg = self._active_segment()
            fh = self._active_fh
            assert fh is not None
            written = fh.write(_HEADER.pack(len(body), crc32c.crc32c(body)) + body)
            if written != size:
                raise OSError(f"short write: {written} of {size} bytes")
        except OSError as exc:
            self._write_failed(seg, key, size, exc)
            return None
        seg.offsets.append(seg.nbytes)
        seg.sizes.append(size)
        seg.keys.append(key)
        seg.times.append(now_ns)
        seg.nbytes += size
        position = self._end
        self._end += 1
        self._pending_bytes += size
        self._dirty = True
        if self._cache_bytes + size <= self._cache_limit:
            self._cache[position] = SpoolRecord(position, key, value)
            self._cache_bytes += size
        return position

    def _write_failed(self, seg: _Segment | None, key: bytes, size: int, exc: OSError) -> None:
        """Disk full or failing: count the chunk as dropped, say so, and undo any partial record.

        A torn record must never be followed by good ones (recovery cuts everything after it),
        so the segment is cut back to its last whole record, or sealed if even that fails.
        """
        self._count_drop(key, size)
        self._write_errors += 1
        if self._write_errors == 1 or self._write_errors % 100 == 0:
            log.error(
                "spool %s: cannot write (%s); %d chunk(s) dropped so far; free disk space or move "
                "SOUNDWATCH_INGEST__SPOOL_DIR",
                self.directory,
                exc,
                self._write_errors,
            )
        if seg is None or self._active_fh is None:
            return
        try:
            os.ftruncate(self._active_fh.fileno(), seg.nbytes)
        except OSError:
            self._sealed = True  # the next record starts a new segment
            try:
                self._close_active()
            except OSError:
                self._active_fh = None
            if not seg.offsets:  # an empty sealed segment would share its name with the next one
                self._remove_segment(seg)

    def _active_segment(self) -> _Segment:
        room = bool(self._segments) and self._segments[-1].nbytes < self.segment_bytes and not self._sealed
        if room and self._active_fh is not None:
            return self._segments[-1]
        if room:
            seg = self._segments[-1]  # reopen the last recovered segment for appending
        else:
            self._close_active()
            seg = _Segment(first=self._end, path=self.directory / f"{self._end:020d}{_SUFFIX}")
            self._segments.append(seg)
            self._sealed = False
        self._active_fh = open(seg.path, "ab", buffering=0)  # noqa: SIM115 - kept open while active
        if seg.nbytes == 0:
            fsync_dir(self.directory)
        return seg

    def _close_active(self) -> None:
        if self._active_fh is not None:
            self._active_fh.flush()
            os.fsync(self._active_fh.fileno())
            self._active_fh.close()
            self._active_fh = None

    def _make_room(self, size: int) -> None:
        while self._segments and self.disk_bytes + size > self.max_bytes:
            oldest = self._segments[0]
            if len(self._segments) == 1:
                self._close_active()  # the next append starts a fresh segment
            self._drop_segment(oldest)

    def _drop_segment(self, seg: _Segment) -> None:
        chunks = nbytes = 0
        machines: Counter[str] = Counter()
        for j, (key, size) in enumerate(zip(seg.keys, seg.sizes, strict=True)):
            pos = seg.first + j
            if pos < self._committed or pos in self._done:
                continue  # acknowledged
            self._pending_bytes -= size
            if pos in self._in_flight:
                continue  # its fate is decided when the producer answers (see nack)
            chunks += 1
            nbytes += size
            machines[key.decode(errors="replace")] += 1
            self._count_drop(key, size)
            self._cache_drop(pos)
        for j in range(len(seg.keys)):
            self._done.discard(seg.first + j)
        self._remove_segment(seg)
        self._committed = max(self._committed, seg.end)
        self._send_cursor = max(self._send_cursor, self._committed)
        self._advance()
        if chunks:
            who = ", ".join(f"{m} x{n}" for m, n in machines.most_common(8))
            log.error(
                "SPOOL FULL (%d bytes limit): dropped the %d oldest unsent chunks (%.2f MB): %s%s; "
                "raise SOUNDWATCH_INGEST__SPOOL_MAX_BYTES or restore the broker",
                self.max_bytes,
                chunks,
                nbytes / 1e6,
                who,
                " ..." if len(machines) > 8 else "",
            )

    def _count_drop(self, key: bytes, size: int) -> None:
        self._dropped_chunks += 1
        self._dropped_bytes += size
        self._dropped_by_machine[key.decode(errors="replace")] += 1

    def _remove_segment(self, seg: _Segment) -> None:
        if self._segments and self._segments[-1] is seg:
            self._close_active()
        fd = self._fds.pop(seg.first, None)
        if fd is not None:
            os.close(fd)
        seg.path.unlink(missing_ok=True)
        self._segments.remove(seg)

    # ------------------------------------------------------------------ sending side
    def next_to_send(self) -> SpoolRecord | None:
        """The oldest pending record (failed ones first), now marked in flight; None when nothing waits."""
        while self._retry:
            pos = heapq.heappop(self._retry)
            if pos >= self._committed and pos not in self._done and pos not in self._in_flight:
                rec = self._read(pos)
                if rec is not None:
                    self._in_flight[pos] = (rec.key, self._size_of(pos))
                    return rec
                self._skip_missing(pos)
        while self._send_cursor < self._end:
            pos = self._send_cursor
            self._send_cursor += 1
            if pos < self._committed or pos in self._done:
                continue
            rec = self._read(pos)
            if rec is not None:
                self._in_flight[pos] = (rec.key, self._size_of(pos))
                return rec
            self._skip_missing(pos)
        return None

    def _skip_missing(self, pos: int) -> None:
        """A position no segment holds (cut off as corrupt during recovery): nothing to send, move past it."""
        self._done.add(pos)
        self._advance()

    def has_pending(self) -> bool:
        """True when a record waits to be handed out (not counting those in flight)."""
        return bool(self._retry) or self._send_cursor < self._end

    def ack(self, position: int) -> None:
        """The broker has the record: it can be forgotten."""
        entry = self._in_flight.pop(position, None)
        if position < self._committed or position in self._done:
            return
        self._done.add(position)
        if entry is not None:
            self._pending_bytes -= entry[1]
        self._advance()

    def nack(self, position: int) -> None:
        """Sending failed: back to the front of the queue (or counted lost if its segment was dropped)."""
        entry = self._in_flight.pop(position, None)
        if position < self._committed:
            if entry is not None:  # its segment was dropped for space while it was in flight
                self._count_drop(*entry)
                log.error(
                    "spool: chunk %d of %s failed to send after its segment was dropped for space; lost",
                    position,
                    entry[0].decode(errors="replace"),
                )
            return
        if position not in self._done:
            heapq.heappush(self._retry, position)

    def _advance(self) -> None:
        moved = False
        while self._committed in self._done:
            self._done.remove(self._committed)
            self._committed += 1
            moved = True
        if moved:
            self._dirty = True
            self._delete_committed_segments()

    def _delete_committed_segments(self) -> None:
        while len(self._segments) > 1 and self._segments[0].end <= self._committed:
            self._remove_segment(self._segments[0])
        if (
            len(self._segments) == 1
            and self._segments[0].end <= self._committed
            and self._segments[0].nbytes >= self.segment_bytes
        ):
            self._remove_segment(self._segments[0])

    def _segment_of(self, pos: int) -> _Segment | None:
        for seg in self._segments:
            if seg.first <= pos < seg.end:
                return seg
        return None

    def _size_of(self, pos: int) -> int:
        seg = self._segment_of(pos)
        return seg.sizes[pos - seg.first] if seg is not None else 0

    def _cache_drop(self, pos: int) -> SpoolRecord | None:
        rec = self._cache.pop(pos, None)
        if rec is not None:
            self._cache_bytes -= _HEADER.size + _META.size + len(rec.key) + len(rec.value)
        return rec

    def _read(self, pos: int) -> SpoolRecord | None:
        cached = self._cache_drop(pos)
        if cached is not None:
            return cached
        seg = self._segment_of(pos)
        if seg is None:
            return None
        if self._active_fh is not None and seg is self._segments[-1]:
            self._active_fh.flush()
        fd = self._fds.get(seg.first)
        if fd is None:
            fd = self._fds[seg.first] = os.open(seg.path, os.O_RDONLY)
        j = pos - seg.first
        raw = os.pread(fd, seg.sizes[j], seg.offsets[j])
        body = raw[_HEADER.size :]
        _, key_len = _META.unpack_from(body, 0)
        start = _META.size + key_len
        return SpoolRecord(pos, body[_META.size : start], body[start:])

    # ------------------------------------------------------------------ durability and reporting
    def sync(self) -> None:
        """fsync appended data and record the committed position (call every ~0.2 s and on shutdown)."""
        if self._active_fh is not None:
            self._active_fh.flush()
            os.fsync(self._active_fh.fileno())
        if self._committed != self._cursor_written:
            write_atomic(self.directory / "cursor", str(self._committed).encode())
            self._cursor_written = self._committed
        self._dirty = False

    def close(self) -> None:
        self.sync()
        self._close_active()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def end(self) -> int:
        return self._end

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def pending_chunks(self) -> int:
        return self._end - self._committed - len(self._done)

    @property
    def disk_bytes(self) -> int:
        return sum(seg.nbytes for seg in self._segments)

    def oldest_age_s(self, now_ns: int | None = None) -> float:
        now_ns = time.time_ns() if now_ns is None else now_ns
        pos = self._committed
        while pos < self._end and pos in self._done:
            pos += 1
        seg = self._segment_of(pos)
        if seg is None:
            return 0.0
        return max(0.0, (now_ns - seg.times[pos - seg.first]) / 1e9)

    def stats(self) -> SpoolStats:
        return SpoolStats(
            pending_chunks=self.pending_chunks,
            pending_bytes=self._pending_bytes,
            in_flight=len(self._in_flight),
            disk_bytes=self.disk_bytes,
            oldest_age_s=self.oldest_age_s(),
            dropped_chunks=self._dropped_chunks,
            dropped_bytes=self._dropped_bytes,
            dropped_by_machine=dict(self._dropped_by_machine),
            corrupt_bytes=self._corrupt_bytes,
        )
