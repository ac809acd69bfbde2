"""Class choice for small plants, the threshold rule, and the normal-data-only score choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from training.calibration import choose_score_kind, fit_threshold, pseudo_anomaly_auc
from training.datasets import ClipRecord
from training.train import choose_classes, split_holdout


def _rec(mid: str, domain: str | None = None, attrs: str = "", i: int = 0) -> ClipRecord:
    scheme = "dcase2021" if domain else "dcase2020"
    return ClipRecord(
        Path(f"/x/{mid}_{domain}_{attrs}_{i}.wav"),
        "fan",
        mid,
        "normal",
        "train",
        scheme,  # type: ignore[arg-type]
        section=mid if domain else None,
        domain=domain,
        attributes=attrs,
    )


def test_classes_fall_back_from_ids_to_attributes_to_none() -> None:
    source, names, _ = choose_classes([_rec("id_00"), _rec("id_02")])
    assert (source, names) == ("machine_id", ["id_00", "id_02"])
    one_section = [_rec("section_00", "source", "speed_6"), _rec("section_00", "target", "speed_8")]
    source, names, of = choose_classes(one_section)
    assert source == "attributes" and len(names) == 2 and of(one_section[0]) == "section_00|source|speed_6"
    source, names, _ = choose_classes([_rec("id_00", i=0), _rec("id_00", i=1)])
    assert (source, names) == ("none", [])


def test_holdout_keeps_every_machine_in_training() -> None:
    recs = [_rec("id_00", i=i) for i in range(10)] + [_rec("id_02", i=i) for i in range(2)] + [_rec("id_04")]
    fit, hold = split_holdout(recs, 0.15, seed=0)
    assert sorted(r.machine_id for r in hold) == ["id_00", "id_00", "id_02"]
    assert {r.machine_id for r in fit} == {"id_00", "id_02", "id_04"}
    assert not set(fit) & set(hold)


def test_gamma_threshold_rule() -> None:
    values = stats.gamma.rvs(3.0, scale=0.5, size=400, random_state=np.random.default_rng(0))
    t, rule = fit_threshold(values)
    assert "gamma" in rule and abs(t - stats.gamma.ppf(0.99, 3.0, scale=0.5)) < 0.4
    assert 0.97 < np.mean(values < t) <= 1.0
    t_small, rule_small = fit_threshold(np.array([1.0, 2.0, 3.0]))
    assert "empirical" in rule_small and t_small > 3.0 * 0.99


def test_score_choice_uses_pseudo_anomalies_and_prefers_knn_on_ties() -> None:
    rng = np.random.default_rng(0)
    clips = [rng.normal(-40, 1, size=(8, 128, 64)).astype(np.float32) for _ in range(6)]
    ids = ["id_00", "id_02"] * 3

    def energy(w: np.ndarray, m: list[str]) -> np.ndarray:  # sensitive to added energy
        return np.asarray(w, dtype=np.float64).mean(axis=(1, 2)) + 40

    def blind(w: np.ndarray, m: list[str]) -> np.ndarray:  # sees nothing
        return np.zeros(len(w))

    good = pseudo_anomaly_auc(energy, clips, ids, k=5)
    bad = pseudo_anomaly_auc(blind, clips, ids, k=5)
    assert good["narrow_tone"] == 1.0 and good["impacts"] == 1.0 and bad["mean"] == 0.5
    assert set(good) == {"mel_shift", "narrow_tone", "impacts", "other_machine", "mean"}
    assert choose_score_kind({"neglogp": good, "knn": bad}) == "neglogp"
    assert choose_score_kind({"neglogp": {"mean": 0.903}, "knn": {"mean": 0.9}}) == "knn"
