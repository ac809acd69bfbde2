"""`bench e2e --json` steps say what they cost: CPU per machine-hour and memory per process, consumer lag.

One short step of the real pipeline (two simulated fans); values are checked for sanity, never timed.
"""

from __future__ import annotations

import os

import pytest

from deploy.bench_e2e import run_step, step_record
from soundwatch.kafka import make_admin
from soundwatch.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_step_reports_cpu_memory_and_lag_per_process(plant_settings: Settings, tmp_path):
    result, s = run_step(plant_settings, 2, 45.0, tmp_path / "logs", machines="fan/id_00,fan/id_02")
    step = step_record(2, result, plant_settings.features.window_seconds, plant_settings.features.hop_seconds)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((tmp_path / "logs").rglob("*.log")))
    assert step["points_after_warmup"] > 0, logs
    assert 0.5 < step["realtime_share"] < 1.5, step  # two machines: the pipeline keeps up

    cpu, cores = step["cpu_s_per_machine_hour"], step["cpu_cores"]
    for role in ("gateway", "features", "scoring"):  # the pipeline's own processes always
        assert 0 < cpu[role] <= (os.cpu_count() or 1) * 3600 / 2, (role, cpu)
        assert 0 < step["rss_mb"][role] < 64 * 1024, (role, step["rss_mb"])
    for role in ("broker", "influxd"):  # the local services, when `soundwatch services up` runs them here
        if role in cpu:
            assert cpu[role] >= 0 and step["rss_mb"][role] > 0
    assert cpu["total"] == pytest.approx(sum(v for k, v in cpu.items() if k != "total"), abs=0.1)
    assert cores["total"] <= (os.cpu_count() or 1) * 1.05
    assert step["cpu_span_s"] > 10

    for stage, group, topic in (
        ("features", "bench-features-", s.kafka.topics.audio_raw),
        ("scoring", s.scoring.group_id, s.kafka.topics.features),
    ):
        lag = step["consumer_lag"][stage]
        assert lag["topic"] == topic and lag["group"].startswith(group.split("-")[0]), lag
        assert lag["samples"] > 0, lag
        assert 0 <= lag["last"] <= lag["max"] and lag["mean"] >= 0
        # two machines: 2 chunks / s and 2 windows / s; a worker that keeps up is a few seconds behind at most
        assert lag["max"] < 200, lag

    admin = make_admin(s)  # the step's topics are gone: the local broker holds topics in memory
    try:
        assert s.kafka.topics.audio_raw not in set(admin.list_topics())
    finally:
        admin.close()
