"""Statistic methods (``stats-*``): serialisation, the unknown-machine fallback, the registry round trip,
``auto`` choosing them, and the regression guard on real recordings (AUC >= 0.99 on real-fan-sensiml)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from soundwatch.model.registry import ModelRegistry
from soundwatch.model.stats import (
    UNION,
    Density,
    StatsConfig,
    StatsModel,
    ledoit_wolf,
    quantile_last_axis,
    window_features,
)
from soundwatch.params import FeatureParams
from training.auto import train_auto
from training.datasets import scan_dataset
from training.evaluate import evaluate
from training.methods import METHODS, STATS_METHODS
from training.train import TrainConfig, train_machine_type

REAL_FAN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-fan-sensiml"
CFG = TrainConfig(device="cpu", progress=False)


def _windows(n: int, seed: int, level: float = -40.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level + rng.normal(0, 2, size=(n, 16, 32))).astype(np.float32)


def test_features_per_band_and_ledoit_wolf_is_well_conditioned() -> None:
    w = _windows(3, 0)
    w[0, 5, 7] = 10.0  # one loud frame: the max keeps it, the 25 % quantile ignores it
    f = window_features(w, ("q25", "max"))
    assert f.shape == (3, 32) and f[0, 16 + 5] == pytest.approx(10.0) and f[0, 5] < -30
    cov = ledoit_wolf(np.random.default_rng(0).normal(size=(10, 40)))  # fewer rows than features
    assert np.linalg.cond(cov) < 1e3


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_the_fast_quantile_gives_numpys_floats_exactly(q: float) -> None:
    rng = np.random.default_rng(3)
    for frames in (1, 2, 3, 63, 64, 127, 128):
        x = rng.normal(-40, 20, size=(4, 8, frames))
        assert np.array_equal(quantile_last_axis(x, q), np.quantile(x, q, axis=-1)), frames
        x32 = x.astype(np.float32)  # as the stream's windows come: sorted in float32, the float64 result
        assert np.array_equal(quantile_last_axis(x32, q), np.quantile(x32.astype(np.float64), q, axis=-1))


def test_window_features_of_float32_windows_are_those_of_their_float64_values() -> None:
    w = _windows(6, 5)
    for features in (("q25", "max"), ("q25", "max", "mean"), ("max", "std", "delta")):
        assert np.array_equal(window_features(w, features), window_features(w.astype(np.float64), features))


def test_mahalanobis_scores_and_per_machine_grouping_match_the_plain_formulas() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(300, 24))
    density = Density.fit(z, StatsConfig(density="maha"))
    q = rng.normal(size=(50, 24)) * 1.5
    d = q - density.loc
    reference = np.sqrt(np.einsum("ij,jk,ik->i", d, density.prec, d))
    np.testing.assert_allclose(density.score(q, 1), reference, rtol=1e-12)

    cfg = StatsConfig(features=("q25", "max"))
    feats = {m: window_features(_windows(40, seed, level=-40 + 3 * seed), cfg.features) for seed, m in enumerate("abc")}
    model = StatsModel.fit_features(np.concatenate(list(feats.values())), [m for m in feats for _ in range(40)], cfg)
    mixed = [(m, i) for m in "abcx" for i in range(5)]  # x: unseen, scored by the union
    mixed = [mixed[k] for k in rng.permutation(len(mixed))]
    rows = np.stack([feats.get(m, feats["a"])[i] for m, i in mixed])
    ids = [m for m, _ in mixed]
    one_by_one = [model.score_features(rows[k : k + 1], [ids[k]])[0] for k in range(len(ids))]
    np.testing.assert_allclose(model.score_features(rows, ids), one_by_one, rtol=1e-12)


@pytest.mark.parametrize("cfg", [StatsConfig(("q25", "max"), "maha"), StatsConfig(("mean", "std"), "knn", 3)])
def test_arrays_round_trip_and_unknown_machines_use_the_union(cfg: StatsConfig) -> None:
    train = np.concatenate([_windows(40, 1), _windows(40, 2, level=-30.0)])
    model = StatsModel.fit(train, ["a"] * 40 + ["b"] * 40, cfg)
    again = StatsModel.from_arrays(model.config(), model.to_arrays())
    probe = np.concatenate([_windows(5, 3), _windows(5, 4, level=-10.0)])
    ids = ["a"] * 5 + ["zz"] * 5
    assert np.allclose(again.score(probe, ids), model.score(probe, ids))
    assert set(model.config()["machines"]) == {"a", "b", UNION}
    union_only = model.densities[UNION].score(model.standardise(probe[5:]), cfg.knn_k)
    assert np.allclose(model.score(probe[5:], ["zz"] * 5), union_only)
    assert model.score(probe[:5], ["a"] * 5).mean() < model.score(probe[5:], ["a"] * 5).mean()


def test_every_stats_method_is_a_method() -> None:
    assert set(STATS_METHODS) <= set(METHODS)


def test_stats_on_real_fan_saved_signed_loaded_and_above_099(tmp_path: Path) -> None:
    """The guard of issue #15: real faults that per-band statistics separate must stay separated."""
    records = scan_dataset(REAL_FAN)
    registry = ModelRegistry(tmp_path / "registry", signing_key="test-key")
    for method in STATS_METHODS:
        result = train_machine_type(records, FeatureParams(), replace(CFG, method=method))
        art = result.artifact
        assert art.score_kind == "stats" and art.aggregation in ("mean", "top3", "max") and art.median_k in (1, 3, 5)
        assert 0.5 <= art.metrics["selection"]["mean"] <= 1.0
        version = registry.save(art)
        loaded = registry.load("fan", version)
        w = np.stack([np.full((128, 64), -50.0, np.float32), np.full((128, 64), -20.0, np.float32)])
        assert np.allclose(loaded.score_windows(w, ["id_00", "id_99"]), art_scores(art, w, ["id_00", "id_99"]))
        report = evaluate(REAL_FAN, registry, method=method, progress=False)
        assert report["overall"]["auc_mean"] >= 0.99, (method, report["overall"])


def art_scores(art, windows: np.ndarray, ids: list[str]) -> np.ndarray:
    return art.scorer().score(windows, ids)


def test_auto_over_the_stats_methods_picks_one_and_reaches_099(tmp_path: Path) -> None:
    records = scan_dataset(REAL_FAN)
    auto = train_auto(records, FeatureParams(), CFG, methods=tuple(STATS_METHODS))
    assert auto.winner.method in STATS_METHODS and "pseudo-anomaly" in auto.criterion
    registry = ModelRegistry(tmp_path / "registry", signing_key=None)
    for art in auto.artifacts_in_save_order():
        registry.save(art)
    assert evaluate(REAL_FAN, registry, progress=False)["overall"]["auc_mean"] >= 0.99


def test_a_deep_method_replaces_the_statistic_ones_only_when_clearly_better() -> None:
    from training.auto import Candidate, choose

    def c(method: str, value: float) -> Candidate:
        return Candidate(method, None, value, "trained")

    assert choose([c("stats-max", 0.90), c("stats-q25max", 0.91), c("clp", 0.93)]).method == "stats-q25max"
    assert choose([c("stats-max", 0.90), c("clp", 0.92), c("ae", 0.94)]).method == "ae"
    assert choose([c("stats-max", 0.90), c("stats-q25knn", 0.903)]).method == "stats-max"  # ties: the earlier
    assert choose([c("ae", 0.80), c("clp", 0.85)]).method == "clp"


def test_retraining_a_stats_model_refits_the_densities_of_the_confirmed_machines(tmp_path: Path) -> None:
    from soundwatch.settings import RetrainSettings
    from training.service.retrain import calibrate, fine_tune

    records = scan_dataset(REAL_FAN)
    registry = ModelRegistry(tmp_path / "registry", signing_key=None)
    parent = registry.load(
        "fan", registry.save(train_machine_type(records, FeatureParams(), replace(CFG, method="stats-max")).artifact)
    )
    drifted = np.stack(
        [
            np.full((128, 64), -40.0, np.float32) + np.random.default_rng(i).normal(0, 1, (128, 64)).astype(np.float32)
            for i in range(30)
        ]
    )
    ids = ["id_00"] * 30
    before = parent.score_windows(drifted[:5], ids[:5])
    cand = fine_tune(parent, drifted, ids, RetrainSettings(device="cpu", progress=False))
    assert cand.score_kind == "stats" and cand.encoder_mode == "refit" and set(cand.state) == {"stats"}
    after = cand.scorer.score(drifted[:5], ids[:5])
    assert after.mean() < before.mean()  # the confirmed audio is normal now
    thresholds, default, _ = calibrate(cand.scorer, [("id_00", drifted)], parent.median_k, ["id_00"])
    assert np.isfinite(default) and thresholds["id_00"] > 0
