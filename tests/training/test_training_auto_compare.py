"""`train --method auto` picks per type on validation data only; `evaluate --compare` puts methods side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from soundwatch.model.registry import ModelRegistry
from soundwatch.params import FeatureParams
from training.auto import parse_methods, train_auto
from training.bench import honest_split
from training.compare import compare, markdown
from training.datasets import scan_dataset
from training.train import TrainConfig

CFG = TrainConfig(epochs=1, device="cpu", progress=False)


@pytest.fixture(scope="module")
def auto_two(tiny_data: Path):
    return train_auto(scan_dataset(tiny_data, "valve"), FeatureParams(), CFG, methods=("ae", "clp"))


def test_auto_keeps_the_best_held_out_normal_criterion_and_records_the_table(auto_two) -> None:
    rows = auto_two.table()
    assert [r["method"] for r in rows] == ["ae", "clp"] and all(r["note"] == "trained" for r in rows)
    best = max(r["criterion"] for r in rows)
    assert auto_two.winner.criterion == pytest.approx(max(c.criterion for c in auto_two.candidates))
    assert [r["chosen"] for r in rows].count(True) == 1
    assert next(r for r in rows if r["chosen"])["criterion"] >= best - 0.005
    assert "held-out normal" in auto_two.criterion
    arts = auto_two.artifacts_in_save_order()
    assert arts[-1].method == auto_two.winner.method and len(arts) == 2  # winner saved last = newest
    assert all(a.metrics["auto_selection"]["chosen"] == auto_two.winner.method for a in arts)


def test_auto_skips_what_does_not_fit_the_budget_and_says_so(tiny_data: Path) -> None:
    result = train_auto(
        scan_dataset(tiny_data, "valve"), FeatureParams(), CFG, methods=("ae", "clp"), time_budget_s=0.01
    )
    rows = result.table()
    assert rows[0]["note"] == "trained" and result.winner.method == "ae"
    assert rows[1]["note"].startswith("skipped: expected") and rows[1]["criterion"] is None


def test_auto_uses_labelled_validation_clips_when_given(tiny_data: Path) -> None:
    records = scan_dataset(tiny_data, "valve")
    validation = [r for r in records if r.split == "test"]  # in real use: a separate labelled set, never the test set
    result = train_auto(
        [r for r in records if r.split == "train"], FeatureParams(), CFG, methods=("ae",), validation=validation
    )
    assert "labelled validation" in result.criterion and 0.0 <= result.winner.criterion <= 1.0


def test_parse_methods_orders_cheapest_first_and_rejects_unknown_names() -> None:
    assert parse_methods("clp,ae") == ("ae", "clp")
    assert set(parse_methods(None)) >= {"clp", "ae", "geco", "semi", "advneg", "sepviews"}
    from soundwatch.errors import BadInput

    with pytest.raises(BadInput, match="nope"):
        parse_methods("clp,nope")


def test_compare_evaluates_the_newest_model_of_every_method(auto_two, tiny_data: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "registry")
    for art in auto_two.artifacts_in_save_order():
        reg.save(art)
    report = compare(tiny_data, reg, out_dir=tmp_path / "out", progress=False)
    assert {r["method"] for r in report["rows"]} == {"ae", "clp"}
    for r in report["rows"]:
        assert r["machine_type"] == "valve" and r["n_ids"] == 2 and 0.0 <= r["auc"] <= 1.0
        assert r["infer_ms_per_window"] > 0 and r["train_s"] > 0
    assert set(report["per_method"]) == {"ae", "clp"}
    table = (tmp_path / "out" / "compare.md").read_text()
    assert table == markdown(report) and "| valve | clp |" in table
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["rows"] == report["rows"]
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000


def test_honest_split_never_puts_a_training_clip_in_the_test_set(real_mini: Path, tmp_path: Path) -> None:
    split = honest_split(real_mini, tmp_path / "split")
    records = scan_dataset(split)
    train = {(r.machine_type, r.path.name) for r in records if r.split == "train"}
    test = {(r.machine_type, r.path.name) for r in records if r.split == "test"}
    assert train and test and not (train & test)
    assert all(not r.is_anomaly for r in records if r.split == "train")
    assert len(train) + len(test) == len(list(real_mini.rglob("*.wav")))


def test_cli_auto_then_compare(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from soundwatch.settings import get_settings
    from training.cli import evaluate as evaluate_cmd
    from training.cli import train as train_cmd

    monkeypatch.setenv("SOUNDWATCH_REDIS__URL", "redis://127.0.0.1:1/0")  # not reachable: save only
    get_settings.cache_clear()
    app = typer.Typer()
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    runner = CliRunner()
    registry = tmp_path / "registry"
    out = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_data),
            "--registry",
            str(registry),
            "--method",
            "auto",
            "--methods",
            "clp,ae",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "method selection by" in out.output
    reg = ModelRegistry(registry)
    assert len(reg.versions("valve")) == 2
    newest = reg.load("valve", reg.latest_version("valve"))
    assert newest.method == newest.metadata.metrics["auto_selection"]["chosen"]
    out = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tiny_data),
            "--registry",
            str(registry),
            "--compare",
            "--results",
            str(tmp_path / "cmp"),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert {r["method"] for r in report["rows"]} == {"ae", "clp"}
    get_settings.cache_clear()
