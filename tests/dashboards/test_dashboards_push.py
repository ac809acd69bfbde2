"""``push`` against Grafana's HTTP contract (a real HTTP server in a thread): paths, bodies, idempotence."""

from __future__ import annotations

import pytest
from dashboards_scenario import FAN0, FAN2, KNOWN, PUMP0
from grafana_contract import FakeGrafana

from dashboards import alerting
from dashboards.push import push, same
from soundwatch.errors import ConfigError
from soundwatch.settings import load_settings

TOKEN = "glsa_test_token"


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__WEBHOOK_URL", "https://hooks.example.com/soundwatch")
    monkeypatch.setenv("SOUNDWATCH_INFLUX__USERNAME", "grafana")
    monkeypatch.setenv("SOUNDWATCH_INFLUX__PASSWORD", "s3cret")
    return load_settings()


@pytest.fixture
def grafana():
    with FakeGrafana(TOKEN) as server:
        yield server


def test_first_push_creates_everything_in_dependency_order(settings, grafana):
    report = push(grafana.url, TOKEN, settings, KNOWN)
    n_rules = 2 * len(KNOWN) + 1  # two per machine, one fleet-wide audio-loss rule
    assert len(report.created) == 1 + 1 + 3 + 1 + n_rules  # folder, data source, dashboards, contact point, rules
    assert report.updated == ["policy:root"] and report.deleted == []
    paths = [(r.method, r.path) for r in grafana.writes]
    assert paths[:6] == [
        ("POST", "/api/folders"),
        ("POST", "/api/datasources"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/dashboards/db"),
        ("POST", "/api/v1/provisioning/contact-points"),
    ]
    assert paths[6] == ("PUT", "/api/v1/provisioning/policies")
    assert paths[7:] == [("POST", "/api/v1/provisioning/alert-rules")] * n_rules
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in grafana.requests)

    # bodies: what Grafana stores is what soundwatch built
    folder_uid = alerting.folder_uid(settings.grafana)
    board_posts = [r.body for r in grafana.writes if r.path == "/api/dashboards/db"]
    assert all(b["overwrite"] is True and b["folderUid"] == folder_uid for b in board_posts)
    assert {b["dashboard"]["uid"] for b in board_posts} == {
        "soundwatch-fleet",
        "soundwatch-machine",
        "soundwatch-pipeline",
    }
    ds_body = grafana.writes[1].body
    assert ds_body["uid"] == settings.grafana.datasource_uid and ds_body["type"] == "influxdb"
    assert ds_body["secureJsonData"] == {"password": "s3cret"} and ds_body["user"] == "grafana"
    assert ds_body["jsonData"]["dbName"] == settings.influx.database
    assert grafana.policy["routes"][0]["routes"][0]["receiver"] == alerting.CONTACT_POINT
    rule = grafana.rules[alerting.rule_uid("anomaly", FAN0)]
    assert rule["folderUID"] == folder_uid and rule["ruleGroup"] == "soundwatch-fan"
    assert rule["labels"]["machine_id"] == "id_00"
    assert grafana.groups[(folder_uid, "soundwatch-fan")] == alerting.EVAL_INTERVAL_S


def test_second_push_sends_no_write(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    before = len(grafana.requests)
    versions = {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()}
    report = push(grafana.url, TOKEN, settings, KNOWN)
    second = grafana.requests[before:]
    assert second and all(r.method == "GET" for r in second), [(r.method, r.path) for r in second if r.method != "GET"]
    assert not report.changed and len(report.unchanged) == 1 + 1 + 3 + 1 + 1 + 2 * len(KNOWN) + 1
    assert {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()} == versions


def test_changed_settings_update_only_what_changed(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    before = len(grafana.requests)
    slower = load_settings(
        grafana={**settings.grafana.model_dump(), "alert_for": "5m"}, influx=settings.influx.model_dump()
    )
    report = push(grafana.url, TOKEN, slower, [FAN0, FAN2, PUMP0])  # slider/id_00 was decommissioned
    writes = [(r.method, r.path) for r in grafana.requests[before:] if r.method != "GET"]
    anomaly_uids = {alerting.rule_uid("anomaly", m) for m in (FAN0, FAN2, PUMP0)}
    slider = KNOWN[3]
    assert sorted(report.updated) == sorted(f"alert-rule:{u}" for u in anomaly_uids) + ["dashboard:soundwatch-fleet"]
    assert sorted(report.deleted) == sorted(f"alert-rule:{alerting.rule_uid(k, slider)}" for k in ("anomaly", "nodata"))
    assert sorted(writes) == sorted(
        [("PUT", f"/api/v1/provisioning/alert-rules/{u}") for u in anomaly_uids]
        + [("POST", "/api/dashboards/db")]  # the fleet status grid lost a tile
        + [
            ("DELETE", f"/api/v1/provisioning/alert-rules/{alerting.rule_uid(k, slider)}")
            for k in ("anomaly", "nodata")
        ]
    )
    assert grafana.rules[alerting.rule_uid("anomaly", FAN0)]["for"] == "5m"


def test_drift_in_grafana_is_repaired(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    grafana.dashboards["soundwatch-machine"]["dashboard"]["title"] = "edited by hand"
    grafana.policy = {"receiver": "grafana-default-email"}
    report = push(grafana.url, TOKEN, settings, KNOWN)
    assert sorted(report.updated) == ["dashboard:soundwatch-machine", "policy:root"]
    assert grafana.dashboards["soundwatch-machine"]["dashboard"]["title"] == "soundwatch — machine"


def test_bad_token_is_a_config_error(settings, grafana):
    with pytest.raises(ConfigError, match="rejected the token"):
        push(grafana.url, "wrong", settings, KNOWN)


def test_same_ignores_server_additions_and_normalises_durations():
    assert same(
        {"for": "2m", "labels": {"a": "b"}},
        {"for": "2m0s", "labels": {"a": "b"}, "id": 3, "provenance": "api"},
    )
    assert same({"isPaused": False, "x": [], "relativeTimeRange": {"from": 0, "to": 0}}, {})  # omitempty
    assert same({"settings": {"url": "https://x"}}, {"settings": {"url": "[REDACTED]"}})
    assert not same({"for": "2m"}, {"for": "5m0s"})
    assert not same({"rules": [1, 2]}, {"rules": [1]})
    assert not same({"enabled": True}, {"enabled": 1})
    assert not same({"relativeTimeRange": {"from": 600, "to": 0}}, {})
