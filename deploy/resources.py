"""What a benchmark step costs: CPU time and resident memory per process, consumer lag per group.

:class:`ResourceMonitor` samples ``/proc/<pid>/stat`` of named roles (gateway, feature worker(s),
scoring worker(s), the broker, influxd) once a second, and the consumer groups' lag (end offsets minus
committed offsets) every few seconds, in a background thread. :meth:`ResourceMonitor.report` turns
the samples of a time span (the step after its warm-up) into the figures capacity planning needs:
CPU-seconds per machine-hour, peak resident memory, lag at the start/end of the span and its slope.

Linux only (``/proc``). A role whose process restarted during the step keeps the CPU time its
dead process used (its last sample), so a crash loop shows as cost, not as savings.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from soundwatch.kafka import make_admin, make_consumer
from soundwatch.settings import Settings

log = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcStat:
    cpu_s: float  # user + system time of the process so far
    rss_bytes: int


def read_proc(pid: int) -> ProcStat | None:
    """CPU time and resident memory of ``pid`` now, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    utime, stime, rss_pages = int(fields[11]), int(fields[12]), int(fields[21])
    return ProcStat((utime + stime) / _CLK_TCK, rss_pages * _PAGE)


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` of this host (a service started elsewhere: another checkout's
    ``soundwatch services up``, systemd), or None when none is, or its process cannot be inspected."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in wanted for fd in fds):
                return int(pid)
        except OSError:  # gone, or not ours to inspect
            continue
    return None


@dataclass(frozen=True)
class LagTarget:
    """A consumer group on a topic: its lag is the sum over partitions of end offset minus committed offset."""

    name: str  # the stage it belongs to: "features", "scoring"
    group: str
    topic: str


@dataclass
class _RoleTrack:
    cpu_by_pid: dict[int, float] = field(default_factory=dict)  # newest CPU time seen per pid (dead ones kept)
    peak_rss: int = 0

    def cpu(self) -> float:
        return sum(self.cpu_by_pid.values())


class ResourceMonitor:
    """Samples the processes of ``roles`` (name -> callable giving the role's pids now) and the lag of ``lags``."""

    def __init__(
        self,
        settings: Settings,
        roles: dict[str, Callable[[], list[int]]],
        lags: list[LagTarget] = (),  # type: ignore[assignment]
        *,
        every_s: float = 1.0,
        lag_every_s: float = 3.0,
    ) -> None:
        self.settings = settings
        self.roles = roles
        self.lags = list(lags)
        self.every_s = every_s
        self.lag_every_s = lag_every_s
        self.cpu_samples: list[tuple[float, dict[str, float]]] = []  # (monotonic time, role -> cumulative CPU s)
        self.lag_samples: list[tuple[float, dict[str, int]]] = []  # (monotonic time, stage -> records behind)
        self._tracks = {name: _RoleTrack() for name in roles}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)

    def start(self) -> ResourceMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    # ------------------------------------------------------------------ sampling
    def sample_once(self) -> None:
        now = time.monotonic()
        row: dict[str, float] = {}
        for name, pids in self.roles.items():
            track = self._tracks[name]
            for pid in pids():
                stat = read_proc(pid)
                if stat is None:
                    continue
                track.cpu_by_pid[pid] = stat.cpu_s
                track.peak_rss = max(track.peak_rss, stat.rss_bytes)
            row[name] = track.cpu()
        self.cpu_samples.append((now, row))

    def _run(self) -> None:
        admin = consumer = None
        next_lag = time.monotonic()
        try:
            if self.lags:
                admin = make_admin(self.settings)
                # one batch per partition and fetch: only its high-water mark is wanted (see end_offsets)
                consumer = make_consumer(
                    self.settings, group_id=None, enable_auto_commit=False, max_partition_fetch_bytes=1024
                )
            while not self._stop.is_set():
                self.sample_once()
                if admin is not None and time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + self.lag_every_s
                    self._sample_lag(admin, consumer)
                self._stop.wait(self.every_s)
        except Exception:  # measuring must never take the benchmark down
            log.exception("resource monitor stopped")
        finally:
            for client in (admin, consumer):
                if client is not None:
                    client.close()

    def _sample_lag(self, admin: Any, consumer: Any) -> None:
        row: dict[str, int] = {}
        for target in self.lags:
            lag = consumer_lag(admin, consumer, target.group, target.topic)
            if lag is not None:
                row[target.name] = lag
        self.lag_samples.append((time.monotonic(), row))

    # ------------------------------------------------------------------ figures
    def report(self, since: float, until: float, machines: int) -> dict[str, Any]:
        """Figures over ``[since, until]`` (monotonic times): see the module docstring."""
        span = [(t, row) for t, row in self.cpu_samples if since <= t <= until]
        cpu: dict[str, float | None] = {}
        if len(span) >= 2:
            (t0, first), (t1, last) = span[0], span[-1]
            hours = max(1e-9, (t1 - t0) / 3600.0)
            for name in self.roles:
                used = last.get(name, 0.0) - first.get(name, 0.0)
                cpu[name] = round(used / hours / max(1, machines), 2)
            cpu["total"] = round(sum(v for v in cpu.values() if v is not None), 2)
            seconds = t1 - t0
        else:
            seconds = 0.0
        cores = {k: round(v * machines / 3600.0, 3) for k, v in cpu.items() if v is not None}
        return {
            "cpu_s_per_machine_hour": cpu,
            "cpu_cores": cores,
            "cpu_span_s": round(seconds, 1),
            "rss_mb": {name: round(t.peak_rss / 2**20, 1) for name, t in self._tracks.items()},
            "consumer_lag": self._lag_report(since, until),
        }

    def _lag_report(self, since: float, until: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for target in self.lags:
            in_span = [(t, row) for t, row in self.lag_samples if since <= t <= until]
            series = [(t, row[target.name]) for t, row in in_span if target.name in row]
            entry: dict[str, Any] = {"group": target.group, "topic": target.topic, "samples": len(series)}
            if series:
                values = [v for _, v in series]
                mean = round(sum(values) / len(values), 1)
                entry.update(first=values[0], last=values[-1], max=max(values), mean=mean)
                entry["slope_per_min"] = round(_slope(series) * 60.0, 2)
            out[target.name] = entry
        return out


def _slope(series: list[tuple[float, int]]) -> float:
    """Least-squares slope (records per second) of a lag series: ~0 when the consumers keep up."""
    if len(series) < 2:
        return 0.0
    n = len(series)
    mt = sum(t for t, _ in series) / n
    mv = sum(v for _, v in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    return 0.0 if var == 0 else sum((t - mt) * (v - mv) for t, v in series) / var


def _committed(admin: Any, group: str) -> dict[Any, Any]:
    """``{TopicPartition: OffsetAndMetadata}`` committed by ``group`` (kafka-python 3 and 2 spellings)."""
    if hasattr(admin, "list_group_offsets"):
        return admin.list_group_offsets({group: None}).get(group, {})
    return admin.list_consumer_group_offsets(group)


def end_offsets(consumer: Any, tps: list[Any], timeout_s: float = 5.0) -> dict[Any, int]:
    """The high-water mark of each partition, as a fetch answers it.

    Not ``consumer.end_offsets``: the local broker (Tansu 0.6) answers ListOffsets with the base offset
    of the last record *batch* + 1, short by the batch's other records. ``consumer`` (no group) is
    assigned ``tps``, sent to that listed offset - 1 (inside the last batch) and polled once.
    """
    listed = consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, max(0, listed[tp] - 1))
    deadline = time.monotonic() + timeout_s
    out: dict[Any, int] = {}
    while time.monotonic() < deadline and len(out) < len(tps):
        consumer.poll(timeout_ms=200)
        for tp in tps:
            high = consumer.highwater(tp)
            if high is not None and high >= listed[tp]:
                out[tp] = high
    for tp in tps:  # no fetch answer: the listed offset is the best known
        out.setdefault(tp, listed[tp])
    return out


def consumer_lag(admin: Any, consumer: Any, group: str, topic: str) -> int | None:
    """Records of ``topic`` not yet committed by ``group`` (a partition without a commit counts from its
    beginning), or None when the broker does not answer. ``consumer`` is this module's own (no group)."""
    from kafka import TopicPartition  # deferred: loads kafka

    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:  # a topic created after the consumer's last metadata update
            consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return None
        begins = consumer.beginning_offsets(tps)
        ends = end_offsets(consumer, tps)
        committed = _committed(admin, group)
    except Exception as exc:  # lag is a measurement: a slow broker skips one sample
        log.debug("lag of %s on %s unavailable: %r", group, topic, exc)
        return None
    total = 0
    for tp in tps:
        done = committed.get(tp)
        position = done.offset if done is not None and done.offset >= 0 else begins[tp]
        total += max(0, ends[tp] - position)
    return total
