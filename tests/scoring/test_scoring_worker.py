"""The scoring worker on the real broker, Redis and InfluxDB 1.6 (in-process worker thread)."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import requests
from running_workers import running_worker
from scoring_helpers import (
    count_points,
    influx_query,
    make_window,
    produce,
    read_topic,
    wait_for,
)

from deploy.private_services import plumbing_model
from soundwatch.contracts import AlertEvent, AlertState, DeadLetter, Reason, Score, json_schema, machine_key
from soundwatch.model.filters import causal_median
from soundwatch.params import FeatureParams

pytestmark = pytest.mark.integration

IDS = ["id_00", "id_02", "id_04"]


def test_features_in_points_out_with_dlq_alerts_and_metrics(scoring_settings):
    s = scoring_settings
    # id_04's threshold is below any -log p score: it is anomalous from the first window and must alert
    plumbing_model(s.registry_root, "fan", IDS, thresholds={"id_04": -1.0}, median_k=3)
    n = 8
    good = [make_window("fan", m, i) for i in range(n) for m in IDS]
    other_params = FeatureParams(hop_length=256)  # same window shape, different front end
    mismatch = make_window("fan", "id_00", 100, params=other_params)
    unknown = make_window("valve", "id_00", 0)
    garbage = (b"fan/id_09", b"this is not a feature window")
    with running_worker(s, report_every_s=0.5) as worker:
        produce(s, good[: len(good) // 2])
        produce(s, [mismatch, unknown], extra=[garbage])
        produce(s, good[len(good) // 2 :])
        wait_for(lambda: count_points(s) >= len(good), 60, "all score points in InfluxDB")
        wait_for(
            lambda: influx_query(
                s.influx.url, s.influx.database, "SELECT last(windows_per_s) FROM pipeline WHERE stage='scoring'"
            ),
            20,
            "a pipeline health point",
        )

        def scrape() -> str | None:  # the lag gauges refresh every report interval: wait for a caught-up one
            text = requests.get(f"http://127.0.0.1:{worker.metrics.port}/metrics", timeout=5).text
            caught_up = all(f'soundwatch_scoring_consumer_lag{{partition="{p}"}} 0.0' in text for p in range(4))
            return text if caught_up else None

        metrics = wait_for(scrape, 20, "consumer lag 0 on every partition")
        wait_for(lambda: not worker._pending, 20, "all offsets committed")

    # every good window became exactly one point, tagged with the model version
    rows = influx_query(
        s.influx.url,
        s.influx.database,
        "SELECT score, score_median, threshold, anomalous FROM asd_score GROUP BY machine_id, "
        "machine_type, model_version",
    )
    assert len(rows) == len(good)
    assert {r["model_version"] for r in rows} == {"v0001"}
    assert {r["machine_type"] for r in rows} == {"fan"}
    for mid in IDS:
        mine = sorted((r for r in rows if r["machine_id"] == mid), key=lambda r: r["time"])
        assert [r["time"] for r in mine] == [w.end_ns for w in good if w.machine_id == mid]
        raw = np.array([r["score"] for r in mine])
        np.testing.assert_allclose([r["score_median"] for r in mine], causal_median(raw, 3))
        assert all(r["anomalous"] is (mid == "id_04") for r in mine)

    # scores topic mirrors the points; the alert for id_04 fired once, after alert_after=3 windows
    score_records = read_topic(s, s.kafka.topics.scores, len(good))
    scores = [Score.decode(r.value) for r in score_records]
    assert len(scores) == len(good)
    alert_records = read_topic(s, s.kafka.topics.alerts, 1)
    alerts = [AlertEvent.decode(r.value) for r in alert_records]
    # readable without our decoder: plain JSON, valid against the published schemas
    for kind, records in (("score", score_records), ("alert_event", alert_records)):
        validator = jsonschema.Draft202012Validator(json_schema(kind), format_checker=jsonschema.FormatChecker())
        for record in records:
            validator.validate(json.loads(record.value))
    assert json.loads(alert_records[0].value)["current"] == "alerting"
    assert [(a.machine_id, a.current) for a in alerts] == [("id_04", AlertState.ALERTING)]
    assert alerts[0].timestamp_ns == good[3 * 2 + 2].end_ns  # third window of id_04
    alert_rows = influx_query(s.influx.url, s.influx.database, "SELECT state FROM asd_alert")
    assert [r["state"] for r in alert_rows] == ["alerting"]

    # the three bad records are dead-lettered with reasons that name the problem
    letters = read_topic(s, s.kafka.topics.deadletter, 3)
    by_reason = {DeadLetter.from_headers(r.headers).reason: (r, DeadLetter.from_headers(r.headers)) for r in letters}
    assert set(by_reason) == {Reason.FEATURE_PARAMS_MISMATCH, Reason.UNKNOWN_MACHINE_TYPE, Reason.BAD_MAGIC}
    assert len(letters) == 3
    rec, letter = by_reason[Reason.FEATURE_PARAMS_MISMATCH]
    assert "hop_length: window 256 vs model 512" in letter.detail
    assert rec.value == mismatch.encode() and rec.key == machine_key("fan", "id_00")
    assert letter.source_topic == s.kafka.topics.features and letter.stage == "scoring"
    assert "valve" in by_reason[Reason.UNKNOWN_MACHINE_TYPE][1].detail
    assert by_reason[Reason.BAD_MAGIC][0].value == garbage[1]

    # Prometheus endpoint exposed the counters
    assert 'soundwatch_scoring_windows_total{machine_type="fan"} 24.0' in metrics
    assert 'soundwatch_scoring_dead_letters_total{reason="feature_params_mismatch"} 1.0' in metrics
    assert "soundwatch_scoring_inference_seconds_bucket" in metrics
    assert "soundwatch_scoring_buffer_points" in metrics
    health = influx_query(
        s.influx.url,
        s.influx.database,
        "SELECT windows_per_s, consumer_lag, write_errors, buffer_points FROM pipeline GROUP BY *",
    )
    assert {h["stage"] for h in health} == {"scoring"} and {h["worker"] for h in health} == {worker.worker_id}
    assert all(h["write_errors"] == 0 for h in health) and any(h["windows_per_s"] > 0 for h in health)


def test_hot_reload_switches_model_version_without_restart(scoring_settings):
    from soundwatch.model.registry import ModelRegistry

    s = scoring_settings
    registry = ModelRegistry(s.registry_root, s.redis)
    plumbing_model(s.registry_root, "pump", ["id_00"], seed=1)
    registry.set_current("pump", "v0001")
    with running_worker(s) as worker:
        produce(s, [make_window("pump", "id_00", i) for i in range(5)])
        wait_for(lambda: count_points(s) >= 5, 60, "first 5 points")
        assert worker.models.loaded == {"pump": "v0001"}
        v2 = plumbing_model(s.registry_root, "pump", ["id_00"], seed=2)
        registry.set_current("pump", v2)  # SET + PUBLISH
        wait_for(lambda: worker.models.loaded.get("pump") == v2, 20, "the worker to swap in v0002")
        produce(s, [make_window("pump", "id_00", i) for i in range(5, 10)])
        wait_for(lambda: count_points(s) >= 10, 60, "next 5 points")
    rows = influx_query(s.influx.url, s.influx.database, "SELECT score FROM asd_score GROUP BY model_version")
    versions = [r["model_version"] for r in sorted(rows, key=lambda r: r["time"])]
    assert versions == ["v0001"] * 5 + ["v0002"] * 5
