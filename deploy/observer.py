"""Watch a running pipeline from the outside: the scores, alerts and feature-window topics.

Used by the demo's live terminal view and report, and by the end-to-end benchmark. It reads
with its own assigned consumer (no group, so it never steals partitions from the workers).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from soundwatch.contracts import AlertEvent, AlertState, ContractError, FeatureWindow, Score
from soundwatch.kafka import make_consumer
from soundwatch.settings import Settings

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

    @property
    def key(self) -> str:
        return f"{self.machine_type}/{self.machine_id}"

    @property
    def ratio(self) -> float:
        """Latest median score relative to the threshold (1.0 = at the threshold)."""
        if not self.medians or self.thresholds[-1] == 0:
            return float("nan")
        return self.medians[-1] / self.thresholds[-1]

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

    def __init__(self, settings: Settings, *, from_beginning: bool = False, keep_windows: bool = True) -> None:
        self.settings = settings
        self.from_beginning = from_beginning
        self.keep_windows = keep_windows
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

    # ------------------------------------------------------------------ consuming
    def _run(self) -> None:
        from kafka import TopicPartition

        t = self.settings.kafka.topics
        topics = [t.scores, t.alerts] + ([t.features] if self.keep_windows else [])
        consumer = make_consumer(self.settings, group_id=None, enable_auto_commit=False)
        try:
            parts = [TopicPartition(topic, p) for topic in topics
                     for p in sorted(consumer.partitions_for_topic(topic) or [])]  # fmt: skip
            consumer.assign(parts)
            if self.from_beginning:
                consumer.seek_to_beginning(*parts)
            else:
                consumer.seek_to_end(*parts)
                for tp in parts:  # resolve the end offsets now, so nothing produced later is skipped
                    consumer.position(tp)
            self._ready.set()
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for rec in records:
                        self._handle(tp.topic, rec.value)
        except Exception:  # the observer must never take the demo down; the workers keep running
            log.exception("pipeline observer stopped")
        finally:
            self._ready.set()
            consumer.close()

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
