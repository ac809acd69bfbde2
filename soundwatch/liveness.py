"""The worker health contract behind ``/healthz`` (liveness) and ``/readyz`` (readiness).

Both stream workers serve it (scoring on its metrics port, features on Faust's web server); the
Kubernetes probes in ``deploy/k8s/base/scoring.yaml`` rely on it:

* ``/healthz`` is 200 unless the worker is *stalled*: input is waiting (consumer lag > 0, fetched
  records not yet handled, or a record being handled) and it has handled no record for
  ``stall_after_s``. The clock starts at the later of the last progress and the moment input
  started waiting, so a worker idle for hours is not stalled by the first record that arrives.
  An outage of Kafka, Redis or InfluxDB is not a stall: the worker retries and buffers (the
  caller :meth:`excuse` s it), and a restart would not help.
* ``/readyz`` is 200 once the worker has started (joined its group and got its assignment, zero
  partitions included; scoring: a model to score with) and is not stalled; 503 before.

Answers come from memory (:meth:`Progress.verdict`), never from a broker, so they return at once
even while the worker's own loop is blocked — that is the case they exist to report.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

OK, STARTING, STALLED = "ok", "starting", "stalled"


@dataclass(frozen=True)
class Verdict:
    """What the endpoints answer: ``status`` plus what it was decided on (the JSON body)."""

    status: str  # ok | starting | stalled
    lag: int | None
    seconds_since_progress: float | None
    waiting: bool

    @property
    def healthz(self) -> int:
        return 503 if self.status == STALLED else 200

    @property
    def readyz(self) -> int:
        return 200 if self.status == OK else 503

    def body(self) -> bytes:
        return json.dumps(asdict(self)).encode()


class Progress:
    """Thread-safe record of a worker's progress; the worker reports, the HTTP thread asks :meth:`verdict`."""

    def __init__(self, stall_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._last_progress: float | None = None
        self._lag: int | None = None
        self._pending = 0  # fetched, not yet handled
        self._in_flight = 0  # being handled now
        self._excuses: set[str] = set()
        self._waiting_since: float | None = None

    # ------------------------------------------------------------------ reports from the worker
    def started(self, value: bool = True) -> None:
        """The worker joined its group with its assignment (and has what it needs to work), or no longer."""
        with self._lock:
            self._started = value
            if value and self._last_progress is None:
                self._last_progress = self._clock()

    def progressed(self, records: int = 1) -> None:
        """``records`` input records were handled (``0``: a step that moved nothing, e.g. all skipped)."""
        with self._lock:
            self._last_progress = self._clock()
            self._in_flight = 0
            self._update_waiting()

    def handling(self, records: int) -> None:
        """``records`` records are being handled now (input waiting until :meth:`progressed`)."""
        with self._lock:
            self._in_flight = records
            self._update_waiting()

    def input(self, *, lag: int | None = None, pending: int | None = None) -> None:
        """What waits: consumer lag over the assigned partitions (None: unknown), records fetched not handled."""
        with self._lock:
            if lag is not None or pending is None:
                self._lag = lag
            if pending is not None:
                self._pending = pending
            self._update_waiting()

    def excuse(self, value: bool, why: str) -> None:
        """While any ``why`` is excused (an outage the worker rides out: back-pressure, a broker away, a
        rebalance) nothing is a stall; each cause is set and cleared on its own."""
        with self._lock:
            if value:
                self._excuses.add(why)
            else:
                self._excuses.discard(why)

    def _update_waiting(self) -> None:
        waiting = bool(self._lag) or self._pending > 0 or self._in_flight > 0
        if not waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = self._clock()

    # ------------------------------------------------------------------ the answer
    def verdict(self) -> Verdict:
        with self._lock:
            now = self._clock()
            since = None if self._last_progress is None else now - self._last_progress
            waiting = self._waiting_since is not None
            stalled = False
            if waiting and not self._excuses and self._started:
                assert self._waiting_since is not None
                quiet_from = max(self._waiting_since, self._last_progress or self._waiting_since)
                stalled = now - quiet_from > self.stall_after_s
            status = STALLED if stalled else OK if self._started else STARTING
            return Verdict(status, self._lag, None if since is None else round(since, 3), waiting)


def health_response(path: str, progress: Progress) -> tuple[int, bytes] | None:
    """``(HTTP status, JSON body)`` for ``/healthz`` and ``/readyz``; None for any other path."""
    path = path.rstrip("/")
    if path not in ("/healthz", "/readyz"):
        return None
    verdict = progress.verdict()
    return (verdict.healthz if path == "/healthz" else verdict.readyz), verdict.body()
