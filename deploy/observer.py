"""Watch a running pipeline from the outside: the scores, alerts and feature-window topics, and the
scoring workers' ``machine_status`` points.

Used by the demo's live terminal view and report, and by the end-to-end benchmark. It reads
with its own assigned consumer (no group, so it never steals partitions from the workers).

Staleness comes from the scoring workers (the fleet dashboard's status query, polled every few
seconds): a machine whose audio stopped is STALE there, and so here. When no worker has reported
a machine for three status intervals (worker or InfluxDB down), the view falls back to its own
clock: no score for ``scoring.stale_after_s`` is stale too — never "normal" with an old score.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from dashboards import queries
from dashboards.influxql import interpolate
from soundwatch.contracts import AlertEvent, AlertState, ContractError, FeatureWindow, Score
from soundwatch.errors import SoundwatchError
from soundwatch.influx import schema as ix
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import make_consumer
from soundwatch.settings import Settings

NS = 1_000_000_000
_STATUS_POLL_S = 2.0

log = logging.getLogger(__name__)


@dataclass
class MachineView:
    machine_type: str
    machine_id: str
    times_ns: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    medians: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    model_version: str = ""
    state: AlertState = AlertState.NORMAL
    alerts: list[AlertEvent] = field(default_factory=list)
    recent_windows: deque[FeatureWindow] = field(default_factory=lambda: deque(maxlen=32))
    alert_windows: list[FeatureWindow] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    origins: dict[tuple[str, int], int] = field(default_factory=dict)  # (key, window end ns) -> origin ns
    received_ns: int = 0  # wall clock when the newest score arrived here
    status: str = ""  # the scoring workers' latest machine_status state ("" = none yet)
    status_ns: int = 0  # wall-clock time of that report
    seconds_since_audio: float | None = None  # as of that report

    @property
    def key(self) -> str:
        return f"{self.machine_type}/{self.machine_id}"

    @property
    def ratio(self) -> float:
        """Latest median score relative to the threshold (1.0 = at the threshold)."""
        if not self.medians or self.thresholds[-1] == 0:
            return float("nan")
        return self.medians[-1] / self.thresholds[-1]

    def stale(self, now_ns: int, *, stale_after_s: float, status_interval_s: float) -> bool:
        """No audio for ``stale_after_s``: the workers' verdict while they report, else this view's clock."""
        if self.status and now_ns - self.status_ns <= 3 * status_interval_s * NS:
            return self.status == ix.MachineState.STALE.value
        return now_ns - self.received_ns > stale_after_s * NS

    def alert_spans(self) -> list[tuple[int, int | None]]:
        """(start_ns, end_ns or None while still alerting) of each alert."""
        spans: list[tuple[int, int | None]] = []
        start: int | None = None
        for event in self.alerts:
            if event.current is AlertState.ALERTING and start is None:
                start = event.timestamp_ns
            elif event.current is AlertState.NORMAL and start is not None:
                spans.append((start, event.timestamp_ns))
                start = None
        if start is not None:
            spans.append((start, None))
        return spans


class PipelineObserver:
    """Consume the scores/alerts/features topics in a background thread into per-machine views."""

    def __init__(
        self, settings: Settings, *, from_beginning: bool = False, keep_windows: bool = True, watch_status: bool = True
    ) -> None:
        self.settings = settings
        self.from_beginning = from_beginning
        self.keep_windows = keep_windows
        self.watch_status = watch_status
        self.machines: dict[str, MachineView] = {}
        self.lock = threading.Lock()
        self.started_at = time.monotonic()
        self.windows_seen = 0
        self.errors = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline-observer", daemon=True)

    def start(self, timeout_s: float = 30.0) -> PipelineObserver:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("the observer could not subscribe to the pipeline topics")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def view(self, machine_type: str, machine_id: str) -> MachineView:
        key = f"{machine_type}/{machine_id}"
        if key not in self.machines:
            self.machines[key] = MachineView(machine_type, machine_id)
        return self.machines[key]

    def snapshot(self) -> list[MachineView]:
        with self.lock:
            return [self.machines[k] for k in sorted(self.machines)]

    def windows_per_s(self) -> float:
        return self.windows_seen / max(1e-9, time.monotonic() - self.started_at)

    def is_stale(self, view: MachineView, now_ns: int | None = None) -> bool:
        s = self.settings.scoring
        return view.stale(
            time.time_ns() if now_ns is None else now_ns,
            stale_after_s=s.stale_after_s,
            status_interval_s=s.status_interval_s,
        )

    # ------------------------------------------------------------------ consuming
    def _run(self) -> None:
        from kafka import TopicPartition  # deferred: loads kafka

        t = self.settings.kafka.topics
        topics = [t.scores, t.alerts] + ([t.features] if self.keep_windows else [])
        consumer = make_consumer(self.settings, group_id=None, enable_auto_commit=False)
        influx = InfluxClient(self.settings.influx.model_copy(update={"timeout_s": 2.0}))  # a poll must not stall
        try:
            parts = [
                TopicPartition(topic, p) for topic in topics for p in sorted(consumer.partitions_for_topic(topic) or [])
            ]
            consumer.assign(parts)
            if self.from_beginning:
                consumer.seek_to_beginning(*parts)
            else:
                consumer.seek_to_end(*parts)
                for tp in parts:  # resolve the end offsets now, so nothing produced later is skipped
                    consumer.position(tp)
            self._ready.set()
            next_status = time.monotonic()
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for rec in records:
                        self._handle(tp.topic, rec.value)
                if self.watch_status and time.monotonic() >= next_status:
                    next_status = time.monotonic() + _STATUS_POLL_S
                    self._poll_status(influx)
        except Exception:  # the observer must never take the demo down; the workers keep running
            log.exception("pipeline observer stopped")
        finally:
            self._ready.set()
            consumer.close()
            influx.close()

    def _poll_status(self, influx: InfluxClient) -> None:
        """The scoring workers' latest ``machine_status`` per machine (the fleet dashboard's query)."""
        end_ms = int(time.time() * 1000)
        window_ms = int(3 * self.settings.scoring.status_interval_s * 1000)
        q = interpolate(queries.FLEET_MACHINE_STATUS, start_ms=end_ms - window_ms, end_ms=end_ms)
        try:
            answer = influx.query(q, epoch="ns")
        except SoundwatchError as exc:  # InfluxDB away: the views fall back to their own clock
            log.debug("machine status unavailable: %s", exc)
            return
        with self.lock:
            for series in answer:
                for row in series.rows():
                    v = self.view(series.tags[ix.MACHINE_TYPE], series.tags[ix.MACHINE_ID])
                    v.status, v.status_ns = str(row[ix.STATE]), int(row["time"])
                    v.seconds_since_audio = float(row[ix.SECONDS_SINCE_AUDIO])

    def _handle(self, topic: str, value: bytes) -> None:
        t = self.settings.kafka.topics
        now_ns = time.time_ns()
        try:
            with self.lock:
                if topic == t.scores:
                    s = Score.decode(value)
                    v = self.view(s.machine_type, s.machine_id)
                    v.times_ns.append(s.timestamp_ns)
                    v.scores.append(s.score)
                    v.medians.append(s.score_median)
                    v.thresholds.append(s.threshold)
                    v.model_version = s.model_version
                    v.received_ns = now_ns
                    if s.origin_ns:
                        v.latencies_s.append((now_ns - s.origin_ns) / 1e9)
                        v.origins[(v.key, s.timestamp_ns)] = s.origin_ns
                    self.windows_seen += 1
                elif topic == t.alerts:
                    a = AlertEvent.decode(value)
                    v = self.view(a.machine_type, a.machine_id)
                    v.alerts.append(a)
                    v.state = a.current
                    if a.current is AlertState.ALERTING:
                        window = _window_at(v.recent_windows, a.timestamp_ns)
                        if window is not None:
                            v.alert_windows.append(window)
                elif topic == t.features:
                    w = FeatureWindow.decode(value)
                    self.view(w.machine_type, w.machine_id).recent_windows.append(w)
        except ContractError:
            self.errors += 1


def _window_at(windows: deque[FeatureWindow], end_ns: int) -> FeatureWindow | None:
    """The window that ends at ``end_ns`` (the one that raised an alert), else the latest before it."""
    best = None
    for w in windows:
        if w.end_ns == end_ns:
            return w
        if w.end_ns <= end_ns and (best is None or w.end_ns > best.end_ns):
            best = w
    return best


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")
