"""End to end on the real broker, Redis and InfluxDB: a simulated plant of five machines, a fault in one.

Stated bound: the alert event's window ends at most ALERT_BOUND_S seconds of audio after the fault's
onset (window 2.05 s, hop 1.02 s, median over 5 windows, 3 consecutive windows over threshold:
~6-8 s is typical). The four normal machines must not alert, and every machine has points in InfluxDB.
"""

from __future__ import annotations

import time

import pytest

from deploy.scenario import run_scenario
from deploy.stages import PlantSource
from soundwatch.contracts import AlertState, AudioChunk
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import make_consumer
from soundwatch.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MACHINES = ["fan/id_00", "fan/id_02", "fan/id_04", "fan/id_06", "fan/id_08"]  # the trained fan IDs
FAULTY = "fan/id_02"
FAULT_AT_S = 40.0
ALERT_BOUND_S = 15.0
SPEED = 2.0


def _first_chunk_start_ns(settings: Settings, machine: str) -> int:
    consumer = make_consumer(settings, settings.kafka.topics.audio_raw, group_id=None)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    chunk = AudioChunk.decode(rec.value)
                    if f"{chunk.machine_type}/{chunk.machine_id}" == machine and chunk.sequence == 0:
                        return chunk.start_ns
    finally:
        consumer.close()
    raise AssertionError(f"no first chunk of {machine} in {settings.kafka.topics.audio_raw}")


def test_fault_in_one_of_five_machines_alerts_there_only(plant_settings: Settings, tmp_path):
    s = plant_settings
    source = PlantSource(
        kind="sim", machines=",".join(MACHINES), speed=SPEED, faults=(f"{FAULTY}:bearing_ticks@{FAULT_AT_S:g}s",)
    )
    end_audio_s = FAULT_AT_S + ALERT_BOUND_S + 10

    def enough(observer) -> bool:  # every machine scored well past the alert bound
        views = observer.snapshot()
        if len(views) < len(MACHINES):
            return False
        first = min(v.times_ns[0] for v in views if v.times_ns)
        return all(v.times_ns and (v.times_ns[-1] - first) / 1e9 >= end_audio_s for v in views)

    result = run_scenario(s, source, duration_s=end_audio_s / SPEED + 90, log_dir=tmp_path / "logs", until=enough)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((tmp_path / "logs").glob("*.log")))

    views = {v.key: v for v in result.machines}
    assert set(views) == set(MACHINES), logs
    onset_ns = _first_chunk_start_ns(s, FAULTY) + int(FAULT_AT_S * 1e9)
    faulty = views[FAULTY]
    raised = [a for a in faulty.alerts if a.current is AlertState.ALERTING]
    assert raised, f"no alert for {FAULTY}; medians {faulty.medians[-10:]} thresholds {faulty.thresholds[-1:]}\n{logs}"
    delay_s = (raised[0].timestamp_ns - onset_ns) / 1e9
    assert 0 < delay_s <= ALERT_BOUND_S, f"alert {delay_s:.1f} s after onset"
    assert result.alerted() == [FAULTY], f"unexpected alerts: {result.alerted()}"

    influx = InfluxClient(s.influx)
    q = 'SELECT count("score_median") FROM "asd_score" GROUP BY "machine_type", "machine_id"'
    counts = {f"{sr.tags['machine_type']}/{sr.tags['machine_id']}": sr.values[0][1] for sr in influx.query(q)}
    assert set(counts) == set(MACHINES)
    for machine in MACHINES:
        assert counts[machine] >= end_audio_s - 5, (machine, counts[machine])  # ~1 window per second of audio
    stages = {sr.tags["stage"] for sr in influx.query('SELECT count(*) FROM "pipeline" GROUP BY "stage"')}
    influx.close()
    assert stages == {"ingest", "features", "scoring"}, "every stage reports its health for the dashboard"
    print(
        f"alert {delay_s:.1f} s (audio) after onset; point latency p50 {result.p(50):.2f} s, p99 {result.p(99):.2f} s"
    )
