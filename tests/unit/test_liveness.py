"""The worker health contract as a pure function of reported progress (a fake clock, no waiting)."""

from __future__ import annotations

import json

from soundwatch.liveness import Progress, health_response


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _codes(progress: Progress) -> tuple[int, int]:
    health, ready = health_response("/healthz", progress), health_response("/readyz/", progress)
    assert health is not None and ready is not None
    return health[0], ready[0]


def test_starting_then_ready_then_stalled_only_while_input_waits():
    clock = Clock()
    p = Progress(120.0, clock)
    assert _codes(p) == (200, 503) and p.verdict().status == "starting"
    p.started()
    assert _codes(p) == (200, 200)
    clock.t += 10_000  # idle for hours, nothing waiting: alive
    p.input(lag=0, pending=0)
    assert _codes(p) == (200, 200)
    p.input(lag=5)  # records arrive: the stall clock starts now, not at the last progress
    clock.t += 119
    assert _codes(p) == (200, 200)
    clock.t += 2
    assert _codes(p) == (503, 503)
    body = json.loads(health_response("/healthz", p)[1])
    assert body["status"] == "stalled" and body["lag"] == 5 and body["waiting"] is True
    p.progressed(5)
    p.input(lag=0, pending=0)
    assert _codes(p) == (200, 200)


def test_a_record_being_handled_counts_as_waiting_and_an_outage_is_excused():
    clock = Clock()
    p = Progress(60.0, clock)
    p.started()
    p.handling(3)  # blocked inside the handler: no lag reading needed to notice
    clock.t += 61
    assert _codes(p) == (503, 503)
    p.excuse(True, "influx")  # InfluxDB away, back-pressure: a restart would not help
    p.excuse(True, "kafka")
    assert _codes(p) == (200, 200)
    p.excuse(False, "influx")
    assert _codes(p) == (200, 200)  # Kafka is still away
    p.excuse(False, "kafka")
    assert _codes(p) == (503, 503)
    p.progressed(3)
    assert _codes(p) == (200, 200)
    clock.t += 61
    p.input(pending=2)
    clock.t += 30
    assert _codes(p) == (200, 200)  # waiting for 30 s only


def test_other_paths_are_not_health_paths():
    assert health_response("/metrics", Progress(1.0)) is None
