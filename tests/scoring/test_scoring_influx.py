"""The InfluxDB sink: buffer/back-off logic, and both write dialects against the real InfluxDB 1.6."""

from __future__ import annotations

import pytest
from influx_v2_bridge import V2Bridge
from scoring_helpers import T0_NS, influx_query

from soundwatch.influx.client import InfluxClient, InfluxWriteError
from soundwatch.influx.schema import score_point
from soundwatch.influx.sink import BufferedSink, InfluxBackPressure


def _points(n: int, version: str = "v0001", offset: int = 0):
    return [
        score_point(
            machine_type="fan",
            machine_id=f"id_{i % 2:02d}",
            model_version=version,
            end_ns=T0_NS + (offset + i) * 1_000_000_000,
            score=float(i),
            score_median=float(i) / 2,
            threshold=3.0,
            anomalous=i > 3,
        )
        for i in range(n)
    ]


class FlakyWriter:
    """A LineWriter that is down for the first ``fail`` calls (tests the buffer, not a server)."""

    def __init__(self, fail: int, retryable: bool = True) -> None:
        self.fail, self.retryable, self.calls, self.lines = fail, retryable, 0, []

    def write(self, lines):
        self.calls += 1
        if self.calls <= self.fail:
            raise InfluxWriteError("down", retryable=self.retryable, status=503 if self.retryable else 400)
        self.lines.extend(lines)

    def close(self):
        pass


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_flush_due_writes_full_batches_at_once_and_the_rest_after_the_interval():
    clock = FakeClock()
    writer = FlakyWriter(fail=0)
    sink = BufferedSink(writer, batch_size=4, flush_interval_s=0.2, clock=clock, sleep=clock.sleep)
    assert sink.flush_due() is True and writer.calls == 0  # nothing to write
    sink.add(_points(3))
    assert sink.flush_due() is False and writer.calls == 0  # not a batch yet, not waited long enough
    clock.sleep(0.1)
    sink.add(_points(1, offset=3))  # a full batch: written now
    assert sink.flush_due() is True and writer.calls == 1 and len(writer.lines) == 4
    sink.add(_points(2, offset=4))
    clock.sleep(0.19)
    assert sink.flush_due() is False and writer.calls == 1
    clock.sleep(0.01)  # the oldest point waited the interval
    assert sink.flush_due() is True and writer.calls == 2 and len(writer.lines) == 6 and sink.done_upto == 6


def test_buffer_backs_off_exponentially_without_blocking_and_loses_nothing():
    clock = FakeClock()
    writer = FlakyWriter(fail=3)
    sink = BufferedSink(writer, batch_size=4, max_buffer_points=10, backoff_base_s=1.0, clock=clock, sleep=clock.sleep)
    assert sink.add(_points(6)) == 6
    assert sink.flush() is False and writer.calls == 1  # down: backs off 1 s
    assert sink.flush() is False and writer.calls == 1  # inside the back-off: no request at all
    clock.t = 1.0
    assert sink.flush() is False and writer.calls == 2  # next back-off 2 s
    clock.t = 2.5
    assert sink.flush() is False and writer.calls == 2
    clock.t = 3.0
    assert sink.flush() is False and writer.calls == 3  # next back-off 4 s
    with pytest.raises(InfluxBackPressure, match="6 of 10 points held"):
        sink.add(_points(5))
    assert sink.done_upto == 0 and len(sink) == 6
    assert sink.flush(block_s=10.0) is True  # sleeps through the back-off, then writes in batches of 4
    assert clock.t == 7.0 and writer.calls == 5
    assert writer.lines == [p.to_line() for p in _points(6)]
    assert sink.done_upto == 6 and sink.stats.write_errors == 3 and sink.stats.consecutive_failures == 0


def test_malformed_points_are_dropped_and_counted_not_retried_forever():
    sink = BufferedSink(FlakyWriter(fail=1, retryable=False), batch_size=2)
    sink.add(_points(3))
    assert sink.flush() is True
    assert sink.stats.rejected == 2 and sink.stats.written == 1 and sink.done_upto == 3


@pytest.mark.integration
def test_v1_path_writes_idempotent_points_readable_with_influxql(isolated_settings):
    s = isolated_settings
    sink = BufferedSink.from_settings(s.influx)
    assert isinstance(sink.writer, InfluxClient)
    sink.add(_points(10))
    assert sink.flush(block_s=5) is True
    sink.add(_points(10))  # a replay: same tags + timestamps
    assert sink.flush(block_s=5) is True
    rows = influx_query(s.influx.url, s.influx.database, "SELECT * FROM asd_score")
    assert len(rows) == 10
    assert rows[0]["time"] == T0_NS and rows[0]["score"] == 0.0 and rows[0]["anomalous"] is False
    assert rows[0]["machine_type"] == "fan" and rows[0]["model_version"] == "v0001"
    sink.close()


@pytest.mark.integration
def test_v1_path_reports_a_missing_database_as_retryable(isolated_settings):
    s = isolated_settings
    writer = InfluxClient(s.influx.model_copy(update={"database": "no_such_db_" + s.influx.database}))
    with pytest.raises(InfluxWriteError, match="HTTP 404") as info:
        writer.write([p.to_line() for p in _points(1)])
    assert info.value.retryable and "CREATE DATABASE" in (info.value.hint or "")


@pytest.mark.integration
def test_v2_path_through_bridge_to_the_real_influxdb(isolated_settings):
    from pydantic import SecretStr

    s = isolated_settings
    with V2Bridge(s.influx.url, token="t0ken", org="plant") as bridge:
        v2 = s.influx.model_copy(
            update={
                "api": "v2",
                "url": bridge.url,
                "token": SecretStr("t0ken"),
                "org": "plant",
                "bucket": s.influx.database,
            }
        )
        writer = InfluxClient(v2)
        sink = BufferedSink(writer, batch_size=4)
        sink.add(_points(6, version="v0002"))
        assert sink.flush(block_s=10) is True
        sink.add(_points(6, version="v0002"))  # replay
        assert sink.flush(block_s=10) is True
        assert bridge.requests[0] == {
            "path": "/api/v2/write",
            "org": "plant",
            "bucket": s.influx.database,
            "precision": "ns",
        }
        sink.close()

        bad = InfluxClient(v2.model_copy(update={"token": SecretStr("wrong")}))
        with pytest.raises(InfluxWriteError, match="HTTP 401") as info:
            bad.write([p.to_line() for p in _points(1)])
        assert info.value.retryable
        bad.close()
    rows = influx_query(s.influx.url, s.influx.database, "SELECT score FROM asd_score WHERE model_version='v0002'")
    assert len(rows) == 6
