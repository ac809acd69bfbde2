"""The notification policy merge on real exported trees: soundwatch adds one route, everything else survives."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dashboards import alerting
from dashboards.policy import DEFAULT_ROOT, load_policy_file, matchers, merge_policy_tree, tree_from_export
from soundwatch.errors import BadInput
from soundwatch.settings import load_settings

FIXTURES = Path(__file__).parent / "fixtures"


def _tree(name: str) -> dict:
    return load_policy_file((FIXTURES / name).read_text())


@pytest.fixture
def ours(monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__WEBHOOK_URL", "https://hooks.example.com/soundwatch")
    return alerting.soundwatch_route(load_settings().grafana)


def test_merge_into_a_foreign_tree_keeps_root_and_every_route(ours):
    foreign = _tree("policies-foreign.yaml")
    before = copy.deepcopy(foreign)
    merged = merge_policy_tree(foreign, ours)
    assert foreign == before  # pure: the input is not modified
    assert {k: v for k, v in merged.items() if k != "routes"} == {k: v for k, v in foreign.items() if k != "routes"}
    assert merged["receiver"] == "platform-oncall"  # the root receiver stays the organisation's
    assert merged["routes"][0] == ours  # first, so no broader foreign route catches soundwatch's alerts
    assert merged["routes"][1:] == foreign["routes"]  # nested routes, matchers, time intervals, continue
    assert merge_policy_tree(merged, ours) == merged  # idempotent


def test_merge_replaces_an_earlier_soundwatch_route_in_place(ours):
    exported = _tree("policies-with-soundwatch.yaml")
    merged = merge_policy_tree(exported, ours)
    assert [r["receiver"] for r in merged["routes"]] == ["db-team-pager", alerting.CONTACT_POINT, "network-slack"]
    assert merged["routes"][1] == ours and merged["routes"][1]["repeat_interval"] == "4h"  # was 2h
    assert merged["routes"][0] == exported["routes"][0] and merged["routes"][2] == exported["routes"][2]
    assert merged["mute_time_intervals"] == [] and merged["receiver"] == "platform-oncall"
    assert merge_policy_tree(merged, ours) == merged


def test_merge_drops_a_duplicate_of_ours_and_server_keys(ours):
    tree = {**_tree("policies-with-soundwatch.yaml"), "provenance": "api"}
    tree["routes"].append({"receiver": "old", "matchers": ['app="soundwatch"']})  # the legacy matcher form
    merged = merge_policy_tree(tree, ours)
    assert "provenance" not in merged
    assert sum(matchers(r) == matchers(ours) for r in merged["routes"]) == 1


def test_merge_into_grafanas_default_tree(ours):
    merged = merge_policy_tree(None, ours)
    assert merged == {**DEFAULT_ROOT, "routes": [ours]}
    with pytest.raises(BadInput, match="no root receiver"):
        merge_policy_tree({"routes": []}, ours)
    with pytest.raises(ValueError, match="must have matchers"):
        merge_policy_tree(None, {"receiver": "x"})


def test_tree_from_export_reads_grafanas_export_format():
    text = (FIXTURES / "policies-foreign.yaml").read_text()
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(text)  # Grafana writes the "=" operator bare: plain YAML 1.1 cannot read it
    tree = load_policy_file(text)
    doc = {"apiVersion": 1, "policies": [{"orgId": 1, **tree}]}
    assert "orgId" not in tree and tree["receiver"] == "platform-oncall"
    assert tree_from_export(tree) == tree  # a bare tree (API shape) is accepted as is
    with pytest.raises(BadInput, match="Export"):
        tree_from_export({"apiVersion": 1})
    with pytest.raises(BadInput, match="0 trees for org 2"):
        tree_from_export(doc, org_id=2)
