"""ScoringCore (no services): routing, refusals, filter/threshold/alert wiring; and the bench command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scoring_helpers import make_window
from typer.testing import CliRunner

from deploy.private_services import plumbing_model
from scoring.core import ScoringCore
from scoring.models import ModelCache, parse_reload_message
from scoring.state import StateTable
from soundwatch.contracts import AlertState, Reason
from soundwatch.params import FeatureParams


class RampModel:
    """A trivial deterministic scorer: the score is the window's mean dB + 100 (pure-part test double)."""

    def __init__(self, version: str = "v1", fail: bool = False, nan_for: str | None = None) -> None:
        self.machine_type, self.version, self.feature_params, self.median_k = "fan", version, FeatureParams(), 3
        self.fail, self.nan_for = fail, nan_for

    def score_windows(self, windows, machine_ids):
        if self.fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        out = windows.mean(axis=(1, 2)).astype(np.float64) + 100.0
        return np.where([m == self.nan_for for m in machine_ids], np.nan, out)

    def threshold_for(self, machine_id):
        return float("inf") if machine_id == "broken-threshold" else 10.0


class Source:
    def __init__(self, model) -> None:
        self.model, self.loads = model, 0

    def load(self, machine_type, version=None, device="cpu"):
        self.loads += 1
        return self.model

    def machine_types(self):
        return ["fan"]

    def current_version(self, machine_type):
        return self.model.version


def _core(model) -> ScoringCore:
    return ScoringCore(
        ModelCache(Source(model), "cpu"), StateTable(None, alert_after=2, resolve_after=2), max_batch=4, default_k=5
    )


def _w(mid: str, i: int, level: float, params: FeatureParams | None = None):
    p = params or FeatureParams()
    return make_window("fan", mid, i, params=p, values=np.full((p.n_mels, p.window_frames), level, np.float32))


def test_core_scores_filters_thresholds_and_alerts_in_stream_order():
    core = _core(RampModel())
    levels = [-95, -95, -50, -95, -50, -50, -50]  # scores 5, 5, 50, 5, 50, 50, 50; threshold 10
    result = core.process([(_w("a", i, lv), i) for i, lv in enumerate(levels)])  # 7 windows > max_batch: 2 passes
    assert [s.context for s in result.scored] == list(range(7))
    assert [s.score.score for s in result.scored] == [5, 5, 50, 5, 50, 50, 50]
    assert [s.score.score_median for s in result.scored] == [5, 5, 5, 5, 50, 50, 50]  # k=3 from the model
    assert [s.score.anomalous for s in result.scored] == [False] * 4 + [True] * 3
    alerts = [(s.context, s.alert.current) for s in result.scored if s.alert]
    assert alerts == [(5, AlertState.ALERTING)]  # alert_after=2 consecutive anomalous medians


def test_core_refuses_unknown_type_mismatched_params_wrong_shape_nan_and_survives_a_failing_model():
    core = _core(RampModel(nan_for="b"))
    small = FeatureParams(n_mels=64)
    items = [
        (make_window("valve", "a", 0), "unknown"),
        (_w("a", 0, -60, params=small), "params"),
        (_w("a", 1, -60), "ok"),
        (_w("b", 0, -60), "nan"),
        (_w("broken-threshold", 0, -60), "thr"),
    ]
    result = core.process(items)
    assert [s.context for s in result.scored] == ["ok"]
    got = {r.context: r.error for r in result.rejected}
    assert got["unknown"].reason is Reason.UNKNOWN_MACHINE_TYPE and "valve" in got["unknown"].detail
    assert (
        got["params"].reason is Reason.FEATURE_PARAMS_MISMATCH
        and "n_mels: window 64 vs model 128" in got["params"].detail
    )
    assert got["nan"].reason is Reason.NON_FINITE
    assert got["thr"].reason is Reason.NON_FINITE and "threshold" in got["thr"].detail
    broken = _core(RampModel(fail=True)).process([(_w("a", 0, -60), "x")])
    assert broken.scored == [] and broken.rejected[0].error.reason is Reason.INVALID_FIELD
    assert "CUDA out of memory" in broken.rejected[0].error.detail


def test_model_cache_remembers_misses_and_reload_swaps_versions():
    source = Source(RampModel("v1"))
    cache = ModelCache(source, "cpu")
    assert cache.get("pump") is None and "no model for machine type 'pump'" in cache.why_missing("pump")
    assert cache.get("fan").version == "v1" and source.loads == 1
    source.model = RampModel("v2")
    assert cache.reload("fan", "v2") is True and cache.loaded == {"fan": "v2"}
    assert cache.reload("fan", "v2") is False  # already current
    assert parse_reload_message(b'{"machine_type": "fan", "version": "v0003"}') == ("fan", "v0003")
    with pytest.raises(ValueError, match="machine_type"):
        parse_reload_message(b"{}")


def test_bench_command_prints_one_json_object(tmp_path):
    import typer

    from deploy.bench_scoring import bench

    plumbing_model(tmp_path, "fan", ["id_00", "id_02"])
    app = typer.Typer()
    app.command()(bench)
    result = CliRunner().invoke(
        app,
        [
            "--json",
            "--registry",
            str(tmp_path),
            "--windows",
            "64",
            "--machines",
            "4",
            "--max-batch",
            "16",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["windows"] == 64 and data["device"] == "cpu" and data["model"] == "fan/v0001"
    assert data["machines_realtime"] == pytest.approx(data["windows_per_s"] * 1.024, rel=0.01)
    assert data["windows_per_s"] > 0 and data["batch_speedup"] > 0
