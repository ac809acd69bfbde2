"""DCASE 2021-2024 official metrics (training.dcase) on hand-computable cases and against the evaluator's loop."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from sklearn import metrics

from soundwatch.model.registry import ModelRegistry
from training.datasets import parse_clip_name, scan_dataset
from training.dcase import (
    ScoredClip,
    decision_rates,
    detect_edition,
    official_score,
    score_file_names,
    section_metrics,
)
from training.evaluate import evaluate
from training.train import TrainResult


def _clip(domain: str, label: int | None, score: float, section: str = "section_00", decision: int = 0) -> ScoredClip:
    return ScoredClip(f"{section}_{domain}_{score}", section, domain, label, score, decision)


# source normals 0.1 0.2, target normals 0.3 0.6, anomalies 0.5 (source) 0.4 (target)
HAND = [
    _clip("source", 0, 0.1),
    _clip("source", 0, 0.2),
    _clip("target", 0, 0.3),
    _clip("target", 0, 0.6),
    _clip("source", 1, 0.5),
    _clip("target", 1, 0.4),
]


def test_2022_plus_section_metrics_by_hand() -> None:
    m = section_metrics(HAND, "2023")
    # AUC (source): source normals vs every anomaly of the section: both anomalies beat 0.1 and 0.2.
    assert m["auc_source"] == pytest.approx(1.0)
    # AUC (target): 0.5 > 0.3, 0.5 < 0.6, 0.4 > 0.3, 0.4 < 0.6 -> 2 of 4 pairs.
    assert m["auc_target"] == pytest.approx(0.5)
    # pAUC over both domains: the top score is a normal (FPR 0.25 at TPR 0), so the area under
    # FPR <= 0.1 is 0; McClish: 0.5 * (1 + (0 - 0.005) / (0.1 - 0.005)) = 9/19.
    assert m["pauc"] == pytest.approx(9 / 19)
    # official: harmonic mean of AUC(source), AUC(target), pAUC = 3 / (1 + 2 + 19/9) = 27/46.
    assert official_score([m], "2023") == pytest.approx(27 / 46)
    assert official_score([m], "2022") == official_score([m], "2024") == official_score([m], "2023")


def test_2021_section_metrics_by_hand() -> None:
    m = section_metrics(HAND, "2021")
    # source domain only: normals 0.1 0.2 vs anomaly 0.5 -> AUC 1, pAUC 1.
    assert m["auc_source"] == pytest.approx(1.0) and m["pauc_source"] == pytest.approx(1.0)
    # target only: normals 0.3 0.6 vs anomaly 0.4 -> AUC 1/2; top score a normal (FPR 0.5) -> pAUC 9/19.
    assert m["auc_target"] == pytest.approx(0.5) and m["pauc_target"] == pytest.approx(9 / 19)
    # official 2021: harmonic mean of every AUC and pAUC: 4 / (1 + 1 + 2 + 19/9).
    assert official_score([m], "2021") == pytest.approx(4 / (4 + 19 / 9))


def test_unlabelled_clips_and_one_label_sections_count_nowhere() -> None:
    m = section_metrics([*HAND, _clip("source", None, 99.0), ScoredClip("x", "section_00", None, None, 5.0, 1)], "2023")
    assert m == section_metrics(HAND, "2023")
    only_normal = section_metrics([_clip("source", 0, 0.1), _clip("target", 0, 0.2)], "2023")
    assert only_normal["auc_source"] is None and only_normal["pauc"] is None
    assert official_score([only_normal], "2023") is None


def test_decision_rates_by_hand() -> None:
    r = decision_rates([0, 0, 0, 0, 1, 1, None], [1, 0, 0, 0, 1, 0, 1])
    assert r["false_alarm_rate"] == pytest.approx(0.25) and r["recall"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(0.5) and r["n_normal"] == 4 and r["n_anomaly"] == 2


def _evaluator_2023(sections: dict[str, list[ScoredClip]]) -> float:
    """The loop of the official dcase2022/2023 evaluator (numpy masks on y_true / y_domain), for comparison."""
    src, tgt, pauc = [], [], []
    for clips in sections.values():
        y_pred_all = np.array([c.score for c in clips])
        y_true_all = np.array([c.label for c in clips])
        y_domain = np.array([{"source": 0, "target": 1}[c.domain] for c in clips])  # type: ignore[index]
        pauc.append(metrics.roc_auc_score(y_true_all, y_pred_all, max_fpr=0.1))
        for domain_idx, out in ((0, src), (1, tgt)):
            keep = (y_domain == domain_idx) | (y_true_all != 0)
            out.append(metrics.roc_auc_score(y_true_all[keep], y_pred_all[keep]))
    return float(scipy.stats.hmean(np.maximum(np.array(src + tgt + pauc), sys.float_info.epsilon)))


def _evaluator_2021(sections: dict[str, list[ScoredClip]]) -> float:
    values = []
    for clips in sections.values():
        for domain in ("source", "target"):
            y = [c.label for c in clips if c.domain == domain]
            s = [c.score for c in clips if c.domain == domain]
            values += [metrics.roc_auc_score(y, s), metrics.roc_auc_score(y, s, max_fpr=0.1)]
    return float(scipy.stats.hmean(np.maximum(np.array(values), sys.float_info.epsilon)))


def test_matches_the_evaluators_loop_on_a_random_example() -> None:
    rng = np.random.default_rng(7)
    sections: dict[str, list[ScoredClip]] = {}
    for k in range(3):
        sec = f"section_{k:02d}"
        clips = []
        for domain, n_normal, n_anom in (("source", 50, 50), ("target", 50, 50)):
            clips += [_clip(domain, 0, float(rng.normal(0, 1)), sec) for _ in range(n_normal)]
            clips += [_clip(domain, 1, float(rng.normal(0.7 + 0.3 * k, 1)), sec) for _ in range(n_anom)]
        sections[sec] = clips
    for edition, reference in (("2023", _evaluator_2023), ("2021", _evaluator_2021)):
        got = official_score([section_metrics(c, edition) for c in sections.values()], edition)  # type: ignore[arg-type]
        assert got == pytest.approx(reference(sections), abs=1e-12)


def test_edition_detection_and_file_names() -> None:
    assert detect_edition(["section_00_source_test_normal_0000.wav"], [""]) == "2021"
    assert detect_edition(["section_00_source_test_normal_0000_car_A1.wav"], ["car_A1"]) == "2023"
    assert detect_edition(["section_00_source_test_normal_0000.wav", "section_00_0001.wav"], ["", ""]) == "2023"
    assert score_file_names("fan", "section_01", "2023") == {
        None: ("anomaly_score_fan_section_01_test.csv", "decision_result_fan_section_01_test.csv")
    }
    assert score_file_names("fan", "section_01", "2021")["target"] == (
        "anomaly_score_fan_section_01_target_test.csv",
        "decision_result_fan_section_01_target_test.csv",
    )


def test_unlabelled_names_parse_only_in_test() -> None:
    r = parse_clip_name(Path("section_03_0007.wav"), "fan", "test")
    assert r is not None and r.label == "unknown" and not r.is_labelled and r.section == "section_03"
    assert r.domain is None
    r21 = parse_clip_name(Path("section_03_target_test_0007.wav"), "fan", "test")
    assert r21 is not None and r21.domain == "target" and not r21.is_labelled
    assert parse_clip_name(Path("section_03_0007.wav"), "fan", "train") is None


def _dcase2023_folder(src: Path, dst: Path) -> Path:
    """tiny_data's valve test clips renamed to DCASE 2023 names (source/target, attributes) + 2 unlabelled."""
    test = dst / "valve" / "test"
    test.mkdir(parents=True)
    files = sorted((src / "valve" / "test").glob("*.wav"))
    for i, f in enumerate(files):
        label = "anomaly" if f.name.startswith("anomaly") else "normal"
        domain = ("source", "target")[i % 2]
        shutil.copy(f, test / f"section_00_{domain}_test_{label}_{i:04d}_vlv_{i % 3}.wav")
    shutil.copy(files[0], test / "section_00_0100.wav")
    shutil.copy(files[-1], test / "section_00_0101.wav")
    return dst


def test_evaluate_writes_2023_files_and_official_score(
    tiny_data: Path, tiny_result: TrainResult, tmp_path: Path
) -> None:
    data = _dcase2023_folder(tiny_data, tmp_path / "d23")
    registry = ModelRegistry(tmp_path / "registry")
    registry.save(tiny_result.artifact)
    out = tmp_path / "results"
    report = evaluate(data, registry, results_dir=out, progress=False)
    assert report["overall"]["edition"] == "2023"
    assert report["clips"]["valve"] == {"labelled": 8, "unlabelled": 2}
    (sec,) = report["per_section"]
    assert sec["section"] == "section_00" and {"auc_source", "auc_target", "pauc"} <= set(sec)
    t = report["per_type"]["valve"]
    assert t["official_score"] == pytest.approx(official_score([sec], "2023"))
    assert report["overall"]["official_score"] == pytest.approx(t["official_score"])
    assert 0.0 <= t["false_alarm_rate"] <= 1.0 and 0.0 <= t["recall"] <= 1.0
    assert report["overall"]["auc_mean"] == pytest.approx(t["auc_mean"])
    rows = list(csv.reader((out / "anomaly_score_valve_section_00_test.csv").open()))
    assert len(rows) == 10 and {"section_00_0100.wav", "section_00_0101.wav"} <= {r[0] for r in rows}
    decisions = list(csv.reader((out / "decision_result_valve_section_00_test.csv").open()))
    assert {r[1] for r in decisions} <= {"0", "1"} and len(decisions) == 10

    out21 = tmp_path / "results21"
    with pytest.raises(Exception, match="per domain"):
        evaluate(data, registry, results_dir=out21, progress=False, edition="2021")
    for f in data.glob("valve/test/section_00_01*.wav"):
        f.unlink()
    report21 = evaluate(data, registry, results_dir=out21, progress=False, edition="2021")
    assert report21["overall"]["edition"] == "2021" and "pauc_target" in report21["per_section"][0]
    assert (out21 / "anomaly_score_valve_section_00_source_test.csv").exists()
    assert (out21 / "decision_result_valve_section_00_target_test.csv").exists()


def test_scan_leaves_unlabelled_out_unless_asked(tmp_path: Path, tiny_data: Path) -> None:
    data = _dcase2023_folder(tiny_data, tmp_path / "d")
    assert all(r.is_labelled for r in scan_dataset(data))
    assert sum(not r.is_labelled for r in scan_dataset(data, unlabelled=True)) == 2
