"""A simulated plant run end to end on the real services, measured from the outside.

Shared by the end-to-end test and `soundwatch bench e2e`: it starts the same processes as
`soundwatch run all` (gateway, Faust feature worker, scoring worker), watches the scores/alerts
topics, and polls InfluxDB to time when each point becomes visible there.

Latency of a point = time it was first seen in InfluxDB (polled every ``poll_s``) minus the
wall-clock time the gateway produced the newest audio chunk of its window (``origin_ns``).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.observer import MachineView, PipelineObserver, percentile
from deploy.pipeline import Pipeline, StageProcess
from deploy.profiling import start_profiles
from deploy.resources import LagTarget, ResourceMonitor, listening_pid
from deploy.stages import PlantSource, pipeline_stages
from features.app import app_id
from soundwatch.errors import SoundwatchError
from soundwatch.influx import schema as ix
from soundwatch.influx.client import InfluxClient, quote_ident
from soundwatch.settings import Settings


@dataclass
class ScenarioResult:
    machines: list[MachineView]
    point_latencies_s: list[float]
    points_by_machine: dict[str, int]
    elapsed_s: float
    latency_by_time: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, latency)
    warmup_s: float = 20.0
    resources: dict[str, Any] | None = None  # ResourceMonitor.report() over the steady part, when measured
    timed_machines: int | None = None  # machines whose points were timed: a sample on a large plant (None: all)

    def alerted(self) -> list[str]:
        return sorted(v.key for v in self.machines if v.alert_spans())

    def steady_latencies(self) -> list[float]:
        """Latencies of points seen ``warmup_s`` after the first point (group joins, model loads, JIT are over)."""
        if not self.latency_by_time:
            return []
        start = self.latency_by_time[0][0] + self.warmup_s
        return [lat for t, lat in self.latency_by_time if t >= start]

    def p(self, q: float) -> float:
        return percentile(self.steady_latencies(), q)


_MAX_LOOKBACK_NS = 20_000_000_000  # a machine silent for longer no longer holds the polls back


LATENCY_SAMPLE = 64  # on larger plants the latency is timed on about this many machines (see run_scenario)


class InfluxPointWatcher:
    """Polls InfluxDB for new ``asd_score`` points and notes when each was first visible.

    ``machine_ids``: only the machines with these ids (all when None).
    """

    def __init__(self, settings: Settings, poll_s: float = 0.1, machine_ids: Sequence[str] | None = None) -> None:
        self.influx = settings.influx
        self.poll_s = poll_s
        self.only = ""
        if machine_ids is not None:
            ids = "|".join(re.escape(m) for m in sorted(machine_ids))
            self.only = f" AND {quote_ident(ix.MACHINE_ID)} =~ /^({ids})$/"
        self.first_seen_ns: dict[tuple[str, int], int] = {}
        self._max_ts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="influx-watcher", daemon=True)

    def start(self) -> InfluxPointWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        score, by = quote_ident(ix.SCORE_MEASUREMENT), f"{quote_ident(ix.MACHINE_TYPE)}, {quote_ident(ix.MACHINE_ID)}"
        newest: dict[str, int] = {}  # machine -> its newest point seen
        with InfluxClient(self.influx) as client:
            while not self._stop.is_set():
                # A machine's points become visible in time order (one scoring worker owns it), so only
                # points after the least advanced machine's newest can be new. Re-reading the last 20 s
                # every poll (as before) cost this process and InfluxDB more CPU than the pipeline's own
                # writes at a few hundred machines, on the cores the pipeline was measured on.
                lookback = self._max_ts - _MAX_LOOKBACK_NS
                since = max(0, min(newest.values(), default=0), lookback)
                q = f"SELECT {quote_ident(ix.SCORE)} FROM {score} WHERE time > {since}{self.only} GROUP BY {by}"
                try:
                    answer = client.query(q, epoch="ns")
                except SoundwatchError:
                    answer = []  # InfluxDB busy or restarting: the next poll catches up (first-seen only gets later)
                now = time.time_ns()
                for series in answer:
                    key = f"{series.tags[ix.MACHINE_TYPE]}/{series.tags[ix.MACHINE_ID]}"
                    for ts in series.column("time"):
                        self.first_seen_ns.setdefault((key, int(ts)), now)
                        self._max_ts = max(self._max_ts, int(ts))
                        newest[key] = max(newest.get(key, 0), int(ts))
                self._stop.wait(self.poll_s)


def _pids(stages: list[StageProcess], prefix: str) -> Callable[[], list[int]]:
    return lambda: [s.proc.pid for s in stages if s.name.startswith(prefix) and s.proc is not None]


def _port(address: str) -> int | None:
    """The port of a local ``host:port`` or ``http://host:port`` (None for a remote or unparsable address)."""
    first = address.split(",")[0].split("://")[-1].rstrip("/")
    host, _, port = first.rpartition(":")
    return int(port) if port.isdigit() and host in ("127.0.0.1", "localhost", "::1", "[::1]") else None


def resource_monitor(settings: Settings, stages: list[StageProcess]) -> ResourceMonitor:
    """CPU and memory of the pipeline's processes and of the broker and InfluxDB when they run on this host
    (found by their listening ports), and the lag of the feature and scoring consumer groups."""
    roles: dict[str, Callable[[], list[int]]] = {
        "gateway": _pids(stages, "gateway"),
        "features": _pids(stages, "features-"),
        "scoring": _pids(stages, "scoring-"),
    }
    for role, port in (("broker", _port(settings.kafka.bootstrap_servers)), ("influxd", _port(settings.influx.url))):
        pid = listening_pid(port) if port else None
        if pid is not None:
            roles[role] = lambda pid=pid: [pid]
    t = settings.kafka.topics
    lags = [
        LagTarget("features", app_id(settings), t.audio_raw),
        LagTarget("scoring", settings.scoring.group_id, t.features),
    ]
    return ResourceMonitor(settings, roles, lags)


def run_scenario(
    settings: Settings,
    source: PlantSource,
    *,
    duration_s: float,
    log_dir: Path,
    until=None,
    measure_resources: bool = False,
    profile_dir: Path | None = None,
) -> ScenarioResult:
    """Run the pipeline for ``duration_s`` (or until ``until(observer)`` is true) and measure it.

    ``settings`` reach the child processes through the environment, so a test's private topics,
    database and registry are what the workers use. ``measure_resources``: CPU, memory and consumer
    lag over the steady part (see :mod:`deploy.resources`) in :attr:`ScenarioResult.resources`.
    ``profile_dir``: py-spy samples each stage process over the steady part into that folder
    (:mod:`deploy.profiling`).
    """
    stages = pipeline_stages(settings, source, log_dir=log_dir)
    env = settings.to_env()
    for stage in stages:
        stage.env = {**env, **stage.env}
    observer = PipelineObserver(settings, keep_windows=False, watch_status=False).start()
    timed = _latency_sample(source)
    watcher = InfluxPointWatcher(settings, machine_ids=timed[1] if timed else None).start()
    pipeline = Pipeline(stages, say=lambda m: None)
    monitor = resource_monitor(settings, stages) if measure_resources else None
    machines = _machine_count(source) if measure_resources else 0
    started = time.monotonic()
    start_ns = time.time_ns()
    stop_early = threading.Event()

    profilers: list[Any] = []

    def tick() -> None:
        if until is not None and until(observer):
            stop_early.set()
        if profile_dir is not None and not profilers and watcher.first_seen_ns:
            first_s = (min(watcher.first_seen_ns.values()) - start_ns) / 1e9
            left = duration_s - (time.monotonic() - started) - 2.0
            if time.monotonic() - started >= first_s + ScenarioResult.warmup_s and left >= 5:
                pids = {st.name: st.proc.pid for st in stages if st.proc is not None}
                profilers.extend(start_profiles(pids, left, profile_dir))

    pipeline.start()
    if monitor is not None:
        monitor.start()
    try:
        while time.monotonic() - started < duration_s and not stop_early.is_set():
            pipeline.watch_once()
            tick()
            time.sleep(0.5)
    finally:
        ended = time.monotonic()
        if monitor is not None:
            monitor.sample_once()
            monitor.stop()
        for proc in profilers:  # py-spy writes its file when its duration is over
            proc.wait(timeout=30)
        pipeline.stop()
        time.sleep(1.0)
        watcher.stop()
        observer.stop()
    views = observer.snapshot()
    origins = {}
    with observer.lock:
        for v in views:
            origins.update(v.origins)
    latencies, by_time, counts = [], [], {}
    for (key, ts), seen_ns in sorted(watcher.first_seen_ns.items(), key=lambda kv: kv[1]):
        counts[key] = counts.get(key, 0) + 1
        origin = origins.get((key, ts))
        if origin:
            latencies.append((seen_ns - origin) / 1e9)
            by_time.append(((seen_ns - start_ns) / 1e9, (seen_ns - origin) / 1e9))
    result = ScenarioResult(views, latencies, counts, time.monotonic() - started, by_time)
    result.timed_machines = timed[0] if timed else None
    if monitor is not None:
        # the steady part: from warmup_s after the first point (as the latencies), else the second half
        since = started + (by_time[0][0] + result.warmup_s if by_time else duration_s / 2)
        result.resources = monitor.report(min(since, ended), ended, machines)
    return result


def _latency_sample(source: PlantSource) -> tuple[int, list[str]] | None:
    """On a simulated plant of more than ``LATENCY_SAMPLE`` machines: (machines timed, their ids), every
    k-th id. Timing every point made the bench, polling InfluxDB ten times a second, one of the largest
    CPU users on the node it measured; 64 machines give thousands of latencies a minute."""
    if source.kind != "sim" or source.machines.strip().isdigit():
        return None
    machines = [m.strip().partition("/") for m in source.machines.split(",") if m.strip()]
    if len(machines) <= LATENCY_SAMPLE:
        return None
    ids = sorted({i for _, _, i in machines})
    step = max(1, round(len(machines) / LATENCY_SAMPLE))
    chosen = ids[::step]
    timed = set(chosen)
    return sum(1 for _, _, i in machines if i in timed), chosen


def _machine_count(source: PlantSource) -> int:
    """Simulated machines of ``source`` (its ``--machines``: a count or a type/id list)."""
    if source.kind != "sim":
        raise ValueError("resources per machine are measured on a simulated plant (source kind 'sim')")
    spec = source.machines.strip()
    return int(spec) if spec.isdigit() else len([m for m in spec.split(",") if m.strip()])
