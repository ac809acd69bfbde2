"""hard-v1: seeded and versioned (same seed -> same bytes; pinned levels), names that parse, and bench quality on it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deploy.main import app
from training.datasets import scan_dataset
from training.evaluate import resolve_edition
from training.synthetic_hard import FAULT_KINDS, PRESETS, clip_specs, render_hard_clip, write_hard_dataset

# Small variant for speed: the same generator, fewer and shorter clips (not a published preset).
TINY = replace(
    PRESETS["hard-v1"], name="hard-v1", sections=1, n_train_source=3, n_train_target=1, n_test=5, seconds=3.0
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.wav"))}


def test_same_seed_same_bytes_other_seed_other_audio(tmp_path: Path) -> None:
    write_hard_dataset(tmp_path / "a", TINY, seed=3)
    write_hard_dataset(tmp_path / "b", TINY, seed=3)
    write_hard_dataset(tmp_path / "c", TINY, seed=4)
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b and len(a) == 2 * (3 + 1 + 2 * 2 * 5)
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_hard_v1_is_pinned() -> None:
    """hard-v1 never changes: its size and the level of three of its clips are fixed (a new set is hard-v2)."""
    p = PRESETS["hard-v1"]
    specs = clip_specs(p)
    assert len(specs) == 240
    expected = {0: -16.2568, 20: -15.3692, len(specs) - 1: -21.6596}
    for i, level_db in expected.items():
        audio = render_hard_clip(specs[i], p, seed=0).astype(np.float64)
        assert 10 * np.log10(np.mean(audio**2)) == pytest.approx(level_db, abs=2e-3), specs[i].file_name(p)


def test_names_parse_as_dcase_2022_plus(tmp_path: Path) -> None:
    write_hard_dataset(tmp_path, TINY, seed=0)
    records = scan_dataset(tmp_path)
    assert {r.machine_type for r in records} == {"fan", "valve"}
    assert all(r.scheme == "dcase2021" and r.machine_id == "section_00" for r in records)
    train = [r for r in records if r.split == "train"]
    assert all(not r.is_anomaly for r in train)
    assert sum(r.domain == "target" for r in train) == 2 and sum(r.domain == "source" for r in train) == 6
    test = [r for r in records if r.split == "test"]
    for domain in ("source", "target"):
        mine = [r for r in test if r.domain == domain]
        assert sum(r.is_anomaly for r in mine) == 10 and sum(not r.is_anomaly for r in mine) == 10
    faults = {r.attributes.split("flt_")[1] for r in test if r.is_anomaly}
    assert faults == set(FAULT_KINDS)
    assert {r.attributes.split("_bg")[0] for r in records if r.domain == "target"} == {"spd_107"}
    assert resolve_edition(test, "auto") == "2023"


def test_synth_and_bench_quality_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`synth` writes hard-v1 (checked on the tiny variant for speed); `bench quality --json` prints one object."""
    runner = CliRunner()
    data = tmp_path / "hard"
    monkeypatch.setitem(PRESETS, "hard-v1", TINY)
    out = runner.invoke(app, ["synth", "--out", str(data), "--seed", "0"])
    assert out.exit_code == 0, out.output
    direct = tmp_path / "direct"
    write_hard_dataset(direct, TINY, seed=0)
    assert _digest(data) == _digest(direct)
    out = runner.invoke(app, ["synth", "--out", str(data)])
    assert out.exit_code == 2 and "empty" in out.output  # a usage error: the folder is not empty
    res = runner.invoke(
        app,
        [
            "bench",
            "quality",
            "--data",
            str(data),
            "--methods",
            "ae",
            "--epochs",
            "1",
            "--baselines",
            "max_1nn,mean_1nn",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["edition"] == "2023" and report["types"] == ["fan", "valve"]
    assert set(report["entries"]) == {"baseline:max_1nn", "baseline:mean_1nn", "ae"}
    for entry in report["entries"].values():
        assert set(entry["per_type"]) == {"fan", "valve"}
        for row in [*entry["per_type"].values(), entry["overall"]]:
            assert set(row) == {"auc", "pauc", "official_score", "train_s"}
            assert 0.0 <= row["auc"] <= 1.0 and 0.0 < row["official_score"] <= 1.0
    assert report["entries"]["ae"]["overall"]["train_s"] > 0


def test_bench_quality_baselines_only(tmp_path: Path) -> None:
    write_hard_dataset(tmp_path, TINY, seed=1)
    res = CliRunner().invoke(
        app, ["bench", "quality", "--data", str(tmp_path), "--methods", "none", "--baselines", "max_1nn", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout.strip().splitlines()[-1])["entries"]) == ["baseline:max_1nn"]
    bad = CliRunner().invoke(app, ["bench", "quality", "--data", str(tmp_path), "--baselines", "median_2nn"])
    assert bad.exit_code == 2 and "median_2nn" in bad.output
