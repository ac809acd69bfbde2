"""Fixtures of the dashboard tests: the scenario of :mod:`dashboards_scenario` written to InfluxDB."""

from __future__ import annotations

import time

import pytest
from dashboards_scenario import STEP_S, Scenario, make_scenario

from soundwatch.influx.sink import BufferedSink
from soundwatch.settings import Settings


@pytest.fixture
def scenario(isolated_settings: Settings) -> Scenario:
    """The scenario written into the test's private database (returns the ground truth)."""
    sc = make_scenario(int(time.time()) // STEP_S * STEP_S)
    sink = BufferedSink.from_settings(isolated_settings.influx)
    try:
        sink.add(sc.points())
        assert sink.flush(block_s=30), sink.stats
    finally:
        sink.close()
    assert sink.stats.written == len(sc.scores) + len(sc.alerts) + len(sc.pipeline) + len(sc.status)
    return sc
