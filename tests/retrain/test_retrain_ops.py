"""The operator surface: gate rules, the cron loop, and the CLI (normal / models / retrain / archive)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from soundwatch.settings import GateSettings
from training.service.gate import ModelReport, decide
from training.service.retrain import run_schedule

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _cli() -> typer.Typer:
    """The root app as the lead registers these commands (soundwatch normal|models|archive|retrain)."""
    from training.service.ops_cli import archive_app, models_app, normal_app, retrain

    app = typer.Typer()
    app.add_typer(normal_app, name="normal")
    app.add_typer(models_app, name="models")
    app.add_typer(archive_app, name="archive")
    app.command("retrain")(retrain)
    return app


def test_gate_rules_name_the_measure_and_the_numbers() -> None:
    current = ModelReport(far={"confirmed": 0.6, "validation": 0.01, "test": 0.02}, auc=0.90, pauc=0.80)
    good = ModelReport(far={"confirmed": 0.01, "validation": 0.02, "test": 0.03}, auc=0.89, pauc=0.79)
    ok = decide(good, current, GateSettings())
    assert ok.passed and not ok.reasons
    bad = ModelReport(far={"confirmed": 0.0, "validation": 0.08, "test": 0.02}, auc=0.70, pauc=0.78)
    no = decide(bad, current, GateSettings())
    assert not no.passed
    assert [c.name for c in no.checks if not c.passed] == ["far_validation", "auc"]
    assert "false-alarm rate on validation normal audio 0.080 vs current 0.010" in no.reasons[0]
    assert "AUC on labelled test clips fell to 0.700 vs current 0.900" in no.reasons[1]
    target = decide(good, None, GateSettings(far_target=0.005))
    assert not target.passed and "misses the target" in target.reasons[0]
    assert decide(good, None, GateSettings()).passed, "no current model: nothing to be worse than"


def test_schedule_runs_rounds_and_survives_a_failing_one() -> None:
    calls: list[float] = []
    stop = threading.Event()

    def job() -> None:
        calls.append(time.time())
        if len(calls) == 1:
            raise RuntimeError("a bad round")  # logged; the loop goes on
        if len(calls) >= 2:
            stop.set()

    t = threading.Thread(target=run_schedule, args=("* * * * * *", job, stop), daemon=True)  # every second
    t.start()
    t.join(10)
    assert not t.is_alive() and len(calls) == 2


def test_retrain_needs_once_or_schedule_and_a_valid_cron() -> None:
    from soundwatch.errors import BadInput, ConfigError

    r = CliRunner().invoke(_cli(), ["retrain"])
    assert isinstance(r.exception, ConfigError) and "--once or --schedule" in str(r.exception)
    with pytest.raises(BadInput, match="cron"):
        run_schedule("every night", lambda: None)


def _deploy_commands() -> list[list[str]]:
    cmds = [
        line.split()[1:]
        for unit in (DEPLOY / "systemd").glob("*.service")
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    return cmds + [c["args"] for c in _archive_pod()["containers"]]


def _archive_pod() -> dict:
    (deployment,) = [
        d
        for d in yaml.safe_load_all((DEPLOY / "k8s" / "base" / "archive.yaml").read_text())
        if d and d.get("kind") == "Deployment"
    ]
    return deployment["spec"]["template"]["spec"]


def test_deploy_files_run_real_commands() -> None:
    cmds = _deploy_commands()
    starts = sorted(c[:2] for c in cmds)
    assert starts == [["archive", "run"], ["archive", "run"], ["retrain", "--once"], ["retrain", "--schedule"]]
    for args in cmds:
        r = CliRunner().invoke(_cli(), [*args, "--help"])
        assert r.exit_code == 0, f"`soundwatch {' '.join(args)}`: {r.output}"
    pod = _archive_pod()  # the nightly retraining runs beside the archive writer (one SQLite writer, one node)
    (retrain,) = [c for c in pod["containers"] if c["args"][0] == "retrain"]
    env = retrain["envFrom"]
    assert {"configMapRef": {"name": "soundwatch-config"}} in env
    assert {"secretRef": {"name": "soundwatch-secrets"}} in env
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "soundwatch-models"}} in pod["volumes"]
    assert {m["mountPath"] for m in retrain["volumeMounts"]} >= {"/models", "/archive"}
    timer = (DEPLOY / "systemd" / "soundwatch-retrain.timer").read_text()
    assert "Unit=soundwatch-retrain.service" in timer and "OnCalendar=" in timer


@pytest.mark.integration
def test_cli_confirm_list_revoke_audit_and_models_promote_rollback(
    isolated_settings, base_model, tmp_path, monkeypatch
) -> None:
    from soundwatch import settings as settings_module
    from soundwatch.model.registry import ModelRegistry

    from .retrain_helpers import copy_registry

    s = isolated_settings
    monkeypatch.setattr(settings_module, "get_settings", lambda: s)
    monkeypatch.setattr("training.service.ops_cli.get_settings", lambda: s)
    copy_registry(base_model, s.registry_root)
    registry = ModelRegistry(s.registry_root, s.redis)
    registry.set_current("fan", "v0001")
    # a second version whose gate refused it
    meta = json.loads((s.registry_root / "fan" / "v0001" / "metadata.json").read_text())
    from soundwatch.model.registry import Artifact

    loaded = registry.load("fan", "v0001")
    art = Artifact(
        machine_type="fan",
        method=meta["method"],
        score_kind=meta["score_kind"],
        feature_params=loaded.feature_params,
        median_k=meta["median_k"],
        model_config=meta["model_config"],
        state={"encoder": loaded.scorer.encoder.state_dict(), "head": loaded.scorer.head.state_dict()},
        class_map=meta["class_map"],
        id_classes=meta["id_classes"],
        thresholds=meta["thresholds"],
        default_threshold=meta["default_threshold"],
        threshold_rule=meta["threshold_rule"],
        parent_version="v0001",
        metrics={"gate": {"passed": False, "reasons": ["AUC fell to 0.5"]}},
        bank={k: v.cpu().numpy() for k, v in loaded.scorer.bank.items()},
    )
    assert registry.save(art) == "v0002"
    app, run = _cli(), CliRunner()

    r = run.invoke(
        app,
        [
            "normal",
            "confirm",
            "--machine",
            "id_00",
            "--from",
            "-2h",
            "--to",
            "-1h",
            "--by",
            "ann",
            "--note",
            "quiet shift",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    iv = json.loads(r.stdout)
    assert iv["machine_type"] == "fan" and iv["by"] == "ann" and iv["to_ns"] - iv["from_ns"] == 3600 * 10**9
    r = run.invoke(app, ["normal", "list", "--json"])
    assert [x["id"] for x in json.loads(r.stdout)] == [iv["id"]]
    r = run.invoke(app, ["normal", "revoke", str(iv["id"]), "--by", "bo", "--note", "it rattled"])
    assert r.exit_code == 0
    assert json.loads(run.invoke(app, ["normal", "list", "--json"]).stdout) == []
    assert len(json.loads(run.invoke(app, ["normal", "list", "--all", "--json"]).stdout)) == 1
    trail = json.loads(run.invoke(app, ["normal", "audit", "--json"]).stdout)
    assert [(e["action"], e["by"]) for e in trail] == [("confirm", "ann"), ("revoke", "bo")]

    rows = json.loads(run.invoke(app, ["models", "list", "--json"]).stdout)
    assert [(x["version"], x["current"], x["gate"]) for x in rows] == [
        ("v0001", True, "-"),
        ("v0002", False, "REFUSED"),
    ]
    r = run.invoke(app, ["models", "promote", "fan", "v0002"])
    assert r.exit_code != 0 and "refused by the promotion gate" in str(r.exception)
    assert run.invoke(app, ["models", "promote", "fan", "v0002", "--force"]).exit_code == 0
    assert registry.current_version("fan") == "v0002"
    assert json.loads(run.invoke(app, ["models", "show", "fan"]).stdout)["version"] == "v0002"
    assert run.invoke(app, ["models", "rollback", "fan"]).exit_code == 0
    assert registry.current_version("fan") == "v0001", "rollback returns to the parent"
