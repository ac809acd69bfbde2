"""File provisioning export, the ``dashboards`` CLI (export, push, render) and the PNG rendering."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml
from dashboards_scenario import FAN0, KNOWN
from grafana_contract import FakeGrafana
from typer.testing import CliRunner

from dashboards import alerting
from dashboards.builder import all_dashboards
from dashboards.cli import app
from dashboards.export import export
from dashboards.machines import machines_from_registry, parse_machines
from dashboards.policy import load_policy_file
from dashboards.render import render
from soundwatch.errors import BadInput
from soundwatch.settings import get_settings, load_settings

runner = CliRunner()
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__WEBHOOK_URL", "https://hooks.example.com/soundwatch")
    monkeypatch.setenv("SOUNDWATCH_INFLUX__USERNAME", "grafana")
    monkeypatch.setenv("SOUNDWATCH_INFLUX__PASSWORD", "s3cret")
    get_settings.cache_clear()
    yield load_settings()
    get_settings.cache_clear()


def test_export_writes_the_provisioning_tree(settings, tmp_path):
    paths = export(settings, tmp_path, KNOWN)
    rel = sorted(str(p.relative_to(tmp_path)) for p in paths)
    assert rel == [  # no policies.yaml: it would replace the organisation's whole policy tree
        "alerting/contact-points.yaml",
        "alerting/rules.yaml",
        "dashboards/soundwatch.yaml",
        "dashboards/soundwatch/soundwatch-fleet.json",
        "dashboards/soundwatch/soundwatch-machine.json",
        "dashboards/soundwatch/soundwatch-pipeline.json",
        "datasources/soundwatch.yaml",
    ]
    assert not any("s3cret" in p.read_text() for p in paths)  # secrets stay in Grafana's environment

    (ds,) = yaml.safe_load((tmp_path / "datasources/soundwatch.yaml").read_text())["datasources"]
    assert ds["uid"] == settings.grafana.datasource_uid and ds["type"] == "influxdb"
    assert ds["jsonData"] == {
        "dbName": settings.influx.database,
        "httpMode": "GET",
        "version": "InfluxQL",
        "timeInterval": "1s",
    }
    assert ds["secureJsonData"] == {"password": "$SOUNDWATCH_INFLUX__PASSWORD"}
    (provider,) = yaml.safe_load((tmp_path / "dashboards/soundwatch.yaml").read_text())["providers"]
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards/soundwatch"
    # one folder: rules name it by title (all Grafana's rule files can do), and so does the provider
    assert provider["folder"] == settings.grafana.folder and "folderUid" not in provider
    boards = all_dashboards(settings.grafana, KNOWN)
    for uid, board in boards.items():
        assert json.loads((tmp_path / f"dashboards/soundwatch/{uid}.json").read_text()) == board

    groups = yaml.safe_load((tmp_path / "alerting/rules.yaml").read_text())["groups"]
    assert [(g["name"], g["interval"]) for g in groups] == [
        (alerting.MACHINE_GROUP, "10s"),
        (alerting.PIPELINE_GROUP, "1m"),
    ]
    assert all(g["folder"] == settings.grafana.folder for g in groups)
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 3  # machine alerting, machine silent, audio lost: for any number of machines
    assert all("folderUID" not in r and "ruleGroup" not in r for r in rules)  # file shape, not API shape
    assert {r["for"] for r in rules} == {"0s"}
    (cp,) = yaml.safe_load((tmp_path / "alerting/contact-points.yaml").read_text())["contactPoints"]
    assert cp["name"] == alerting.CONTACT_POINT
    assert cp["receivers"] == [
        {
            "uid": "soundwatch-webhook",
            "type": "webhook",
            "disableResolveMessage": False,
            # the secret stays in the environment; Grafana expands the reference from its own
            "settings": {"url": "$SOUNDWATCH_GRAFANA__WEBHOOK_URL", "httpMethod": "POST"},
        }
    ]
    assert "hooks.example.com" not in (tmp_path / "alerting/contact-points.yaml").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    export(settings, tmp_path, KNOWN)
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes  # unchanged input rewrites nothing


def test_export_without_contact_routes_to_grafana_default(tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_GRAFANA__WEBHOOK_URL", "https://hooks.example.com/x")
    export(load_settings(), tmp_path, KNOWN, policy_tree=None)
    assert (tmp_path / "alerting/contact-points.yaml").exists()
    monkeypatch.delenv("SOUNDWATCH_GRAFANA__WEBHOOK_URL")
    export(load_settings(), tmp_path, KNOWN, policy_tree={"receiver": "platform-oncall"})
    assert not (tmp_path / "alerting/contact-points.yaml").exists()
    (policy,) = yaml.safe_load((tmp_path / "alerting/policies.yaml").read_text())["policies"]
    assert policy["receiver"] == "platform-oncall"  # the organisation's root stays
    assert [r["receiver"] for r in policy["routes"]] == [alerting.FALLBACK_RECEIVER]  # soundwatch's route


def test_cli_export_merges_into_an_exported_policy_tree(settings, tmp_path):
    """--policy-tree: policies.yaml is the organisation's exported tree with soundwatch's route merged in."""
    foreign = FIXTURES / "policies-foreign.yaml"
    out = tmp_path / "out"
    args = ["export", "--out", str(out), "--machines", "fan/id_00", "--policy-tree", str(foreign)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (written,) = yaml.safe_load((out / "alerting/policies.yaml").read_text())["policies"]
    original = load_policy_file(foreign.read_text())
    assert written["receiver"] == original["receiver"] == "platform-oncall"
    assert written["routes"][1:] == original["routes"]  # every foreign route, untouched, in order
    assert written["routes"][0]["object_matchers"] == [["app", "=", "soundwatch"]]
    result = runner.invoke(app, ["export", "--out", str(out), "--machines", "fan/id_00"])
    assert result.exit_code == 0, result.output
    assert not (out / "alerting/policies.yaml").exists()  # no tree given: an earlier merged file is removed


def test_machines_are_validated():
    assert parse_machines("pump/id_02, fan/id_00 fan/id_00") == [("fan", "id_00"), ("pump", "id_02")]
    with pytest.raises(BadInput, match="TYPE/ID"):
        parse_machines("fan")
    with pytest.raises(BadInput, match="not a valid machine name"):
        parse_machines("fan/id'00")


def test_cli_export(settings, tmp_path):
    result = runner.invoke(app, ["export", "--out", str(tmp_path), "--machines", "fan/id_00,pump/id_00"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["machines"] == ["fan/id_00", "pump/id_00"]
    assert len(out["files"]) == 7


def test_cli_bad_machine_raises_bad_input(settings, tmp_path):
    result = runner.invoke(app, ["export", "--out", str(tmp_path), "--machines", "fan/id'00"])
    assert isinstance(result.exception, BadInput)  # the root CLI turns it into exit code 6


def test_cli_push_twice(settings):
    with FakeGrafana("tok") as grafana:
        first = runner.invoke(app, ["push", "--url", grafana.url, "--token", "tok", "--machines", "fan/id_00"])
        assert first.exit_code == 0, first.output
        assert len(json.loads(first.stdout)["created"]) == 1 + 1 + 3 + 1 + 3  # ... three rules for any fleet
        second = runner.invoke(app, ["push", "--url", grafana.url, "--token", "tok", "--machines", "fan/id_00"])
        assert second.exit_code == 0, second.output
        report = json.loads(second.stdout)
        assert report["created"] == report["updated"] == report["deleted"] == []


def _png_has_content(path) -> bool:
    img = mpimg.imread(path)
    return img.ndim == 3 and img.shape[0] > 300 and float(np.std(img[..., :3])) > 0.05


@pytest.mark.integration
def test_render_pngs_from_the_same_queries(isolated_settings, scenario, tmp_path):
    paths = render(
        isolated_settings,
        tmp_path,
        KNOWN,
        start_ms=scenario.start_ms,
        end_ms=scenario.end_ms,
        drill_down=[FAN0],
    )
    assert [p.name for p in paths] == ["fleet.png", "machine-fan-id_00.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert _png_has_content(p)


@pytest.mark.integration
def test_cli_render_and_from_influx(isolated_settings, scenario, tmp_path, monkeypatch):
    monkeypatch.setenv("SOUNDWATCH_INFLUX__DATABASE", isolated_settings.influx.database)
    get_settings.cache_clear()
    try:
        result = runner.invoke(app, ["render", "--out", str(tmp_path), "--from-influx", "--machine", "fan/id_02"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert [p.split("/")[-1] for p in json.loads(result.stdout)] == ["fleet.png", "machine-fan-id_02.png"]


def _save_untrained_model(root, machine_type: str, machine_ids: list[str]) -> None:
    """A real (tiny, untrained) artifact saved through the real registry: only its machine ids matter here."""
    import torch

    from soundwatch.model.networks import ArcMarginHead, Encoder, EncoderConfig
    from soundwatch.model.registry import Artifact, ModelRegistry
    from soundwatch.params import FeatureParams

    params = FeatureParams()
    torch.manual_seed(0)
    cfg = EncoderConfig(n_mels=params.n_mels, window_frames=params.window_frames, channels=(4,), embedding_dim=8)
    encoder, head = Encoder(cfg), ArcMarginHead(cfg.embedding_dim, len(machine_ids), 30.0, 0.5)
    ModelRegistry(root).save(
        Artifact(
            machine_type=machine_type,
            method="clp",
            score_kind="neglogp",
            feature_params=params,
            median_k=5,
            model_config={
                "encoder": cfg.to_dict(),
                "head": {"n_classes": len(machine_ids), "scale": 30.0, "margin": 0.5},
            },
            state={"encoder": encoder.state_dict(), "head": head.state_dict()},
            class_map=list(machine_ids),
            id_classes={m: [i] for i, m in enumerate(machine_ids)},
            thresholds={m: 1.0 for m in machine_ids},
            default_threshold=1.0,
            threshold_rule="test: fixed",
        )
    )


def test_machines_from_the_model_registry(tmp_path, settings, monkeypatch):
    pytest.importorskip("soundwatch.model.registry")
    root = tmp_path / "registry"
    _save_untrained_model(root, "fan", ["id_02", "id_00"])
    _save_untrained_model(root, "valve", ["id_04"])
    assert machines_from_registry(root) == [("fan", "id_00"), ("fan", "id_02"), ("valve", "id_04")]

    monkeypatch.setenv("SOUNDWATCH_REGISTRY_ROOT", str(root))
    get_settings.cache_clear()
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "out")])  # no --machines: the registry decides
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["machines"] == ["fan/id_00", "fan/id_02", "valve/id_04"]
