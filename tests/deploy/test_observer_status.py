"""The demo's live view names a silent machine STALE — from the scoring workers' machine_status points,
or, when no worker reports, from its own clock — never "normal" with an old score."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from deploy.demo import live_table
from deploy.observer import PipelineObserver
from soundwatch.contracts import Score, machine_key
from soundwatch.influx.client import InfluxClient
from soundwatch.influx.schema import machine_status_point
from soundwatch.kafka import make_producer
from soundwatch.settings import Settings, load_settings

pytestmark = pytest.mark.integration


def _rows(observer: PipelineObserver) -> dict[str, str]:
    """The live table as text, one line per machine."""
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(live_table(observer, time.monotonic(), "test"))
    lines = console.export_text().splitlines()
    return {key: next(line for line in lines if key in line) for key in ("fan/id_00", "fan/id_01")}


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_live_view_shows_stale_machines(isolated_settings: Settings):
    s = load_settings(
        **{k: getattr(isolated_settings, k).model_dump() for k in ("kafka", "redis", "influx")},
        scoring={**isolated_settings.scoring.model_dump(), "status_interval_s": 1.0, "stale_after_s": 3.0},
    )
    observer = PipelineObserver(s, keep_windows=False).start()
    try:
        # two machines score now; the workers report fan/id_01 as stale (its audio stopped 75 s ago)
        producer = make_producer(s)
        for machine_id in ("id_00", "id_01"):
            score = Score("fan", machine_id, "v0001", time.time_ns(), 0.5, 0.5, 1.0, False)
            producer.send(s.kafka.topics.scores, key=machine_key("fan", machine_id), value=score.encode())
        producer.flush(10)
        producer.close()
        now = time.time_ns()
        with InfluxClient(s.influx) as influx:
            influx.write(
                [
                    machine_status_point(
                        machine_type="fan",
                        machine_id="id_00",
                        seconds_since_audio=0.4,
                        alerting=False,
                        stale=False,
                        time_ns=now,
                    ).to_line(),
                    machine_status_point(
                        machine_type="fan",
                        machine_id="id_01",
                        seconds_since_audio=75.0,
                        alerting=False,
                        stale=True,
                        time_ns=now,
                    ).to_line(),
                ]
            )
        _wait(
            lambda: {v.key: v.status for v in observer.snapshot()} == {"fan/id_00": "normal", "fan/id_01": "stale"},
            30,
            "the workers' status in the view",
        )
        views = {v.key: v for v in observer.snapshot()}
        assert not observer.is_stale(views["fan/id_00"]) and observer.is_stale(views["fan/id_01"])
        rows = _rows(observer)
        assert "STALE" in rows["fan/id_01"] and "no audio for 75 s" in rows["fan/id_01"]
        assert "normal" in rows["fan/id_00"] and "STALE" not in rows["fan/id_00"]

        # no fresh worker status any more (3 intervals): the view's own clock says id_00 went silent too
        _wait(lambda: observer.is_stale(views["fan/id_00"]), 30, "the fallback to the view's own clock")
        assert "STALE" in _rows(observer)["fan/id_00"]
    finally:
        observer.stop()
