"""A realistic hour of soundwatch data (the ground truth the dashboard tests compare against).

The scenario (10 s windows, the last hour up to ``now``):

* ``fan/id_00``  normal, then anomalous for the last 20 min; model v1 -> v2 30 min ago (threshold
  2.0 -> 2.2); an ``alerting`` event shortly after the anomaly started.
* ``fan/id_02``  normal all hour; an old false alarm (alerting, then normal) 50 min ago.
* ``pump/id_00`` normal, but silent for the last 30 min (stopped reporting).
* ``slider/id_00`` known to the registry, never reported.
* ``machine_status`` every 10 s for the three machines the scoring workers know: ``fan/id_00``
  alerting from its alert on, ``fan/id_02`` alerting during its false alarm, ``pump/id_00`` stale
  once it has been silent for more than ``STALE_AFTER_S``.
* pipeline: gateway ``gw-1`` (ingest), ``f-1`` (features; its ``chunks_skipped`` counter grows by
  ``SKIPPED`` 2 minutes before ``now``, ``chunks_conflicting`` stays 0), ``s-1``/``s-2`` (scoring;
  ``s-1`` has a growing write-error counter and a buffer during an outage).

The points are built by the core schema's builders (:mod:`soundwatch.influx.schema`) and written
through the scoring worker's sink (:class:`soundwatch.influx.sink.BufferedSink`). The ground truth is
kept in Python so the tests compare InfluxDB's answers with independently computed values.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from dashboards.machines import Machine
from soundwatch.influx.schema import Point, alert_point, machine_status_point, pipeline_point, score_point
from soundwatch.model.filters import StreamingMedian

STEP_S = 10
HOUR_S = 3600
MEDIAN_K = 5
STALE_AFTER_S = 60
SKIPPED = 3  # chunks the feature worker skipped 2 minutes before now
COUNTERS = {"chunks_skipped", "chunks_conflicting", "topic_resyncs"}  # written as ints, like the feature worker does

FAN0 = Machine("fan", "id_00")
FAN2 = Machine("fan", "id_02")
PUMP0 = Machine("pump", "id_00")
SLIDER0 = Machine("slider", "id_00")
KNOWN = [FAN0, FAN2, PUMP0, SLIDER0]


@dataclass
class ScorePoint:
    t: int  # seconds
    machine: Machine
    model_version: str
    score: float
    score_median: float
    threshold: float
    anomalous: bool


@dataclass
class Scenario:
    now_s: int
    start_s: int
    anomaly_from_s: int
    model_switch_s: int
    silent_from_s: int
    scores: list[ScorePoint] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    status: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start_ms(self) -> int:
        return self.start_s * 1000

    @property
    def end_ms(self) -> int:
        return self.now_s * 1000

    def of(self, machine: Machine) -> list[ScorePoint]:
        return [p for p in self.scores if p.machine == machine]

    def points(self) -> list[Point]:
        """The scenario as the scoring worker's InfluxDB points (scoring.influx builds them)."""
        out = [
            score_point(
                machine_type=p.machine.machine_type,
                machine_id=p.machine.machine_id,
                model_version=p.model_version,
                end_ns=p.t * 10**9,
                score=p.score,
                score_median=p.score_median,
                threshold=p.threshold,
                anomalous=p.anomalous,
            )
            for p in self.scores
        ]
        out += [
            alert_point(
                machine_type=a["machine"].machine_type,
                machine_id=a["machine"].machine_id,
                state=a["state"],
                score_median=a["score_median"],
                threshold=a["threshold"],
                time_ns=a["t"] * 10**9,
            )
            for a in self.alerts
        ]
        out += [
            pipeline_point(
                r["stage"],
                r["worker"],
                {k: v if k in COUNTERS else float(v) for k, v in r["fields"].items()},
                r["t"] * 10**9,
            )
            for r in self.pipeline
        ]
        out += [
            machine_status_point(
                machine_type=r["machine"].machine_type,
                machine_id=r["machine"].machine_id,
                seconds_since_audio=r["seconds_since_audio"],
                alerting=r["alerting"],
                stale=r["stale"],
                time_ns=r["t"] * 10**9,
            )
            for r in self.status
        ]
        return out

    def latest_status(self, machine: Machine) -> dict[str, Any]:
        return [r for r in self.status if r["machine"] == machine][-1]


def make_scenario(now_s: int) -> Scenario:
    start = now_s - HOUR_S
    sc = Scenario(now_s, start, anomaly_from_s=now_s - 1200, model_switch_s=now_s - 1800, silent_from_s=now_s - 1800)
    medians = {m: StreamingMedian(MEDIAN_K) for m in KNOWN}
    for k, t in enumerate(range(start + STEP_S, now_s, STEP_S)):
        for m in (FAN0, FAN2, PUMP0):
            if m == PUMP0 and t >= sc.silent_from_s:
                continue
            if m == FAN0:
                base = 3.0 if t >= sc.anomaly_from_s else 1.0
                version, threshold = ("v2", 2.2) if t >= sc.model_switch_s else ("v1", 2.0)
                raw = base + 0.3 * math.sin(k)
            elif m == FAN2:
                version, threshold, raw = "v1", 1.5, 0.8 + 0.1 * math.cos(k)
            else:
                version, threshold, raw = "v3", 1.0, 0.5 + 0.05 * math.sin(0.5 * k)
            raw = round(raw, 6)
            median = medians[m].update(raw)
            sc.scores.append(ScorePoint(t, m, version, raw, median, threshold, median > threshold))
        sc.pipeline.append({"t": t, "stage": "ingest", "worker": "gw-1", "fields": {"chunks_per_s": 4.0}})
        sc.pipeline.append(
            {
                "t": t,
                "stage": "features",
                "worker": "f-1",
                "fields": {
                    "windows_per_s": 2.0,
                    "consumer_lag": 5,
                    "chunks_skipped": SKIPPED if t >= now_s - 120 else 0,
                    "chunks_conflicting": 0,
                    "topic_resyncs": 0,
                },
            }
        )
        outage = now_s - 900 <= t < now_s - 600
        sc.pipeline.append(
            {
                "t": t,
                "stage": "scoring",
                "worker": "s-1",
                "fields": {
                    "windows_per_s": 1.0,
                    "consumer_lag": k % 7,
                    "write_errors": k // 6,
                    "buffer_points": 100 * (t - (now_s - 900)) if outage else 0,
                },
            }
        )
        sc.pipeline.append(
            {
                "t": t,
                "stage": "scoring",
                "worker": "s-2",
                "fields": {"windows_per_s": 1.5, "consumer_lag": 3, "write_errors": 0, "buffer_points": 0},
            }
        )
    first_bad = next(p for p in sc.of(FAN0) if p.anomalous)
    fan0_alert_s = first_bad.t + 20
    for t in range(start + STEP_S, now_s, STEP_S):
        for m in (FAN0, FAN2, PUMP0):
            heard = max((p.t for p in sc.of(m) if p.t <= t), default=None)
            if heard is None:
                continue
            since = float(t - heard)
            alerting = (m == FAN0 and t >= fan0_alert_s) or (m == FAN2 and now_s - 3000 <= t < now_s - 2900)
            sc.status.append(
                {
                    "t": t,
                    "machine": m,
                    "seconds_since_audio": since,
                    "alerting": alerting,
                    "stale": since > STALE_AFTER_S,
                }
            )
    sc.alerts = [
        {"t": now_s - 3000, "machine": FAN2, "state": "alerting", "score_median": 1.6, "threshold": 1.5},
        {"t": now_s - 2900, "machine": FAN2, "state": "normal", "score_median": 1.1, "threshold": 1.5},
        {
            "t": fan0_alert_s,
            "machine": FAN0,
            "state": "alerting",
            "score_median": first_bad.score_median,
            "threshold": first_bad.threshold,
        },
    ]
    return sc


def bucket_reduce(points: list[tuple[int, float]], bucket_s: int, how: str) -> dict[int, float]:
    """Group (t, value) by InfluxDB's epoch-aligned GROUP BY time(bucket) and reduce: ms -> value."""
    groups: dict[int, list[float]] = defaultdict(list)
    for t, v in points:
        groups[t // bucket_s * bucket_s * 1000].append(v)
    fn = {"max": max, "mean": lambda xs: sum(xs) / len(xs), "count": len}[how]
    return {k: float(fn(v)) for k, v in sorted(groups.items())}
