"""InfluxDB output: line-protocol points, two write paths, and a bounded, retrying buffer.

Points are idempotent: InfluxDB identifies a point by measurement + tag set +
timestamp, and a score point's timestamp is its window's ``end_ns``. Writing
the same window twice (a replay after a crash) overwrites the point instead of
adding one, which is what makes at-least-once delivery safe here.

Write paths, chosen by ``settings.influx.api``:

* ``v1`` — the InfluxDB 1.x HTTP API: ``POST /write?db=&rp=&precision=ns`` with
  optional user/password (also accepted by 2.x/3.x compatibility endpoints).
* ``v2`` — ``influxdb-client``'s write API (2.x/3.x): url, token, org, bucket.

:class:`BufferedSink` sits in front of either. ``add`` only appends to a memory
buffer bounded by ``max_buffer_points``; ``flush`` writes in batches of
``batch_size`` and, when the server is unreachable, backs off exponentially
*without blocking* (the next ``flush`` before the back-off ends returns at once).
Nothing is dropped during an outage: when the buffer is full, ``add`` raises
:class:`InfluxBackPressure` and the caller must stop consuming until a flush
succeeds. Only points the server rejects as malformed (HTTP 400) are dropped —
retrying them would wedge the pipeline forever — and they are counted and logged.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from soundwatch.errors import MissingDependency, SoundwatchError
from soundwatch.settings import InfluxSettings

log = logging.getLogger(__name__)

SCORE_MEASUREMENT = "asd_score"
ALERT_MEASUREMENT = "asd_alert"
PIPELINE_MEASUREMENT = "pipeline"


# ---------------------------------------------------------------------------- points
def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", r"\,").replace(" ", r"\ ")


def _field_value(value: float | int | bool | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"InfluxDB cannot store the non-finite float {value}")
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Point:
    """One InfluxDB point. ``time_ns`` is part of the point's identity (see module docstring)."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, float | int | bool | str]
    time_ns: int

    def to_line(self) -> str:
        if not self.fields:
            raise ValueError(f"point of {self.measurement} has no fields")
        tags = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(self.tags.items()) if v != "")
        fields = ",".join(f"{_escape_key(k)}={_field_value(v)}" for k, v in sorted(self.fields.items()))
        return f"{_escape_measurement(self.measurement)}{tags} {fields} {int(self.time_ns)}"


def score_point(*, machine_type: str, machine_id: str, model_version: str, end_ns: int, score: float,
                score_median: float, threshold: float, anomalous: bool) -> Point:  # fmt: skip
    """The ``asd_score`` point of one window (timestamp = window end, so replays overwrite)."""
    return Point(
        SCORE_MEASUREMENT,
        {"machine_type": machine_type, "machine_id": machine_id, "model_version": model_version},
        {
            "score": float(score),
            "score_median": float(score_median),
            "threshold": float(threshold),
            "anomalous": bool(anomalous),
        },  # fmt: skip
        end_ns,
    )


def alert_point(*, machine_type: str, machine_id: str, state: str, score_median: float, threshold: float,
                time_ns: int) -> Point:  # fmt: skip
    """The ``asd_alert`` point of an alert state change (Grafana annotations read it)."""
    return Point(ALERT_MEASUREMENT, {"machine_type": machine_type, "machine_id": machine_id},
                 {"state": state, "score_median": float(score_median), "threshold": float(threshold)},
                 time_ns)  # fmt: skip


# ---------------------------------------------------------------------------- errors
class InfluxWriteError(SoundwatchError):
    """A write failed. ``retryable`` is False only when the server rejected the data itself."""

    def __init__(self, message: str, hint: str | None = None, *, retryable: bool = True,
                 status: int | None = None) -> None:  # fmt: skip
        super().__init__(message, hint)
        self.retryable = retryable
        self.status = status


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


def _classify(status: int, body: str, where: str) -> InfluxWriteError:
    text = body.strip()[:500]
    if status == 400:
        return InfluxWriteError(f"{where} rejected the points as malformed (HTTP 400): {text}",
                                "this is a bug or a field-type conflict in the database; the points are dropped",
                                retryable=False, status=status)  # fmt: skip
    hints = {
        401: "check the InfluxDB credentials (SOUNDWATCH_INFLUX__USERNAME/PASSWORD or TOKEN)",
        403: "the credentials lack write permission on this database/bucket",
        404: "the database/bucket does not exist: create it (CREATE DATABASE ...) or fix the name",
    }
    return InfluxWriteError(f"{where} answered HTTP {status}: {text}",
                            hints.get(status, "InfluxDB is overloaded or failing; the write is retried"),
                            retryable=True, status=status)  # fmt: skip


# ---------------------------------------------------------------------------- writers
class LineWriter(Protocol):
    """Writes line-protocol lines or raises :class:`InfluxWriteError`."""

    def write(self, lines: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class V1HttpWriter:
    """InfluxDB 1.x ``/write`` endpoint (line protocol, nanosecond precision)."""

    def __init__(self, settings: InfluxSettings) -> None:
        import requests

        self._url = settings.url.rstrip("/") + "/write"
        self._params = {"db": settings.database, "precision": "ns"}
        if settings.retention_policy:
            self._params["rp"] = settings.retention_policy
        if settings.username:
            self._params["u"] = settings.username
            self._params["p"] = settings.password.get_secret_value() if settings.password else ""
        self._timeout = settings.timeout_s
        self._session = requests.Session()
        self._where = f"InfluxDB at {settings.url} (database {settings.database})"

    def write(self, lines: Sequence[str]) -> None:
        import requests

        body = "\n".join(lines).encode()
        try:
            resp = self._session.post(self._url, params=self._params, data=body, timeout=self._timeout)
        except requests.RequestException as exc:
            raise InfluxWriteError(
                f"cannot reach {self._where}: {type(exc).__name__}: {exc}",
                "start InfluxDB (soundwatch services up) or fix SOUNDWATCH_INFLUX__URL",
            ) from exc
        if resp.status_code != 204:
            raise _classify(resp.status_code, resp.text, self._where)

    def close(self) -> None:
        self._session.close()


class V2ClientWriter:
    """InfluxDB 2.x/3.x through ``influxdb-client``'s synchronous write API (retries are ours)."""

    def __init__(self, settings: InfluxSettings) -> None:
        try:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS
        except ImportError as exc:
            raise MissingDependency(
                "the v2 write path needs the influxdb-client package",
                "pip install influxdb-client, or set SOUNDWATCH_INFLUX__API=v1",
            ) from exc
        token = settings.token.get_secret_value() if settings.token else ""
        self._client = InfluxDBClient(url=settings.url, token=token, org=settings.org,
                                      timeout=int(settings.timeout_s * 1000), retries=False)  # fmt: skip
        self._api = self._client.write_api(write_options=SYNCHRONOUS)
        self._bucket, self._org = settings.bucket, settings.org
        self._where = f"InfluxDB at {settings.url} (bucket {settings.bucket}, org {settings.org})"

    def write(self, lines: Sequence[str]) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._api.write(
                bucket=self._bucket,
                org=self._org,
                record=list(lines),
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]  # the client types it as str
            )
        except ApiException as exc:
            raise _classify(int(exc.status or 0), str(exc.body or exc.reason), self._where) from exc
        except Exception as exc:  # urllib3/socket errors surface under several types: all mean "unreachable"
            raise InfluxWriteError(
                f"cannot reach {self._where}: {type(exc).__name__}: {exc}",
                "start InfluxDB or fix SOUNDWATCH_INFLUX__URL",
            ) from exc

    def close(self) -> None:
        self._api.close()
        self._client.close()


def make_writer(settings: InfluxSettings) -> LineWriter:
    return V2ClientWriter(settings) if settings.api == "v2" else V1HttpWriter(settings)


# ---------------------------------------------------------------------------- buffer
@dataclass
class SinkStats:
    written: int = 0  # points durably accepted by the server
    rejected: int = 0  # points dropped because the server called them malformed
    write_errors: int = 0  # failed write requests (each retried, or dropped if rejected)
    last_error: str = ""
    consecutive_failures: int = 0


class PointSink(Protocol):
    """What the worker needs from an output: add points, flush them, say how far writing got."""

    def add(self, points: Sequence[Point]) -> int: ...

    def flush(self, block_s: float = 0.0) -> bool: ...

    @property
    def done_upto(self) -> int: ...

    def close(self) -> None: ...


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
    backoff_base_s: float = 0.2
    backoff_max_s: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    stats: SinkStats = field(default_factory=SinkStats)
    _lines: deque[str] = field(default_factory=deque, init=False, repr=False)
    _added: int = field(default=0, init=False)
    _next_try_at: float = field(default=0.0, init=False)

    @classmethod
    def from_settings(cls, settings: InfluxSettings, writer: LineWriter | None = None) -> BufferedSink:
        return cls(writer or make_writer(settings), batch_size=settings.batch_size,
                   max_buffer_points=settings.max_buffer_points)  # fmt: skip

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
        self._lines.extend(lines)
        self._added += len(lines)
        return self._added

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
                log.warning("InfluxDB write failed (attempt %d, next in %.1fs, %d points buffered): %s",
                            self.stats.consecutive_failures, delay, len(self._lines), exc)  # fmt: skip
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

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------- stage health
class HealthReporter:
    """Best-effort ``pipeline`` points (tags ``stage``, ``worker``) for the pipeline-health dashboard.

    Used by the gateway and the feature workers, whose data path must never wait for InfluxDB:
    :meth:`report` never raises; a failed write is logged once per outage and the next report
    simply tries again.
    """

    def __init__(self, settings: InfluxSettings, stage: str, worker: str) -> None:
        self.settings = settings
        self.tags = {"stage": stage, "worker": worker}
        self._writer: LineWriter | None = None
        self._failing = False
        self.written = 0

    def report(self, fields: Mapping[str, float | int | bool]) -> bool:
        """Write one point with ``fields`` now; True when InfluxDB took it."""
        point = Point(PIPELINE_MEASUREMENT, self.tags, dict(fields), time.time_ns())
        try:
            if self._writer is None:
                self._writer = make_writer(self.settings)
            self._writer.write([point.to_line()])
        except Exception as exc:  # health is best effort: never let InfluxDB stop the data path
            if not self._failing:
                log.warning("cannot write %s health to InfluxDB (%s); the data path is unaffected",
                            self.tags["stage"], exc)  # fmt: skip
            self._failing = True
            return False
        if self._failing:
            log.info("%s health reaches InfluxDB again", self.tags["stage"])
        self._failing = False
        self.written += 1
        return True

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:  # closing an HTTP session cannot matter to the caller
                log.debug("closing the InfluxDB writer failed: %s", exc)
