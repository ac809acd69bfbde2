"""The benchmark's cost figures (deploy.resources): CPU and memory of real processes, lag of a real group."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from deploy.resources import LagTarget, ResourceMonitor, consumer_lag, listening_pid, read_proc
from soundwatch.kafka import ensure_topics, make_admin, make_consumer, make_producer
from soundwatch.settings import Settings

_BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 30: pass"


@pytest.fixture
def busy_child():
    proc = subprocess.Popen([sys.executable, "-c", _BUSY])
    yield proc
    proc.kill()
    proc.wait()


def test_read_proc_reads_cpu_and_memory_and_none_for_a_gone_process(busy_child):
    first = read_proc(busy_child.pid)
    assert first is not None
    while (later := read_proc(busy_child.pid)) is not None and later.cpu_s <= first.cpu_s + 0.1:
        time.sleep(0.05)
    assert later is not None and later.cpu_s > first.cpu_s
    assert later.rss_bytes > 1 << 20  # a running Python interpreter holds megabytes (not yet right after exec)
    busy_child.kill()
    busy_child.wait()
    assert read_proc(busy_child.pid) is None


def test_monitor_reports_cpu_per_machine_hour_and_peak_memory(busy_child, isolated_settings: Settings):
    own = os.getpid()
    monitor = ResourceMonitor(isolated_settings, {"busy": lambda: [busy_child.pid], "idle": lambda: []}, every_s=0.1)
    start = time.monotonic()
    monitor.sample_once()
    begin = read_proc(busy_child.pid).cpu_s  # type: ignore[union-attr]
    while read_proc(busy_child.pid).cpu_s < begin + 0.5:  # type: ignore[union-attr]  # long against 10 ms ticks
        time.sleep(0.05)
    monitor.sample_once()
    report = monitor.report(start, time.monotonic(), machines=10)
    cpu = report["cpu_s_per_machine_hour"]
    assert cpu["busy"] > 0 and cpu["idle"] == 0 and cpu["total"] == pytest.approx(cpu["busy"], abs=0.01)
    # at most all the cores, spread over 10 machines
    assert cpu["busy"] <= (os.cpu_count() or 1) * 3600 / 10 * 1.05
    assert 0 < report["cpu_cores"]["busy"] <= (os.cpu_count() or 1) * 1.05
    assert report["rss_mb"]["busy"] > 1 and report["rss_mb"]["idle"] == 0
    assert report["consumer_lag"] == {}
    assert own  # the monitor only reads the processes it was given


@pytest.mark.integration
def test_consumer_lag_is_end_minus_committed_offsets(isolated_settings: Settings):
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    s = isolated_settings
    topic = s.kafka.topics.features
    ensure_topics(s, [topic], partitions=1)
    producer = make_producer(s)
    for i in range(10):
        producer.send(topic, key=b"k", value=str(i).encode(), partition=0)
    producer.flush()
    producer.close()
    group = f"{s.scoring.group_id}-lag"
    admin, reader = make_admin(s), make_consumer(s, group_id=None, max_partition_fetch_bytes=1024)
    try:
        assert consumer_lag(admin, reader, group, topic) == 10  # nothing committed: all of it behind
        committer = make_consumer(s, group_id=group)
        try:
            committer.assign([TopicPartition(topic, 0)])
            committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "", -1)})
        finally:
            committer.close()
        assert consumer_lag(admin, reader, group, topic) == 6
    finally:
        admin.close()
        reader.close()

    monitor = ResourceMonitor(s, {}, [LagTarget("scoring", group, topic)], every_s=0.1, lag_every_s=0.1).start()
    try:
        while not monitor.lag_samples or "scoring" not in monitor.lag_samples[-1][1]:
            time.sleep(0.1)
    finally:
        monitor.stop()
    lag = monitor.report(0.0, time.monotonic(), machines=1)["consumer_lag"]["scoring"]
    assert lag["group"] == group and lag["topic"] == topic
    assert lag["last"] == 6 and lag["max"] == 6 and lag["slope_per_min"] == 0


def test_listening_pid_finds_the_process_behind_a_port():
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert listening_pid(port) == os.getpid()
    assert listening_pid(port) is None  # closed: nobody listens there any more


def test_realtime_share_counts_the_windows_that_arrived_against_those_made():
    from deploy.bench_e2e import realtime_share
    from deploy.scenario import ScenarioResult

    # 10 machines, one window each per 1.0 s, seen from t=0 to t=60: 20 s warm-up, then 40 s
    full = [(t / 10, 1.0) for t in range(0, 601)]  # 10 points a second
    result = ScenarioResult([], [], {}, 60.0, full)
    assert realtime_share(result, 10, 1.0) == pytest.approx(1.0, rel=0.01)
    half = ScenarioResult([], [], {}, 60.0, full[::2])  # the gateway made half the audio
    assert realtime_share(half, 10, 1.0) == pytest.approx(0.5, rel=0.02)
    assert realtime_share(ScenarioResult([], [], {}, 60.0, []), 10, 1.0) == 0.0
    sampled = ScenarioResult([], [], {}, 60.0, full, timed_machines=10)  # 10 of 640 machines timed
    assert realtime_share(sampled, 640, 1.0) == pytest.approx(1.0, rel=0.01)


def test_a_large_plant_is_timed_on_a_sample_of_machines_spread_over_its_ids():
    from deploy.bench_e2e import _machines
    from deploy.scenario import LATENCY_SAMPLE, _latency_sample
    from deploy.stages import PlantSource

    assert _latency_sample(PlantSource(machines=_machines(LATENCY_SAMPLE))) is None  # small: every machine
    timed, ids = _latency_sample(PlantSource(machines=_machines(640)))
    assert timed == LATENCY_SAMPLE and len(ids) == LATENCY_SAMPLE // 2  # fan and pump of each id
    assert ids[0] == "id_00" and ids[-1] > "id_600"  # spread over the whole plant
