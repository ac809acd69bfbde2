"""Scale-out on the local broker: two feature workers and two scoring workers share the partitions;
killing one of each (SIGKILL) moves its partitions to the survivor with no lost and no duplicated windows."""

from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import pytest

from deploy.pipeline import Pipeline
from deploy.stages import PlantSource, pipeline_stages
from soundwatch.contracts import FeatureWindow
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import make_consumer
from soundwatch.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MACHINES = ["fan/id_00", "fan/id_02", "fan/id_04", "fan/id_06", "fan/id_08"]
AUDIO_S = 50
SPEED = 2.0


def _windows(settings: Settings) -> dict[str, list[tuple[int, int]]]:
    consumer = make_consumer(settings, settings.kafka.topics.features, group_id=None)
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    idle_since = time.monotonic()
    try:
        while time.monotonic() - idle_since < 5:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    w = FeatureWindow.decode(rec.value)
                    out[f"{w.machine_type}/{w.machine_id}"].append((w.segment, w.start_frame))
            if batch:
                idle_since = time.monotonic()
    finally:
        consumer.close()
    return out


def _points(settings: Settings) -> dict[str, int]:
    q = 'SELECT count("score") FROM "asd_score" GROUP BY "machine_type", "machine_id"'
    with InfluxClient(settings.influx) as client:
        answer = client.query(q)
    return {f"{s.tags['machine_type']}/{s.tags['machine_id']}": s.values[0][1] for s in answer}


def test_killing_a_feature_and_a_scoring_worker_loses_and_duplicates_nothing(plant_settings: Settings, tmp_path):
    s = plant_settings
    source = PlantSource(kind="sim", machines=",".join(MACHINES), speed=SPEED)
    stages = pipeline_stages(s, source, log_dir=tmp_path / "logs", feature_workers=2, scoring_workers=2)
    env = s.to_env()
    for stage in stages:
        stage.env = {**env, **stage.env}
    by_name = {st.name: st for st in stages}
    pipeline = Pipeline(stages, say=lambda m: None)
    started = time.monotonic()
    pipeline.start()
    try:
        time.sleep(AUDIO_S / SPEED / 2 + 10)  # both consumer groups formed, data flowing
        for victim in ("features-1", "scoring-1"):
            os.kill(by_name[victim].proc.pid, signal.SIGKILL)
        time.sleep(max(0.0, started + 10 + AUDIO_S / SPEED - time.monotonic()))
        by_name["gateway"].stop(timeout_s=30)  # SIGTERM: the gateway flushes what it has
        _wait_until_drained(s, timeout_s=120)
    finally:
        pipeline.stop()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1200:]}" for p in sorted((tmp_path / "logs").glob("*.log")))

    windows = _windows(s)
    assert set(windows) == set(MACHINES), logs
    for machine, ids in windows.items():
        assert len(ids) == len(set(ids)), f"{machine}: duplicated windows {sorted(ids)}"
        by_segment = defaultdict(list)
        for segment, frame in ids:
            by_segment[segment].append(frame)
        assert len(by_segment) == 1, f"{machine}: the stream was reset (gap) {sorted(by_segment)}"
        frames = sorted(next(iter(by_segment.values())))
        hop = s.features.hop_frames
        assert frames == list(range(0, hop * len(frames), hop)), f"{machine}: missing windows"
        assert len(frames) >= AUDIO_S * 0.8, f"{machine}: only {len(frames)} windows"
    points = _points(s)
    assert points == {m: len(windows[m]) for m in MACHINES}, f"points {points} vs windows\n{logs}"


def _wait_until_drained(settings: Settings, timeout_s: float) -> None:
    """Until every machine has points and the counts did not move for 8 s."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        points = _points(settings)
        if points != last:
            last, since = points, time.monotonic()
        elif len(points) == len(MACHINES) and time.monotonic() - since >= 8:
            return
        time.sleep(1)
