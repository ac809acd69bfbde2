"""A bounded, retrying buffer of points in front of the writer: what the scoring worker writes through.

``add`` only appends to a memory buffer bounded by ``max_buffer_points``; ``flush`` writes in
batches of ``batch_size`` and, when the server is unreachable, backs off exponentially *without
blocking* (a ``flush`` before the back-off ends returns at once). Nothing is dropped during an
outage: when the buffer is full, ``add`` raises :class:`InfluxBackPressure` and the caller must
stop consuming until a flush succeeds. Only points the server rejects as malformed (HTTP 400/422)
are dropped — retrying them would wedge the pipeline forever — and they are counted and logged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from soundwatch.errors import SoundwatchError
from soundwatch.influx.client import InfluxClient, InfluxWriteError
from soundwatch.influx.schema import Point
from soundwatch.settings import InfluxSettings

log = logging.getLogger(__name__)


class LineWriter(Protocol):
    """Writes line-protocol lines or raises :class:`InfluxWriteError` (:class:`InfluxClient` is the real one)."""

    def write(self, lines: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class InfluxBackPressure(SoundwatchError):
    """The point buffer is full (InfluxDB is down or slow): stop consuming until a flush succeeds."""

    def __init__(self, buffered: int, wanted: int, capacity: int) -> None:
        super().__init__(
            f"InfluxDB point buffer is full ({buffered} of {capacity} points held, {wanted} more offered)",
            "the writer pauses consumption until InfluxDB accepts writes again; check that InfluxDB is up, "
            "or raise SOUNDWATCH_INFLUX__MAX_BUFFER_POINTS",
        )
        self.buffered = buffered
        self.wanted = wanted
        self.capacity = capacity


@dataclass
class SinkStats:
    written: int = 0  # points durably accepted by the server
    rejected: int = 0  # points dropped because the server called them malformed
    write_errors: int = 0  # failed write requests (each retried, or dropped if rejected)
    last_error: str = ""
    consecutive_failures: int = 0


@dataclass
class BufferedSink:
    """Bounded FIFO of line-protocol lines in front of a :class:`LineWriter`.

    Every added point gets a sequence number; ``done_upto`` is the count of points
    whose fate is settled (written, or rejected as malformed). The worker commits a
    Kafka offset only once ``done_upto`` has passed the sequence number of the last
    point derived from it.
    """

    writer: LineWriter
    batch_size: int = 500
    max_buffer_points: int = 1_000_000
    flush_interval_s: float = 0.0  # flush_due(): write once a batch is full or the oldest point waited this long
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stats: SinkStats = field(default_factory=SinkStats)
    _lines: deque[str] = field(default_factory=deque, init=False, repr=False)
    _added: int = field(default=0, init=False)
    _next_try_at: float = field(default=0.0, init=False)
    _oldest_at: float | None = field(default=None, init=False)  # when the oldest unwritten point was added

    @classmethod
    def from_settings(cls, settings: InfluxSettings, writer: LineWriter | None = None) -> BufferedSink:
        return cls(
            writer or InfluxClient(settings),
            batch_size=settings.batch_size,
            max_buffer_points=settings.max_buffer_points,
            flush_interval_s=settings.flush_interval_ms / 1000.0,
        )

    def __len__(self) -> int:
        return len(self._lines)

    @property
    def added(self) -> int:
        """Sequence number after the last added point (points added so far)."""
        return self._added

    @property
    def done_upto(self) -> int:
        return self._added - len(self._lines)

    @property
    def room(self) -> int:
        return self.max_buffer_points - len(self._lines)

    def add(self, points: Sequence[Point]) -> int:
        """Buffer ``points`` (all or none); return the sequence number after the last one.

        Raises :class:`InfluxBackPressure` when they do not fit, and ``ValueError`` for a point
        that cannot be encoded (a caller bug; nothing is buffered then).
        """
        if len(points) > self.room:
            raise InfluxBackPressure(len(self._lines), len(points), self.max_buffer_points)
        lines = [p.to_line() for p in points]
        if lines and not self._lines:
            self._oldest_at = self.clock()
        self._lines.extend(lines)
        self._added += len(lines)
        return self._added

    def flush_due(self) -> bool:
        """:meth:`flush` once a full batch waits or the oldest point has waited ``flush_interval_s``; else
        nothing (fewer, larger writes: InfluxDB's cost is mostly per request). True when the buffer is empty."""
        if not self._lines:
            return True
        waited = self.clock() - (self._oldest_at if self._oldest_at is not None else self.clock())
        if len(self._lines) < self.batch_size and waited < self.flush_interval_s:
            return False
        return self.flush()

    def flush(self, block_s: float = 0.0) -> bool:
        """Write buffered points; True when the buffer is empty.

        With ``block_s == 0`` a flush inside a back-off period returns at once, so a
        consumer loop can call it every iteration. With ``block_s > 0`` it keeps retrying
        (sleeping through back-offs) until empty or the time is up — for shutdown.
        """
        deadline = self.clock() + block_s
        while self._lines:
            now = self.clock()
            if now < self._next_try_at:
                if self._next_try_at > deadline:
                    return False
                self.sleep(self._next_try_at - now)
            batch = [self._lines[i] for i in range(min(self.batch_size, len(self._lines)))]
            try:
                self.writer.write(batch)
            except InfluxWriteError as exc:
                self.stats.write_errors += 1
                self.stats.last_error = str(exc.message)
                if not exc.retryable:
                    log.error("dropping %d points InfluxDB rejected: %s", len(batch), exc)
                    self.stats.rejected += len(batch)
                    self._pop(len(batch))
                    continue
                self.stats.consecutive_failures += 1
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (self.stats.consecutive_failures - 1))
                self._next_try_at = self.clock() + delay
                log.warning(
                    "InfluxDB write failed (attempt %d, next in %.1fs, %d points buffered): %s",
                    self.stats.consecutive_failures,
                    delay,
                    len(self._lines),
                    exc,
                )
                if self.clock() >= deadline:
                    return False
                continue
            if self.stats.consecutive_failures:
                log.info("InfluxDB writes recovered after %d failed attempts", self.stats.consecutive_failures)
            self.stats.consecutive_failures = 0
            self._next_try_at = 0.0
            self.stats.written += len(batch)
            self._pop(len(batch))
        return True

    def _pop(self, n: int) -> None:
        for _ in range(n):
            self._lines.popleft()
        self._oldest_at = self.clock() if self._lines else None  # what is left waits from now on

    def close(self) -> None:
        self.writer.close()
