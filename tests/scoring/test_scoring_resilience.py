"""Failure behaviour on the real services: an InfluxDB outage, and a worker killed with SIGKILL.

The shared InfluxDB on 8086 is never stopped: the outage test runs its own influxd on free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from running_workers import running_worker
from scoring_helpers import (
    count_points,
    influx_query,
    make_window,
    produce,
    read_topic,
    wait_for,
)

from deploy.private_services import PrivateInflux, plumbing_model
from soundwatch.contracts import AlertEvent, AlertState
from soundwatch.influx.client import InfluxClient
from soundwatch.model.filters import causal_median
from soundwatch.settings import Settings, load_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_influx(tmp_path: Path):
    if shutil.which("influxd") is None:
        pytest.skip("influxd not installed (apt-get install -y influxdb)")
    server = PrivateInflux(tmp_path / "influxd").start()
    try:
        yield server
    finally:
        server.kill()


def _with(settings: Settings, **sections: dict) -> Settings:
    data = {
        k: getattr(settings, k).model_dump()
        for k in ("kafka", "redis", "influx", "grafana", "ingest", "stream", "scoring", "services")
    }
    for name, update in sections.items():
        data[name] = {**data[name], **update}
    return load_settings(**data, features=settings.features.model_dump(), registry_root=settings.registry_root)


def _committed(settings: Settings) -> int:
    from kafka import TopicPartition

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=settings.scoring.group_id)
    try:
        parts = [TopicPartition(settings.kafka.topics.features, p) for p in range(settings.kafka.topics.partitions)]
        return sum(consumer.committed(tp) or 0 for tp in parts)
    finally:
        consumer.close(autocommit=False)


def test_influx_outage_pauses_consumption_and_loses_no_point(scoring_settings, private_influx):
    s = _with(
        scoring_settings,
        influx={"url": private_influx.url, "max_buffer_points": 10, "batch_size": 5, "timeout_s": 2.0},
        scoring={"max_batch": 4},
    )
    with InfluxClient(s.influx) as client:
        client.create_database()
    plumbing_model(s.registry_root, "fan", ["id_00", "id_01"])
    first = [make_window("fan", m, i) for i in range(3) for m in ("id_00", "id_01")]
    later = [make_window("fan", m, i) for i in range(3, 18) for m in ("id_00", "id_01")]
    with running_worker(s) as worker:
        produce(s, first)
        wait_for(lambda: count_points(s, private_influx.url) == len(first), 60, "points before the outage")
        private_influx.kill()
        produce(s, later)
        # the buffer (10 points) fills: the worker must pause its partitions instead of dropping
        wait_for(lambda: worker._held is not None, 60, "back-pressure pause")
        assert worker.metrics.paused._value.get() == 1
        assert _committed(s) < len(first) + len(later)
        time.sleep(1.0)
        private_influx.start()
        wait_for(lambda: count_points(s, private_influx.url) == len(first) + len(later), 60, "all points after")
        wait_for(lambda: not worker._pending and worker._held is None, 30, "commits to catch up")
        assert worker.sink.stats.write_errors > 0
    rows = influx_query(private_influx.url, s.influx.database, "SELECT score FROM asd_score GROUP BY machine_id")
    assert sorted((r["machine_id"], r["time"]) for r in rows) == sorted((w.machine_id, w.end_ns) for w in first + later)
    assert _committed(s) == len(first) + len(later)


def _env_for(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("kafka", "redis", "influx", "scoring", "features"):
        env[f"SOUNDWATCH_{name.upper()}"] = json.dumps(getattr(settings, name).model_dump(mode="json"))
    env["SOUNDWATCH_REGISTRY_ROOT"] = str(settings.registry_root)
    env.pop("SOUNDWATCH_CONFIG", None)
    return env


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scoring.cli", "run"],
        cwd=REPO,
        env=_env_for(settings),
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
    )  # noqa: SIM115


def test_worker_killed_and_restarted_loses_no_window_and_duplicates_no_point(scoring_settings, tmp_path):
    s = _with(scoring_settings, scoring={"max_batch": 4, "max_wait_ms": 10})
    machines = ["id_00", "id_01", "id_02"]
    plumbing_model(s.registry_root, "fan", machines, median_k=3)
    n_per = 30
    windows = [make_window("fan", m, i) for i in range(n_per) for m in machines]
    log = tmp_path / "worker.log"

    def paced(batch: list) -> None:
        for start in range(0, len(batch), 6):
            produce(s, batch[start : start + 6])
            time.sleep(0.15)

    # The first half is streamed to the first worker, which is killed mid-stream; the second half arrives
    # while no worker runs (so the restarted worker is certainly up and has work when it is stopped).
    half = len(windows) // 2
    first = _start_worker(s, log)
    try:
        producer = threading.Thread(target=paced, args=(windows[:half],), daemon=True)
        producer.start()
        wait_for(lambda: count_points(s) >= 20, 90, "the first worker to write points")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        written_before_restart = count_points(s)
        producer.join(60)
        paced(windows[half:])
        second = _start_worker(s, log)
        try:
            wait_for(
                lambda: count_points(s) == len(windows) and _committed(s) == len(windows),
                120,
                "all windows scored and committed after the restart",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert written_before_restart < len(windows)
    q = "SELECT score, score_median FROM asd_score GROUP BY machine_id"
    rows = influx_query(s.influx.url, s.influx.database, q)
    assert len(rows) == len(windows)  # no window lost, no point duplicated
    for m in machines:
        mine = sorted((r for r in rows if r["machine_id"] == m), key=lambda r: r["time"])
        assert [r["time"] for r in mine] == [w.end_ns for w in windows if w.machine_id == m]
        # the median filter state survived the kill: every median is the causal median of the raw scores
        raw = np.array([r["score"] for r in mine])
        np.testing.assert_allclose([r["score_median"] for r in mine], causal_median(raw, 3))


def _rewind_group(settings: Settings) -> None:
    """Commit offset 0 on every partition: what a crash after the writes but before the commit leaves behind."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from soundwatch.kafka import make_consumer

    consumer = make_consumer(settings, group_id=settings.scoring.group_id)
    try:
        parts = [TopicPartition(settings.kafka.topics.features, p) for p in range(settings.kafka.topics.partitions)]
        consumer.assign(parts)
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in parts})
    finally:
        consumer.close(autocommit=False)


def test_replay_of_written_windows_rewrites_identical_points_and_raises_no_second_alert(scoring_settings):
    s = scoring_settings
    plumbing_model(s.registry_root, "fan", ["id_00", "id_01"], thresholds={"id_01": -1.0}, median_k=3)
    windows = [make_window("fan", m, i) for i in range(12) for m in ("id_00", "id_01")]
    q = "SELECT score, score_median, anomalous FROM asd_score GROUP BY machine_id"
    with running_worker(s) as worker:
        produce(s, windows)
        wait_for(lambda: count_points(s) == len(windows) and not worker._pending, 60, "first pass written")
    before = sorted(influx_query(s.influx.url, s.influx.database, q), key=lambda r: (r["machine_id"], r["time"]))
    assert _committed(s) == len(windows)
    _rewind_group(s)
    assert _committed(s) == 0
    with running_worker(s) as worker:  # a new worker: state comes from Redis, records are replayed from 0
        wait_for(lambda: worker.windows_scored == len(windows) and not worker._pending, 60, "replay scored")
    after = sorted(influx_query(s.influx.url, s.influx.database, q), key=lambda r: (r["machine_id"], r["time"]))
    assert len(after) == len(before) == len(windows)
    assert [(r["machine_id"], r["time"], r["anomalous"]) for r in after] == [
        (r["machine_id"], r["time"], r["anomalous"]) for r in before
    ]
    np.testing.assert_allclose([r["score_median"] for r in after], [r["score_median"] for r in before], rtol=1e-5)
    # the replay did not feed id_01's windows to its alert machine again: still exactly one alert event
    alerts = [AlertEvent.decode(r.value) for r in read_topic(s, s.kafka.topics.alerts, 1)]
    assert [(a.machine_id, a.current) for a in alerts] == [("id_01", AlertState.ALERTING)]
    assert _committed(s) == len(windows)
