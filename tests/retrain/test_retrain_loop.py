"""Retraining rounds on real Redis + a real archive: the gate refuses a degraded candidate, and a
drifted machine's false alarms go away after its new sound is confirmed normal."""

from __future__ import annotations

import json
import time

import pytest

from soundwatch.model.registry import ModelRegistry
from soundwatch.settings import ArchiveSettings, GateSettings, RetrainSettings
from soundwatch.simulator import Fault
from training.service.archive import ArchiveWriter
from training.service.confirmations import ConfirmationStore
from training.service.retrain import retrain_once

from .retrain_helpers import (
    MACHINES,
    NS,
    StreamingMachine,
    archive_machine_audio,
    copy_registry,
    false_alarm_rate,
    raises_alert,
)

pytestmark = pytest.mark.integration


def _current_v0001(settings, base, tmp_path):  # noqa: ANN001, ANN202
    copy_registry(base, settings.registry_root)
    registry = ModelRegistry(settings.registry_root, settings.redis)
    registry.set_current("fan", "v0001")
    return registry, ArchiveSettings(root=tmp_path / "archive", segment_seconds=30), ConfirmationStore(settings.redis)


@pytest.mark.parametrize("update", ["full", "bank"])
def test_gate_refuses_a_candidate_trained_on_anomalous_audio(
    isolated_settings, base_model, tmp_path, update: str
) -> None:
    """Someone confirmed two minutes of faulty sound as normal. ``full``: a candidate tuned hard on it
    (no replay, high learning rate) has learned the faults as normal; ``bank`` (the default): the
    faults' embeddings joined the kNN bank, so similar faults score as normal. The gate must say no,
    and why."""
    s = isolated_settings
    registry, archive, store = _current_v0001(s, base_model, tmp_path)
    writer = ArchiveWriter(archive)
    t0 = time.time_ns() - 130 * NS
    for mid in MACHINES:
        archive_machine_audio(writer, mid, t0, 120, faults=tuple(Fault), severity=1.5)
        store.confirm("fan", mid, t0, t0 + 120 * NS, by="test", note="(wrongly) confirmed by the test")
    writer.close()
    cfg = RetrainSettings(
        data_root=base_model.data_root,
        replay_ratio=0.0,
        lr=1e-3,
        epochs=8,
        device="cpu",
        progress=False,
        min_confirmed_seconds=30,
        encoder_update=update,
    )
    out = retrain_once(s, "fan", cfg, archive=archive, registry=registry, store=store)
    print("\n" + out.message)
    assert out.version == "v0002" and not out.promoted
    assert registry.current_version("fan") == "v0001", "a refused candidate must not become current"
    meta = json.loads((s.registry_root / "fan" / "v0002" / "metadata.json").read_text())
    gate = meta["metrics"]["gate"]
    assert gate["passed"] is False and gate["reasons"], "the refusal is kept in the candidate's metadata"
    assert any("AUC" in r and "below the limit" in r for r in gate["reasons"]), gate["reasons"]
    assert meta["parent_version"] == "v0001" and meta["data_summary"]["new_seconds"] == 240


@pytest.mark.parametrize("method", ["clp", "ae"])
def test_drift_false_alarms_fixed_by_retraining_and_faults_still_detected(
    isolated_settings, request, tmp_path, method: str
) -> None:
    """Both fans run 10 % faster from now on (a new gearbox ratio). The model raises false alarms;
    two minutes of the new sound are confirmed normal; one retraining round (defaults: ``clp`` refreshes
    its kNN bank, ``ae`` fine-tunes) brings the false alarms on the *following* minute under the 5 %
    target while the four fault types, injected after that at the new speed, still raise alerts.
    Numbers are printed for the report."""
    speed = 1.10
    s = isolated_settings
    base = request.getfixturevalue("base_model" if method == "clp" else "base_model_ae")
    registry, archive, store = _current_v0001(s, base, tmp_path)
    before = registry.load("fan", "v0001")
    machines = {mid: StreamingMachine(mid) for mid in MACHINES}
    far_pre_drift = {mid: false_alarm_rate(before, mid, m.windows(30)) for mid, m in machines.items()}
    faults_pre = {}  # the same faults at the old speed: what the model caught before the drift
    for mid, m in machines.items():
        for f in Fault:
            m.sound.set_fault(f)
            faults_pre[(mid, f.value)] = m.windows(20)
        m.sound.set_fault(None)
    writer = ArchiveWriter(archive)
    t0 = time.time_ns() - 130 * NS
    for mid, m in machines.items():
        m.sound.set_speed(speed)
        m.archive(writer, t0, 120)
        store.confirm("fan", mid, t0, t0 + 120 * NS, by="test", note="new gearbox: faster is normal now")
    writer.close()
    fresh = {mid: m.windows(60) for mid, m in machines.items()}  # the minute after the confirmed range
    faults = {}
    for mid, m in machines.items():
        for f in Fault:
            m.sound.set_fault(f)
            faults[(mid, f.value)] = m.windows(20)
        m.sound.set_fault(None)
    far_before = {mid: false_alarm_rate(before, mid, w) for mid, w in fresh.items()}

    # Small evaluation sets (8 test clips = 64 windows per machine): one clip flipping moves AUC by
    # ~0.016 and FAR by ~0.016, so the tolerances are wider than the production defaults.
    gate = GateSettings(far_tolerance=0.05, auc_tolerance=0.05, pauc_tolerance=0.1, far_target=0.05)
    cfg = RetrainSettings(data_root=base.data_root, device="cpu", progress=False, min_confirmed_seconds=30, gate=gate)
    out = retrain_once(s, "fan", cfg, archive=archive, registry=registry, store=store)
    print("\n" + out.message)
    after = registry.load("fan", out.version)
    far_after = {mid: false_alarm_rate(after, mid, w) for mid, w in fresh.items()}
    alerted_pre = sorted(f"{k[0]}:{k[1]}" for k, w in faults_pre.items() if raises_alert(before, k[0], w))
    alerted_before = sorted(f"{k[0]}:{k[1]}" for k, w in faults.items() if raises_alert(before, k[0], w))
    alerted_after = sorted(f"{k[0]}:{k[1]}" for k, w in faults.items() if raises_alert(after, k[0], w))
    rep = out.decision.to_dict()
    print(
        json.dumps(
            {
                "method": method,
                "retrain": {
                    k: out.stats[k]
                    for k in ("encoder_update", "score_kind", "threshold_policy", "epochs")
                    if k in out.stats
                },
                "gate_far_current": rep["current"]["far"],
                "gate_far_candidate": rep["candidate"]["far"],
                "speed": speed,
                "far_pre_drift": far_pre_drift,
                "far_before": far_before,
                "far_after": far_after,
                "faults_alerted_before": f"{len(alerted_before)}/{len(faults)}",
                "faults_alerted_pre_drift": f"{len(alerted_pre)}/{len(faults)}",
                "faults_alerted_after": f"{len(alerted_after)}/{len(faults)}",
                "missed_after": sorted(set(f"{k[0]}:{k[1]}" for k in faults) - set(alerted_after)),
                "auc_before": rep["current"]["auc"],
                "auc_after": rep["candidate"]["auc"],
                "pauc_before": rep["current"]["pauc"],
                "pauc_after": rep["candidate"]["pauc"],
            },
            indent=1,
        )
    )
    assert max(far_before.values()) > 0.3, "the drift must cause false alarms, or the scenario shows nothing"
    assert out.promoted and registry.current_version("fan") == out.version == "v0002"
    assert max(far_after.values()) <= 0.05
    assert len(alerted_after) >= len(faults) - 2, "faults at the new speed must still raise alerts"
