"""Dashboard and alerting JSON round-trip through grafana-foundation-sdk's 11.6 schema models.

``Model.from_json(x)`` then JSON-encoding must give back everything we wrote (the SDK may only
*add* its schema defaults). The one documented exception: the 11.6 schema types an annotation's
``target`` as the built-in Grafana data source's target, so InfluxDB annotation targets lose their
query in the SDK model (Grafana itself keeps them: its InfluxDB plugin reads ``target.query``).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from typing import Any

import pytest
import yaml
from dashboards_scenario import KNOWN
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import alerting as sdk_alerting
from grafana_foundation_sdk.models import dashboard as sdk_dashboard

from dashboards import alerting
from dashboards.builder import all_dashboards
from dashboards.export import export
from dashboards.machines import Machine
from dashboards.policy import merge_policy_tree
from soundwatch.settings import load_settings

register_default_plugins()
ANNOTATION_TARGET = re.compile(r"^\.annotations\.list\[\d+\]\.target\.")


def lost(original: Any, roundtrip: Any, path: str = "") -> list[str]:
    """Paths whose value the round trip dropped or changed (added keys are fine)."""
    if isinstance(original, dict):
        if not isinstance(roundtrip, dict):
            return [f"{path}: became {type(roundtrip).__name__}"]
        out: list[str] = []
        for key, value in original.items():
            if key not in roundtrip:
                out.append(f"{path}.{key}")
            else:
                out += lost(value, roundtrip[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        if not isinstance(roundtrip, list) or len(original) != len(roundtrip):
            return [f"{path}: list changed"]
        return [p for i, (a, b) in enumerate(zip(original, roundtrip, strict=True)) for p in lost(a, b, f"{path}[{i}]")]
    return [] if original == roundtrip else [f"{path}: {original!r} -> {roundtrip!r}"]


def roundtrip(model: Any, data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(model.from_json(data), cls=JSONEncoder))


@pytest.fixture
def grafana(monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__WEBHOOK_URL", "https://hooks.example.com/soundwatch")
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__EMAIL_ADDRESSES", '["maint@example.com","ops@example.com"]')
    return load_settings().grafana


def test_the_sdk_is_the_pinned_11_6_schema():
    # an unpinned install picks the 10.1 schema (higher version epoch): the round trips would prove little
    assert importlib.metadata.version("grafana-foundation-sdk").endswith("!11.6.0")


def test_dashboards_roundtrip_through_sdk_models(grafana):
    boards = all_dashboards(grafana, KNOWN)
    assert set(boards) == {"soundwatch-fleet", "soundwatch-machine", "soundwatch-pipeline"}
    for uid, board in boards.items():
        back = roundtrip(sdk_dashboard.Dashboard, board)
        dropped = lost(board, back)
        assert [p for p in dropped if not ANNOTATION_TARGET.match(p)] == [], uid
        model = sdk_dashboard.Dashboard.from_json(board)
        for panel in model.panels or []:
            # the panel's options/fieldConfig were recognised by the plugin's schema (typed, not a raw dict)
            assert not isinstance(panel.options, dict), (uid, panel.type_val)
            assert panel.grid_pos is not None and panel.grid_pos.x + panel.grid_pos.w <= 24
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), uid


def test_fleet_panels_run_one_query_whatever_the_fleet(grafana):
    """The status grid is one GROUP BY query (a tile per series), not one query per machine."""
    fleet = [Machine("fan", f"id_{i:04d}") for i in range(1000)]
    board = all_dashboards(grafana, fleet)["soundwatch-fleet"]
    assert max(len(p.get("targets", [])) for p in board["panels"]) == 1
    status = next(p for p in board["panels"] if p["title"] == "Status")
    assert status["targets"][0]["alias"] == "$tag_machine_type/$tag_machine_id"
    assert "GROUP BY" in status["targets"][0]["query"]


def test_alerting_roundtrips_through_sdk_models(grafana):
    config = alerting.build(grafana)
    assert [g["title"] for g in config.groups] == [alerting.MACHINE_GROUP, alerting.PIPELINE_GROUP]
    for group in config.groups:
        assert lost(group, roundtrip(sdk_alerting.RuleGroup, group)) == []
        for rule in group["rules"]:
            assert lost(rule, roundtrip(sdk_alerting.Rule, rule)) == []
    for cp in config.contact_points:
        assert lost(cp, roundtrip(sdk_alerting.ContactPoint, cp)) == []
    tree = merge_policy_tree(None, config.route)  # the route inside Grafana's default tree
    assert lost(tree, roundtrip(sdk_alerting.NotificationPolicy, tree)) == []
    assert {cp["type"] for cp in config.contact_points} == {"webhook", "email"}
    assert config.contact_points[1]["settings"]["addresses"] == "maint@example.com;ops@example.com"


@pytest.mark.parametrize("n_machines", [10, 1000])
def test_rule_count_does_not_grow_with_the_fleet(grafana, tmp_path, n_machines):
    """A 10- and a 1,000-machine export hold the same three rules; each machine rule yields a series per machine."""
    fleet = [Machine(t, f"id_{i:04d}") for i in range(n_machines // 2) for t in ("fan", "pump")]
    settings = load_settings(grafana=grafana.model_dump())
    export(settings, tmp_path, fleet)
    doc = yaml.safe_load((tmp_path / "alerting" / "rules.yaml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert sorted(r["uid"] for r in rules) == sorted(
        [alerting.ALERTING_UID, alerting.SILENT_UID, alerting.AUDIO_LOSS_UID]
    )
    for rule in rules:
        if rule["uid"] != alerting.AUDIO_LOSS_UID:
            (query,) = [d["model"]["query"] for d in rule["data"] if d["datasourceUid"] != "__expr__"]
            assert query.endswith('GROUP BY "machine_type", "machine_id"')
            assert "id_0000" not in json.dumps(rule)  # no machine is spelled out in a rule


def test_rules_carry_labels_annotations_and_settings(grafana):
    config = alerting.build(grafana)
    rules = {r["title"]: r for g in config.groups for r in g["rules"]}
    assert len(rules) == 3
    loss = rules["soundwatch audio lost or contested"]
    assert loss["labels"] == {"app": "soundwatch", "severity": "warning", "scope": "pipeline"}
    assert loss["noDataState"] == "OK" and loss["condition"] == "E"
    assert [d["relativeTimeRange"]["from"] for d in loss["data"][:2]] == [300, 300]  # over 5 minutes
    assert "chunks_skipped" in loss["data"][0]["model"]["query"]
    assert "chunks_conflicting" in loss["data"][1]["model"]["query"]
    alert = rules["soundwatch machine alerting"]
    assert alert["for"] == "0s"  # the worker's hysteresis is the only definition: no second pending period
    assert alert["labels"] == {"app": "soundwatch", "severity": "critical"}  # + the series' machine tags
    assert '"machine_status"' in alert["data"][0]["model"]["query"]
    assert alert["data"][0]["model"]["query"].startswith('SELECT last("alerting")')
    assert alert["noDataState"] == "OK" and alert["condition"] == "C"
    assert "{{ $labels.machine_type }}/{{ $labels.machine_id }}" in alert["annotations"]["summary"]
    assert alert["annotations"]["dashboard_url"].endswith(
        "var-machine_type={{ $labels.machine_type }}&var-machine={{ $labels.machine_id }}"
    )
    assert alert["annotations"]["__dashboardUid__"] == "soundwatch-machine"
    assert "confirmed-normal" in alert["annotations"]["runbook"]
    machine_board = all_dashboards(grafana, KNOWN)["soundwatch-machine"]
    linked = [p for p in machine_board["panels"] if str(p["id"]) == alert["annotations"]["__panelId__"]]
    assert [p["title"] for p in linked] == ["Anomaly score"]  # the alert opens the score/threshold panel
    silent = rules["soundwatch machine silent"]
    assert silent["labels"] == {"app": "soundwatch", "severity": "warning"}
    assert silent["noDataState"] == "Alerting"  # no scoring worker writes status at all
    assert silent["data"][2]["model"]["conditions"][0]["evaluator"] == {
        "type": "gt",
        "params": [alerting.duration_s(grafana.nodata_after)],
    }
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", r["uid"]) for r in rules.values())
    assert len({r["uid"] for r in rules.values()}) == len(rules)
    # routing: one route for soundwatch's label, grouped per machine, by severity, to the contact point
    route = config.route
    assert route["object_matchers"] == [["app", "=", "soundwatch"]]
    assert route["group_by"][-2:] == ["machine_type", "machine_id"]
    assert [r["object_matchers"] for r in route["routes"]] == [
        [["severity", "=", "critical"]],
        [["severity", "=", "warning"]],
    ]
    assert {r["receiver"] for r in route["routes"]} == {alerting.CONTACT_POINT}


def test_alert_links_use_the_public_grafana_url(monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__URL", "http://grafana:3000")
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__PUBLIC_URL", "https://grafana.plant.example.com/")
    config = alerting.build(load_settings().grafana)
    links = [r["annotations"]["dashboard_url"] for g in config.groups for r in g["rules"]]
    assert len(links) == 3
    assert all(link.startswith("https://grafana.plant.example.com/d/") for link in links)
    monkeypatch.delenv("SOUNDWATCH_GRAFANA__PUBLIC_URL")
    fallback = alerting.build(load_settings().grafana)
    assert fallback.groups[0]["rules"][0]["annotations"]["dashboard_url"].startswith("http://grafana:3000/d/")


def test_durations_are_validated():
    assert alerting.duration_s("1h30m") == 5400
    assert alerting.duration_s("90s") == 90
    from soundwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="not like"):
        alerting.duration_s("two minutes")
    with pytest.raises(ConfigError, match="shorter than 1m"):
        alerting.silent_rule(load_settings(grafana={"nodata_after": "30s"}).grafana)


def test_queries_read_only_measurements_and_fields_of_the_core_schema(grafana):
    """Every dashboard and rule query names measurements the workers write (soundwatch.influx.schema)."""
    from soundwatch.influx import schema

    measurements = {
        schema.SCORE_MEASUREMENT,
        schema.ALERT_MEASUREMENT,
        schema.MACHINE_STATUS_MEASUREMENT,
        schema.PIPELINE_MEASUREMENT,
    }
    names = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    texts = []
    for board in all_dashboards(grafana, KNOWN).values():
        texts += [t["query"] for p in board["panels"] for t in p.get("targets", [])]
        texts += [a["target"]["query"] for a in board["annotations"]["list"] if "target" in a]
        texts += [v["query"] for v in board["templating"]["list"]]
    for group in alerting.rule_groups(grafana):
        texts += [d["model"]["query"] for r in group["rules"] for d in r["data"] if d["datasourceUid"] != "__expr__"]
    read = {m for text in texts for m in re.findall(r'FROM "(\w+)"', text)}
    assert read == measurements
    # every double-quoted name is a schema tag/field or an alias the query defines with AS
    aliases = {a for text in texts for a in re.findall(r'AS "(\w+)"', text)}
    quoted = {n for text in texts for n in re.findall(r'"(\w+)"', text)}
    implicit = {"last"}  # the column InfluxDB names after a function selected without AS
    assert quoted - names - aliases - implicit == set()
