"""Small pure pieces: Grafana macro interpolation, $__interval, grid layout."""

from __future__ import annotations

import pytest

from dashboards.influxql import interpolate
from dashboards.panels import Layout
from dashboards.render import grafana_interval
from soundwatch.errors import BadInput


def test_interpolate_like_grafana():
    q = (
        "SELECT max(x) FROM m WHERE \"t\" = '$machine' AND ${machine_type} = 'a' AND $timeFilter "
        "GROUP BY time($__interval)"
    )
    out = interpolate(
        q, start_ms=1000, end_ms=2000, interval="15s", variables={"machine": "id_00", "machine_type": "fan"}
    )
    assert out == (
        "SELECT max(x) FROM m WHERE \"t\" = 'id_00' AND fan = 'a' AND time >= 1000ms and time <= 2000ms "
        "GROUP BY time(15s)"
    )
    with pytest.raises(BadInput, match=r"\$machine but no value"):
        interpolate(q, start_ms=0, end_ms=1)


def test_interval_rounds_up_to_a_nice_step():
    assert grafana_interval(0, 3_600_000) == "15s"  # 1 h / 300 points = 12 s -> 15 s
    assert grafana_interval(0, 60_000) == "1s"
    assert grafana_interval(0, 7 * 86_400_000) == "1h"


def test_layout_wraps_rows_and_numbers_panels():
    lay = Layout()
    a, b, c = lay.place({}, 16, 4), lay.place({}, 8, 6), lay.place({}, 12, 3)
    assert [p["id"] for p in (a, b, c)] == [1, 2, 3]
    assert a["gridPos"] == {"h": 4, "w": 16, "x": 0, "y": 0}
    assert b["gridPos"] == {"h": 6, "w": 8, "x": 16, "y": 0}
    assert c["gridPos"] == {"h": 3, "w": 12, "x": 0, "y": 6}  # below the taller panel of the row
