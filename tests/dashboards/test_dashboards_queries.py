"""Every panel, annotation, variable and alert query runs against the real InfluxDB 1.6 and returns
the series the scenario implies (values computed independently from the written points)."""

from __future__ import annotations

import time

import pytest
from dashboards_scenario import FAN0, FAN2, KNOWN, PUMP0, SKIPPED, Scenario, bucket_reduce

from dashboards import alerting
from dashboards import queries as q
from dashboards.builder import fleet_dashboard, machine_dashboard, pipeline_dashboard
from dashboards.evaluate import Labels, evaluate, instance
from dashboards.influxql import interpolate
from dashboards.machines import Machine, machines_from_influx
from dashboards.render import PanelRunner
from scoring.alerts import Observation
from scoring.state import StateTable
from scoring.status import NS, KnownMachines, status_points
from soundwatch.influx.client import InfluxClient
from soundwatch.influx.schema import alert_point
from soundwatch.influx.sink import BufferedSink

pytestmark = pytest.mark.integration


def _runner(settings, sc: Scenario, **kw) -> PanelRunner:
    return PanelRunner(InfluxClient(settings.influx), start_ms=sc.start_ms, end_ms=sc.end_ms, interval="1m", **kw)


def _by_name(series):
    return {s.name: s for s in series}


def _panel(board, title):
    return next(p for p in board["panels"] if p["title"] == title)


def test_fleet_overview_panels(isolated_settings, scenario):
    sc, g = scenario, isolated_settings.grafana
    board = fleet_dashboard(g, KNOWN)
    run = _runner(isolated_settings, sc)

    latest = {n: s.values[-1] for n, s in _by_name(run.panel(board, "Median score / threshold (latest)")).items()}
    expected = {m.key: sc.of(m)[-1].score_median / sc.of(m)[-1].threshold for m in (FAN0, FAN2, PUMP0)}
    assert latest.keys() == expected.keys()  # slider never reported: no bar
    for key, value in expected.items():
        assert latest[key] == pytest.approx(value)
    assert latest[FAN0.key] > 1.0 > latest[FAN2.key]

    # status grid: one target per known machine, its latest state over the last 5 min: the silent
    # pump is STALE (not normal with its old score), the never-reported slider has no data
    status = _by_name(run.panel(board, "Status"))
    assert {k: s.values[-1] for k, s in status.items()} == {
        FAN0.key: "alerting",
        FAN2.key: "normal",
        PUMP0.key: "stale",
    }
    (grid_query,) = [t["query"] for t in _panel(board, "Status")["targets"]]  # one query for the whole fleet
    (over,) = run.panel(board, "Machines over threshold")
    assert over.values == [1]
    (reporting,) = run.panel(board, "Machines reporting")
    assert reporting.values == [2]
    (stale,) = run.panel(board, "Machines stale")
    assert stale.values == [1]

    # the workers' status table: every known machine with its state and seconds since audio
    table = {}
    for s in run.run(_panel(board, "Machine status")["targets"][0]["query"], time_from="5m"):
        (row,) = s.rows()
        table[(s.tags["machine_type"], s.tags["machine_id"])] = row
    assert set(table) == {tuple(m) for m in (FAN0, FAN2, PUMP0)}
    for m in (FAN0, FAN2, PUMP0):
        want = sc.latest_status(m)
        got = table[tuple(m)]
        assert got["time"] == want["t"] * 1000
        assert (got["state"], got["alerting"], got["stale"]) == (
            "stale" if want["stale"] else "alerting" if want["alerting"] else "normal",
            int(want["alerting"]),
            int(want["stale"]),
        )
        assert got["seconds_since_audio"] == pytest.approx(want["seconds_since_audio"])
    assert table[tuple(PUMP0)]["seconds_since_audio"] > 1500  # silent for the last 30 min

    # heat map: per machine per minute, max(median)/max(threshold)
    heat = _by_name(run.panel(board, "Heat map: median score / threshold per machine"))
    assert set(heat) == {FAN0.key, FAN2.key, PUMP0.key}
    pts = sc.of(FAN0)
    med = bucket_reduce([(p.t, p.score_median) for p in pts], 60, "max")
    thr = bucket_reduce([(p.t, p.threshold) for p in pts], 60, "max")
    got = dict(zip(heat[FAN0.key].times_ms, heat[FAN0.key].values, strict=True))
    assert got.keys() == med.keys()
    for t in med:
        assert got[t] == pytest.approx(med[t] / thr[t])
    assert max(heat[PUMP0.key].times_ms) < sc.silent_from_s * 1000  # silent: the row stops
    dist = run.panel(board, "Fleet score distribution (median / threshold)")
    assert sum(len(s.values) for s in dist) == sum(len(s.values) for s in heat.values())

    # latest alert state change per machine, with its real time (since when)
    rows = {}
    for s in run.run(_panel(board, "Latest alert state change per machine")["targets"][0]["query"]):
        rows[(s.tags["machine_type"], s.tags["machine_id"])] = s.rows()
    assert rows[(FAN0.machine_type, FAN0.machine_id)] == [
        {
            "time": sc.alerts[2]["t"] * 1000,
            "state": "alerting",
            "score_median": pytest.approx(sc.alerts[2]["score_median"]),
            "threshold": pytest.approx(sc.alerts[2]["threshold"]),
        }
    ]
    assert rows[(FAN2.machine_type, FAN2.machine_id)][0]["state"] == "normal"


def test_machine_drilldown_panels_annotations_and_variables(isolated_settings, scenario):
    sc, g = scenario, isolated_settings.grafana
    board = machine_dashboard(g, KNOWN)
    run = _runner(isolated_settings, sc, variables={q.VAR_TYPE: "fan", q.VAR_MACHINE: "id_00"})
    pts = sc.of(FAN0)

    score = _by_name(run.panel(board, "Anomaly score"))
    assert list(score) == ["score", "score_median", "threshold"]
    for name, attr, how in (
        ("score", "score", "max"),
        ("score_median", "score_median", "mean"),
        ("threshold", "threshold", "mean"),
    ):
        want = bucket_reduce([(p.t, getattr(p, attr)) for p in pts], 60, how)
        got = dict(zip(score[name].times_ms, score[name].values, strict=True))
        assert got.keys() == want.keys(), name
        assert all(got[t] == pytest.approx(want[t]) for t in want), name
    assert {round(v, 6) for v in score["threshold"].values} >= {
        2.0,
        2.2,
    }  # the model change is visible on the threshold line

    (anomalous,) = run.panel(board, "Anomalous windows per interval")
    assert sum(anomalous.values) == sum(p.anomalous for p in pts)
    assert sum(anomalous.values) > 0
    (ratio,) = run.panel(board, "Median / threshold (latest)")
    assert ratio.values[-1] == pytest.approx(pts[-1].score_median / pts[-1].threshold)
    models = _by_name(run.panel(board, "Windows by model version"))
    assert {n: s.values[0] for n, s in models.items()} == {
        "v1": sum(p.model_version == "v1" for p in pts),
        "v2": sum(p.model_version == "v2" for p in pts),
    }

    (state,) = run.panel(board, "Status")
    assert state.values[-1] == "alerting"
    (since,) = run.panel(board, "Seconds since audio")
    assert since.values[-1] == 0.0
    pump = _runner(isolated_settings, sc, variables={q.VAR_TYPE: "pump", q.VAR_MACHINE: "id_00"})
    (state,) = pump.panel(board, "Status")
    assert state.values[-1] == "stale"  # not "normal": the pump's audio stopped 30 min ago
    (since,) = pump.panel(board, "Seconds since audio")
    assert since.values[-1] == pytest.approx(sc.latest_status(PUMP0)["seconds_since_audio"])

    alerts = run.annotations(board, "alert state changes")
    assert [(a["time"], a["state"]) for a in alerts] == [(sc.alerts[2]["t"] * 1000, "alerting")]
    changes = run.annotations(board, "model version changes")
    first_v2 = min(p.t for p in pts if p.model_version == "v2")
    assert {(c["model_version"], c["time"]) for c in changes} == {
        ("v1", pts[0].t * 1000),
        ("v2", first_v2 * 1000),
    }

    variables = {v["name"]: v for v in board["templating"]["list"]}
    client = InfluxClient(isolated_settings.influx)
    types = client.query(variables[q.VAR_TYPE]["query"])
    assert [row[1] for row in types[0].values] == ["fan", "pump"]
    ids = client.query(
        interpolate(variables[q.VAR_MACHINE]["query"], start_ms=0, end_ms=1, variables={q.VAR_TYPE: "fan"})
    )
    assert [row[1] for row in ids[0].values] == ["id_00", "id_02"]


def test_pipeline_health_panels(isolated_settings, scenario):
    sc = scenario
    board = pipeline_dashboard(isolated_settings.grafana)
    run = _runner(isolated_settings, sc)

    def truth(stage, worker, name):
        return [
            (r["t"], float(r["fields"][name]))
            for r in sc.pipeline
            if r["stage"] == stage and r["worker"] == worker and name in r["fields"]
        ]

    ingest = _by_name(run.panel(board, "Ingest rate"))
    assert list(ingest) == ["gw-1"] and set(ingest["gw-1"].values) == {4.0}
    through = _by_name(run.panel(board, "Worker throughput"))
    assert set(through) == {"features/f-1", "scoring/s-1", "scoring/s-2"}
    assert set(through["scoring/s-2"].values) == {1.5}
    lag = _by_name(run.panel(board, "Consumer lag"))
    want = bucket_reduce(truth("scoring", "s-1", "consumer_lag"), 60, "max")
    assert dict(zip(lag["scoring/s-1"].times_ms, lag["scoring/s-1"].values, strict=True)) == want
    errors = _by_name(run.panel(board, "Write errors"))
    counter = truth("scoring", "s-1", "write_errors")
    # per-interval increases add up to the counter's growth inside the range (first bucket has no predecessor)
    first_bucket_max = max(v for t, v in counter if t // 60 == counter[0][0] // 60)
    assert sum(errors["scoring/s-1"].values) == counter[-1][1] - first_bucket_max
    assert set(errors["scoring/s-2"].values) == {0.0}
    buffered = _by_name(run.panel(board, "Buffered points"))
    assert max(buffered["scoring/s-1"].values) == max(v for _, v in truth("scoring", "s-1", "buffer_points")) > 0
    (rate_now,) = run.panel(board, "Scoring throughput now")
    assert rate_now.values == [2.5]
    (lag_now,) = run.panel(board, "Max consumer lag now")
    assert lag_now.values == [float(max(r["fields"].get("consumer_lag", 0) for r in sc.pipeline[-4:]))]


def _rule(settings, uid):
    return next(r for g in alerting.rule_groups(settings.grafana) for r in g["rules"] if r["uid"] == uid)


def _machine(m: Machine) -> Labels:
    return instance(machine_type=m.machine_type, machine_id=m.machine_id)


def test_alert_rules_decide_per_machine(isolated_settings, scenario):
    """One rule, one instance per machine the workers report: firing, normal, silent — each by name."""
    client = InfluxClient(isolated_settings.influx)
    now_ms = int(time.time() * 1000)
    alert = evaluate(_rule(isolated_settings, alerting.ALERTING_UID), client, now_ms=now_ms)
    assert set(alert) == {_machine(m) for m in (FAN0, FAN2, PUMP0)}  # slider never reported: unknown
    assert {k: e.state for k, e in alert.items()} == {
        _machine(FAN0): "firing",
        _machine(FAN2): "normal",
        _machine(PUMP0): "normal",  # a silent machine is not an anomaly; the silent rule covers it
    }
    silent = evaluate(_rule(isolated_settings, alerting.SILENT_UID), client, now_ms=now_ms)
    assert {k: e.state for k, e in silent.items()} == {
        _machine(FAN0): "normal",
        _machine(FAN2): "normal",
        _machine(PUMP0): "firing",
    }
    assert silent[_machine(PUMP0)].values["B"] == pytest.approx(scenario.latest_status(PUMP0)["seconds_since_audio"])
    # no scoring worker writes any status (before the scenario): the silent rule's no-data state fires
    before = evaluate(_rule(isolated_settings, alerting.SILENT_UID), client, now_ms=(scenario.start_s - 600) * 1000)
    assert {k: e.state for k, e in before.items()} == {(): "firing"}


def test_rules_page_on_the_workers_alert_state(isolated_settings):
    """The real scoring state (hysteresis) and status code write the points; the rule pages on exactly them."""
    scoring = isolated_settings.scoring
    states = StateTable(None, alert_after=scoring.alert_after, resolve_after=scoring.resolve_after)
    known = KnownMachines(None, "test", "group")
    loud, quiet, silent = Machine("fan", "id_00"), Machine("fan", "id_01"), Machine("pump", "id_00")
    t0_ns = (int(time.time()) - 120) * NS
    window = [0]

    def windows(m: Machine, anomalous: list[bool], received_ns: int) -> list:
        events = []
        for bad in anomalous:
            window[0] += 1
            end_ns = t0_ns - 3600 * NS + window[0] * NS
            state = states.get(m.key, "v1", 1)
            obs = Observation(m.machine_type, m.machine_id, "v1", end_ns, 3.0 if bad else 1.0, 2.0)
            event = state.alert_step(obs)
            if event is not None:
                events.append(event)
            known.observe(m.key, 0, end_ns, received_ns)
        return events

    def write_status(at_ns: int, events: list) -> None:
        points = status_points(
            known.on_partitions({0}), now_ns=at_ns, stale_after_s=scoring.stale_after_s, alerting=states.alerting
        )
        points += [
            alert_point(
                machine_type=e.machine_type,
                machine_id=e.machine_id,
                state=e.current.value,
                score_median=e.score_median,
                threshold=e.threshold,
                time_ns=e.timestamp_ns,
            )
            for e in events
        ]
        sink = BufferedSink.from_settings(isolated_settings.influx)
        try:
            sink.add(points)
            assert sink.flush(block_s=30), sink.stats
        finally:
            sink.close()

    client = InfluxClient(isolated_settings.influx)
    rule, silent_rule = _rule(isolated_settings, alerting.ALERTING_UID), _rule(isolated_settings, alerting.SILENT_UID)

    # the silent machine's audio stopped 10 min ago; the loud one crosses its threshold alert_after times
    windows(silent, [False], received_ns=t0_ns - 600 * NS)
    windows(quiet, [False] * 3, received_ns=t0_ns)
    raised = windows(loud, [True] * (scoring.alert_after - 1), received_ns=t0_ns)
    write_status(t0_ns, raised)
    at = evaluate(rule, client, now_ms=t0_ns // 1_000_000 + 1000)
    assert raised == [] and at[_machine(loud)].state == "normal"  # one window short of the worker's alert

    t1_ns = t0_ns + 30 * NS
    raised = windows(loud, [True], received_ns=t1_ns)
    assert [e.current.value for e in raised] == ["alerting"]  # the worker raised its alert
    write_status(t1_ns, raised)
    at = evaluate(rule, client, now_ms=t1_ns // 1_000_000 + 1000)
    assert {k: e.state for k, e in at.items()} == {
        _machine(loud): "firing",
        _machine(quiet): "normal",
        _machine(silent): "normal",
    }
    quiet_now = evaluate(silent_rule, client, now_ms=t1_ns // 1_000_000 + 1000)
    assert {k for k, e in quiet_now.items() if e.state == "firing"} == {_machine(silent)}  # named

    t2_ns = t1_ns + 30 * NS
    resolved = windows(loud, [False] * scoring.resolve_after, received_ns=t2_ns)
    assert [e.current.value for e in resolved] == ["normal"]  # the worker resolved it
    write_status(t2_ns, resolved)
    at = evaluate(rule, client, now_ms=t2_ns // 1_000_000 + 1000)
    assert at[_machine(loud)].state == "normal" and at[_machine(loud)].values["B"] == 0


def test_audio_loss_rule_fires_when_a_feature_worker_counter_grows(isolated_settings, scenario):
    """Fleet-wide rule on the features stage's chunks_skipped / chunks_conflicting / topic_resyncs counters (5 min)."""
    sc, g = scenario, isolated_settings.grafana
    client = InfluxClient(isolated_settings.influx)
    (group,) = [gr for gr in alerting.rule_groups(g) if gr["title"] == alerting.PIPELINE_GROUP]
    (rule,) = group["rules"]
    assert rule["uid"] == alerting.AUDIO_LOSS_UID and rule["labels"]["app"] == "soundwatch"
    (now,) = evaluate(rule, client, now_ms=int(time.time() * 1000)).values()  # the counter grew 2 min ago
    assert now.state == "firing"
    assert now.values["SR"] == SKIPPED and now.values["CR"] == 0 and now.values["RR"] == 0
    (earlier,) = evaluate(rule, client, now_ms=(sc.now_s - 600) * 1000).values()  # counters flat in that window
    assert earlier.state == "normal" and earlier.values["SR"] == 0
    (before_data,) = evaluate(rule, client, now_ms=(sc.start_s - 3600) * 1000).values()  # no feature worker
    assert before_data.state == "normal" and before_data.values["SR"] is None


def test_every_query_runs_and_returns_data(isolated_settings, scenario):
    """No query in any dashboard or rule is left untested: each one runs and returns at least one series."""
    sc, g = scenario, isolated_settings.grafana
    client = InfluxClient(isolated_settings.influx)
    variables = {q.VAR_TYPE: "fan", q.VAR_MACHINE: "id_00"}
    queries: list[str] = []
    reporting = [FAN0, FAN2, PUMP0]
    for board in (fleet_dashboard(g, reporting), machine_dashboard(g, reporting), pipeline_dashboard(g)):
        queries += [t["query"] for p in board["panels"] for t in p.get("targets", [])]
        queries += [
            a["target"]["query"] for a in board["annotations"]["list"] if "target" in a and "query" in a["target"]
        ]
        queries += [v["query"] for v in board["templating"]["list"]]
    for group in alerting.rule_groups(g):  # the machine rules and the fleet-wide pipeline rule
        queries += [d["model"]["query"] for r in group["rules"] for d in r["data"] if d["datasourceUid"] != "__expr__"]
    # 9 fleet (one per panel, whatever the fleet) + 12 machine (incl. annotations, variables) + 7 pipeline
    # + 2 machine rules + 3 pipeline rule
    assert len(queries) == 33
    empty = []
    for text in queries:
        series = client.query(
            interpolate(text, start_ms=sc.start_ms, end_ms=int(time.time() * 1000), interval="1m", variables=variables)
        )
        if not series:
            empty.append(text)
    assert empty == []


def test_machines_from_influx(isolated_settings, scenario):
    assert machines_from_influx(isolated_settings.influx) == [FAN0, FAN2, PUMP0]
