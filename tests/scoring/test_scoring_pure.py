"""Pure parts of scoring: median filter + alert machine on crafted sequences, batcher, state, line protocol."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.alerts import AlertMachine, Observation, observe
from scoring.batcher import MicroBatcher, chunks
from scoring.state import MachineState, StateTable
from soundwatch.contracts import AlertEvent, AlertState
from soundwatch.influx.schema import Point, score_point
from soundwatch.model.filters import StreamingMedian, causal_median

THRESHOLD = 1.0


def run_pipeline(raw: list[float], k: int = 5, alert_after: int = 3, resolve_after: int = 4):
    """raw window scores -> (medians, events): the median filter feeding the alert machine, as in the worker."""
    median = StreamingMedian(k)
    machine = AlertMachine(alert_after, resolve_after)
    medians, events = [], []
    for i, s in enumerate(raw):
        m = median.update(s)
        medians.append(m)
        ev = observe(machine, Observation("fan", "id_00", "v0001", i, m, THRESHOLD))
        if ev is not None:
            events.append((i, ev))
    return medians, events


def test_single_spikes_do_not_alert():
    raw = [0.2] * 40
    for i in (5, 13, 21, 22, 30):  # isolated spikes and one pair: never a median majority in k=5
        raw[i] = 25.0
    medians, events = run_pipeline(raw)
    assert max(medians) < THRESHOLD
    assert events == []


def test_spike_without_median_filter_would_alert_with_alert_after_1():
    """Why the filter exists: the same spike raises an alert when the machine reacts to raw scores."""
    machine = AlertMachine(1, 1)
    assert [machine.update(s > THRESHOLD) for s in (0.2, 25.0, 0.2)] == [None, "raise", "resolve"]


def test_sustained_rise_alerts_once_after_filter_delay_and_alert_after():
    raw = [0.2] * 10 + [3.0] * 20
    medians, events = run_pipeline(raw, k=5, alert_after=3)
    # median crosses at the 3rd high window (index 12); 3 consecutive anomalous medians -> index 14
    assert medians[11] < THRESHOLD <= medians[12]
    assert len(events) == 1
    i, ev = events[0]
    assert i == 14
    assert isinstance(ev, AlertEvent)
    assert (ev.previous, ev.current) == (AlertState.NORMAL, AlertState.ALERTING)
    assert ev.score_median == 3.0 and ev.threshold == THRESHOLD
    assert AlertEvent.decode(ev.encode()) == ev


def test_hysteresis_holds_through_short_dips_and_resolves_after_a_sustained_drop():
    raw = [3.0] * 10 + [0.2, 0.2] + [3.0] * 5 + [0.2] * 15  # a 2-window dip does not even reach the median
    medians, events = run_pipeline(raw, k=3, alert_after=3, resolve_after=4)
    states = [ev.current for _, ev in events]
    assert states == [AlertState.ALERTING, AlertState.NORMAL]
    resolved_at = events[1][0]
    assert resolved_at > 17  # not during the dip
    # the resolution needs resolve_after consecutive normal medians
    assert all(m <= THRESHOLD for m in medians[resolved_at - 3 : resolved_at + 1])


def test_hysteresis_counts_consecutive_windows_only():
    m = AlertMachine(alert_after=3, resolve_after=2)
    pattern = [True, True, False, True, True, False, True, True, True]
    changes = [m.update(x) for x in pattern]
    assert changes == [None] * 8 + ["raise"]
    assert [m.update(x) for x in (False, True, False, False)] == [None, None, None, "resolve"]
    assert m.state is AlertState.NORMAL


def test_threshold_is_inclusive_normal():
    assert not Observation("fan", "a", "v1", 0, 1.0, 1.0).anomalous
    assert Observation("fan", "a", "v1", 0, 1.0000001, 1.0).anomalous


def test_alert_machine_snapshot_round_trip_and_validation():
    m = AlertMachine(3, 2)
    m.update(True)
    m.update(True)
    r = AlertMachine.restore(m.snapshot(), 3, 2)
    assert r.update(True) == "raise"
    with pytest.raises(ValueError, match="alert_after"):
        AlertMachine(0, 1)


# ------------------------------------------------------------------ batcher
def test_batcher_due_on_size_or_wait_and_groups_keep_order():
    b: MicroBatcher[tuple[str, int]] = MicroBatcher(lambda it: it[0], max_batch=4, max_wait_ms=50)
    assert not b.due(0.0) and b.time_left(0.0) == pytest.approx(0.05)
    b.add(("fan", 1), now=10.0)
    b.add(("pump", 2), now=10.01)
    assert not b.due(10.02)
    assert b.time_left(10.02) == pytest.approx(0.03)
    assert b.due(10.05)
    b.add(("fan", 3), now=10.03)
    b.add(("fan", 4), now=10.03)
    assert b.room == 0 and b.due(10.03)
    batch = b.drain()
    assert [x[1] for x in batch.items] == [1, 2, 3, 4]
    assert batch.groups == {"fan": [("fan", 1), ("fan", 3), ("fan", 4)], "pump": [("pump", 2)]}
    assert len(b) == 0 and b.room == 4 and not b.due(99.0)
    assert [len(c) for c in chunks(list(range(10)), 4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda it: it, 0, 1)


# ------------------------------------------------------------------ replay-aware state
def test_replayed_windows_get_the_same_medians():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=30)
    ends = np.arange(30) * 1000 + 5000
    state = MachineState(5, "v1", AlertMachine(3, 3))
    first = [state.filter(int(t), float(s)) for t, s in zip(ends, scores, strict=True)]
    np.testing.assert_allclose(first, causal_median(scores, 5))
    # crash before the commit of windows 20..29, restart from saved state, replay them
    restored = MachineState.from_json(state.to_json(), alert_after=3, resolve_after=3)
    replay = [restored.filter(int(t), float(s)) for t, s in zip(ends[20:], scores[20:], strict=True)]
    np.testing.assert_allclose(replay, first[20:])


def test_replay_does_not_advance_the_alert_machine_twice():
    state = MachineState(1, "v1", AlertMachine(2, 2))

    def obs(t: int) -> Observation:
        return Observation("fan", "a", "v1", t, 5.0, 1.0)

    assert state.alert_step(obs(1)) is None
    assert state.alert_step(obs(1)) is None  # replayed: not counted
    assert state.alert.run == 1
    assert state.alert_step(obs(2)) is not None


def test_state_table_restarts_filter_on_new_model_version_and_marks_dirty():
    table = StateTable(None, alert_after=2, resolve_after=2)
    s = table.get("fan/a", "v1", 3)
    s.filter(1, 10.0)
    s.filter(2, 10.0)
    s2 = table.get("fan/a", "v2", 3)
    assert s2 is s and len(s.median) == 0 and s.model_version == "v2"
    assert table.save_dirty() is True


# ------------------------------------------------------------------ line protocol
def test_score_point_line_protocol_is_stable_and_escaped():
    p = score_point(
        machine_type="fan",
        machine_id="id_00",
        model_version="v0001",
        end_ns=1_700_000_000_123_456_789,
        score=1.5,
        score_median=1.25,
        threshold=2.0,
        anomalous=False,
    )
    assert p.to_line() == (
        "asd_score,machine_id=id_00,machine_type=fan,model_version=v0001 "
        "anomalous=false,score=1.5,score_median=1.25,threshold=2.0 1700000000123456789"
    )
    q = Point("m x", {"a b": "c,d=e"}, {"s": 'say "hi"', "n": 3}, 5)
    assert q.to_line() == 'm\\ x,a\\ b=c\\,d\\=e n=3i,s="say \\"hi\\"" 5'
    with pytest.raises(ValueError, match="non-finite"):
        Point("m", {}, {"x": float("nan")}, 1).to_line()
