"""``push`` against Grafana's HTTP contract (a real HTTP server in a thread): paths, bodies, idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboards_scenario import FAN0, FAN2, KNOWN, PUMP0
from grafana_client import GrafanaApi
from grafana_contract import DEFAULT_RECEIVER, FakeGrafana

from dashboards import alerting
from dashboards.policy import load_policy_file
from dashboards.push import push, same
from soundwatch.errors import ConfigError
from soundwatch.settings import load_settings

TOKEN = "glsa_test_token"
FIXTURES = Path(__file__).parent / "fixtures"
N_RULES = 3  # machine alerting, machine silent, audio lost — for any fleet
RULE_UIDS = {alerting.ALERTING_UID, alerting.SILENT_UID, alerting.AUDIO_LOSS_UID}


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
    assert len(report.created) == 1 + 1 + 3 + 1 + N_RULES  # folder, data source, dashboards, contact point, rules
    # Grafana gives a group made by creating rules a 1m interval: the machine group is then set to 10 s
    assert report.updated == ["policy:soundwatch-route", f"rule-group:{alerting.MACHINE_GROUP}"]
    assert report.deleted == []
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
    assert paths[7 : 7 + 2] == [("POST", "/api/v1/provisioning/alert-rules")] * 2
    assert paths[9] == (
        "PUT",
        f"/api/v1/provisioning/folder/{alerting.folder_uid(settings.grafana)}/rule-groups/{alerting.MACHINE_GROUP}",
    )
    assert paths[10:] == [("POST", "/api/v1/provisioning/alert-rules")]
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
    # routing: the root stays Grafana's, soundwatch adds one child route, the tree stays editable in the UI
    assert grafana.policy["receiver"] == DEFAULT_RECEIVER
    assert [r["receiver"] for r in grafana.policy["routes"]] == [alerting.CONTACT_POINT]
    assert grafana.policy_provenance == ""
    assert set(grafana.rules) == RULE_UIDS
    assert {r["folderUID"] for r in grafana.rules.values()} == {folder_uid}
    assert all(r["provenance"] == "api" for r in grafana.rules.values())  # soundwatch's rules: changed by push
    assert grafana.groups[(folder_uid, alerting.MACHINE_GROUP)] == alerting.MACHINE_EVAL_INTERVAL_S
    assert grafana.groups[(folder_uid, alerting.PIPELINE_GROUP)] == alerting.PIPELINE_EVAL_INTERVAL_S


def test_second_push_sends_no_write(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    before = len(grafana.requests)
    versions = {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()}
    report = push(grafana.url, TOKEN, settings, KNOWN)
    second = grafana.requests[before:]
    assert second and all(r.method == "GET" for r in second), [(r.method, r.path) for r in second if r.method != "GET"]
    assert not report.changed and len(report.unchanged) == 1 + 1 + 3 + 1 + 1 + N_RULES
    assert {uid: d["dashboard"]["version"] for uid, d in grafana.dashboards.items()} == versions


def test_a_new_machine_changes_no_rule(settings, grafana):
    push(grafana.url, TOKEN, settings, [FAN0])
    report = push(grafana.url, TOKEN, settings, KNOWN)
    assert not [n for n in report.created + report.updated + report.deleted if n.startswith("alert-rule")]


def test_push_merges_into_the_organisations_policy_tree(settings, grafana):
    """Other teams' routes and the root receiver survive; a route added later survives the next push."""
    foreign = load_policy_file((FIXTURES / "policies-foreign.yaml").read_text())
    for receiver in ("platform-oncall", "db-team-pager", "db-team-email", "network-slack", "plc-vendor-webhook"):
        grafana.contact_points[receiver] = {"uid": receiver, "name": receiver, "type": "email"}
    grafana.policy = foreign
    push(grafana.url, TOKEN, settings, KNOWN)
    assert grafana.policy["receiver"] == "platform-oncall"
    assert grafana.policy["routes"][1:] == foreign["routes"]
    assert grafana.policy["routes"][0]["object_matchers"] == [["app", "=", "soundwatch"]]

    grafana.policy["routes"].append({"receiver": "network-slack", "object_matchers": [["team", "=", "new"]]})
    report = push(grafana.url, TOKEN, settings, KNOWN)
    assert "policy:soundwatch-route" in report.unchanged  # nothing of soundwatch's changed: no write
    assert grafana.policy["routes"][-1]["object_matchers"] == [["team", "=", "new"]]


def test_push_deletes_the_per_machine_rules_of_earlier_versions(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    folder_uid = alerting.folder_uid(settings.grafana)
    api = GrafanaApi.from_url(grafana.url, credential=TOKEN)
    old = alerting.alerting_rule(settings.grafana)
    for uid, title, labels in (
        ("sw-anomaly-3f2a9c0d1e4b5a6f7c8d", "soundwatch anomaly fan/id_00", {"app": "soundwatch"}),
        ("sw-nodata-3f2a9c0d1e4b5a6f7c8d", "soundwatch no data fan/id_00", {"app": "soundwatch"}),
        ("team-disk-full", "disk full", {"team": "it"}),  # a foreign rule in the same folder
        ("sw-someone-elses", "someone else's sw- rule", {"team": "sw"}),  # our prefix, not our label
    ):
        body = {
            **old,
            "uid": uid,
            "title": title,
            "ruleGroup": "soundwatch-fan",
            "labels": {**labels, "machine_id": "id_00"},
        }
        api.alertingprovisioning.create_alertrule(body)
    report = push(grafana.url, TOKEN, settings, KNOWN)
    assert sorted(report.deleted) == [
        "alert-rule:sw-anomaly-3f2a9c0d1e4b5a6f7c8d",
        "alert-rule:sw-nodata-3f2a9c0d1e4b5a6f7c8d",
    ]
    assert set(grafana.rules) == RULE_UIDS | {"team-disk-full", "sw-someone-elses"}
    assert all(grafana.rules[u]["folderUID"] == folder_uid for u in RULE_UIDS)


def test_push_uses_the_folder_file_provisioning_created(settings, grafana):
    """Grafana's rule files name the folder by title and get a random uid: push must not make a second one."""
    grafana.folders["b7Xq2Lm9"] = {"id": 99, "uid": "b7Xq2Lm9", "title": settings.grafana.folder, "version": 1}
    report = push(grafana.url, TOKEN, settings, KNOWN)
    assert "folder:b7Xq2Lm9" in report.unchanged and list(grafana.folders) == ["b7Xq2Lm9"]
    assert {d["meta"]["folderUid"] for d in grafana.dashboards.values()} == {"b7Xq2Lm9"}
    assert {r["folderUID"] for r in grafana.rules.values()} == {"b7Xq2Lm9"}
    assert not push(grafana.url, TOKEN, settings, KNOWN).changed


def test_changed_settings_update_only_what_changed(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    before = len(grafana.requests)
    slower = load_settings(
        grafana={**settings.grafana.model_dump(), "nodata_after": "10m"}, influx=settings.influx.model_dump()
    )
    report = push(grafana.url, TOKEN, slower, [FAN0, FAN2, PUMP0])  # slider/id_00 was decommissioned
    writes = [(r.method, r.path) for r in grafana.requests[before:] if r.method != "GET"]
    assert sorted(report.updated) == [
        f"alert-rule:{alerting.SILENT_UID}",
        "dashboard:soundwatch-fleet",  # its panels' time range and machine count
        "dashboard:soundwatch-machine",  # its panels' time range
    ]
    assert report.deleted == []  # no per-machine rule to delete
    assert ("PUT", f"/api/v1/provisioning/alert-rules/{alerting.SILENT_UID}") in writes
    evaluator = grafana.rules[alerting.SILENT_UID]["data"][2]["model"]["conditions"][0]["evaluator"]
    assert evaluator["params"] == [600]


def test_drift_in_grafana_is_repaired(settings, grafana):
    push(grafana.url, TOKEN, settings, KNOWN)
    grafana.dashboards["soundwatch-machine"]["dashboard"]["title"] = "edited by hand"
    grafana.policy = {"receiver": "grafana-default-email"}  # someone reset the tree
    report = push(grafana.url, TOKEN, settings, KNOWN)
    assert sorted(report.updated) == ["dashboard:soundwatch-machine", "policy:soundwatch-route"]
    assert grafana.dashboards["soundwatch-machine"]["dashboard"]["title"] == "soundwatch — machine"
    assert [r["receiver"] for r in grafana.policy["routes"]] == [alerting.CONTACT_POINT]


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
