"""A simulated plant run end to end on the real services, measured from the outside.

Shared by the end-to-end test and `soundwatch bench e2e`: it starts the same processes as
`soundwatch run all` (gateway, Faust feature worker, scoring worker), watches the scores/alerts
topics, and polls InfluxDB to time when each point becomes visible there.

Latency of a point = time it was first seen in InfluxDB (polled every ``poll_s``) minus the
wall-clock time the gateway produced the newest audio chunk of its window (``origin_ns``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from deploy.observer import MachineView, PipelineObserver, percentile
from deploy.pipeline import Pipeline
from deploy.stages import PlantSource, pipeline_stages
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


class InfluxPointWatcher:
    """Polls InfluxDB for new ``asd_score`` points and notes when each was first visible."""

    def __init__(self, settings: Settings, poll_s: float = 0.1) -> None:
        self.influx = settings.influx
        self.poll_s = poll_s
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
        with InfluxClient(self.influx) as client:
            while not self._stop.is_set():
                since = max(0, self._max_ts - 20_000_000_000)
                q = f"SELECT {quote_ident(ix.SCORE)} FROM {score} WHERE time > {since} GROUP BY {by}"
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
                self._stop.wait(self.poll_s)


def run_scenario(
    settings: Settings, source: PlantSource, *, duration_s: float, log_dir: Path, until=None
) -> ScenarioResult:
    """Run the pipeline for ``duration_s`` (or until ``until(observer)`` is true) and measure it.

    ``settings`` reach the child processes through the environment, so a test's private topics,
    database and registry are what the workers use.
    """
    stages = pipeline_stages(settings, source, log_dir=log_dir)
    env = settings.to_env()
    for stage in stages:
        stage.env = {**env, **stage.env}
    observer = PipelineObserver(settings, keep_windows=False, watch_status=False).start()
    watcher = InfluxPointWatcher(settings).start()
    pipeline = Pipeline(stages, say=lambda m: None)
    started = time.monotonic()
    start_ns = time.time_ns()
    stop_early = threading.Event()

    def tick() -> None:
        if until is not None and until(observer):
            stop_early.set()

    pipeline.start()
    try:
        while time.monotonic() - started < duration_s and not stop_early.is_set():
            pipeline.watch_once()
            tick()
            time.sleep(0.5)
    finally:
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
    return ScenarioResult(views, latencies, counts, time.monotonic() - started, by_time)
