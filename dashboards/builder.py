"""The three soundwatch dashboards, built in code from the list of monitored machines.

* **Fleet overview** — "which machine, since when, how bad": every machine's latest median
  score relative to its threshold (1.0 = alert line), a status grid with one tile per known
  machine showing its state from ``machine_status`` (normal / ALERTING / STALE — a machine
  whose audio stopped is STALE, never "normal" with an old score; "no data" when no worker
  reports it), the workers' status table (state, seconds since audio), a per-machine heat map
  over time, the fleet's score distribution, and each machine's latest alert state change.
* **Machine drill-down** — template variables ``machine_type`` and ``machine``: raw and
  median-filtered score with the threshold line, the machine's status and seconds since its
  last audio, anomalous windows per interval, alert state changes (``asd_alert``) and model
  version changes as annotations.
* **Pipeline health** — ingest rate, consumer lag, worker throughput, write errors and writer
  buffers from the ``pipeline`` measurement.

All queries come from :mod:`dashboards.queries`; the layout helpers from :mod:`dashboards.panels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dashboards import panels as p
from dashboards import queries as q
from dashboards.machines import Machine, check_machines
from soundwatch.settings import GrafanaSettings

FLEET_UID = "soundwatch-fleet"
MACHINE_UID = "soundwatch-machine"
PIPELINE_UID = "soundwatch-pipeline"
TAGS = ["soundwatch"]


@dataclass(frozen=True)
class MachinePanelRef:
    """Where the alert rules point to: the drill-down's score panel (for ``__panelId__``)."""

    dashboard_uid: str
    panel_id: int


MACHINE_SCORE_PANEL = MachinePanelRef(MACHINE_UID, 1)


def machine_url(grafana_url: str, machine_type: str, machine_id: str) -> str:
    """Link to the drill-down with this machine selected (alert annotations pass Grafana label templates)."""
    base = grafana_url.rstrip("/")
    return f"{base}/d/{MACHINE_UID}/soundwatch-machine?var-{q.VAR_TYPE}={machine_type}&var-{q.VAR_MACHINE}={machine_id}"


def _links() -> list[p.Json]:
    return [
        {
            "title": "soundwatch",
            "type": "dashboards",
            "tags": TAGS,
            "asDropdown": True,
            "includeVars": False,
            "keepTime": True,
            "icon": "external link",
            "targetBlank": False,
            "tooltip": "",
            "url": "",
        }
    ]


def fleet_dashboard(grafana: GrafanaSettings, machines: Sequence[Machine]) -> p.Json:
    """Fleet overview for ``machines`` (the status grid has one tile per machine)."""
    ds = grafana.datasource_uid
    machines = check_machines(machines)
    lay = p.Layout()
    drill = (
        f"/d/{MACHINE_UID}/soundwatch-machine?var-{q.VAR_TYPE}=${{__field.labels.machine_type}}"
        f"&var-{q.VAR_MACHINE}=${{__field.labels.machine_id}}&${{__url_time_range}}"
    )

    over = p.stat(
        "Machines over threshold",
        ds,
        [p.target("A", ds, q.FLEET_OVER_THRESHOLD)],
        description="Machines whose latest median score is at or above their threshold.",
        no_value="0",
        thresholds={
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}],
        },
    )
    over["timeFrom"] = grafana.nodata_after
    reporting = p.stat(
        "Machines reporting",
        ds,
        [p.target("A", ds, q.FLEET_REPORTING)],
        description=f"Machines that wrote a score in the last {grafana.nodata_after} (of {len(machines)} known).",
        no_value="0",
        thresholds={
            "mode": "absolute",
            "steps": [{"color": "red", "value": None}, {"color": "green", "value": len(machines)}],
        },
    )
    reporting["timeFrom"] = grafana.nodata_after
    stale = p.stat(
        "Machines stale",
        ds,
        [p.target("A", ds, q.FLEET_STALE)],
        description="Known machines the scoring workers have received no audio from for scoring.stale_after_s.",
        no_value="0",
        thresholds={
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 1}],
        },
    )
    stale["timeFrom"] = grafana.nodata_after
    lay.place(over, 4, 4)
    lay.place(reporting, 4, 4)

    bars = p.bargauge(
        "Median score / threshold (latest)",
        ds,
        [p.target("A", ds, q.FLEET_RATIO_LATEST, alias="$tag_machine_type/$tag_machine_id")],
        description="Latest median-filtered score divided by the machine's threshold: "
        "1.0 is the alert line, whatever the machine's score scale.",
        thresholds=p.RATIO_THRESHOLDS,
        maximum=2.0,
    )
    bars["fieldConfig"]["defaults"]["links"] = [{"title": "open machine", "url": drill}]
    lay.place(stale, 4, 4)
    lay.place(bars, 12, 8)
    lay.newline()

    grid = p.stat(
        "Status",
        ds,
        [p.target("A", ds, q.FLEET_STATUS_GRID, alias="$tag_machine_type/$tag_machine_id")],
        description=f"One tile per machine the scoring workers report: its latest state "
        f"(last {grafana.nodata_after}), one query for the whole fleet. STALE = no audio for "
        "scoring.stale_after_s; a machine no worker reports has no tile.",
        mappings=p.STATE_MAPPINGS,
    )
    p.show_text_field(grid, "state")
    grid["timeFrom"] = grafana.nodata_after
    grid["maxDataPoints"] = 100
    lay.place(grid, 24, max(4, 2 + 2 * ((len(machines) + 7) // 8)))

    heat = p.status_history(
        "Heat map: median score / threshold per machine",
        ds,
        [p.target("A", ds, q.FLEET_RATIO_OVER_TIME, alias="$tag_machine_type/$tag_machine_id")],
        description="Rows are machines, columns time buckets, colour the worst "
        "median/threshold in the bucket: since when is a machine bad?",
        thresholds=p.RATIO_THRESHOLDS,
    )
    lay.place(heat, 24, max(6, 3 + len(machines)))
    dist = p.heatmap(
        "Fleet score distribution (median / threshold)",
        ds,
        [p.target("A", ds, q.FLEET_RATIO_OVER_TIME, alias="$tag_machine_type/$tag_machine_id")],
        description="How the whole fleet's median/threshold values are distributed over time.",
    )
    lay.place(dist, 12, 8)
    alerts = p.table(
        "Latest alert state change per machine",
        ds,
        [p.target("A", ds, q.FLEET_LAST_ALERT_CHANGE, table=True)],
        description="Time = when the machine entered its current alert state (since when).",
        overrides=[
            p.override(
                "state",
                custom__cellOptions={"type": "color-background"},
                mappings=[
                    {
                        "type": "value",
                        "options": {
                            "alerting": {"color": "red", "index": 0, "text": "ALERTING"},
                            "normal": {"color": "green", "index": 1, "text": "normal"},
                        },
                    }
                ],
            )
        ],
    )
    lay.place(alerts, 12, 8)
    status = p.table(
        "Machine status",
        ds,
        [p.target("A", ds, q.FLEET_MACHINE_STATUS, table=True)],
        description="Every machine the scoring workers know, from their latest status report: state "
        "(STALE = no audio for scoring.stale_after_s), seconds since its last audio, time of the report.",
        overrides=[
            p.override("state", custom__cellOptions={"type": "color-background"}, mappings=p.STATE_MAPPINGS),
            p.override("seconds_since_audio", unit="s", decimals=0),
        ],
    )
    status["timeFrom"] = grafana.nodata_after
    lay.place(status, 24, max(6, 3 + len(machines)))
    return p.dashboard(
        FLEET_UID,
        "soundwatch — fleet overview",
        panels=[over, reporting, stale, bars, grid, heat, dist, alerts, status],
        description="Which machine sounds wrong, since when, and how badly.",
        tags=TAGS,
        links=_links(),
    )


def _annotation(name: str, ds_uid: str, query: str, color: str, *, text_column: str, tags_column: str = "") -> p.Json:
    return {
        "name": name,
        "datasource": p.datasource(ds_uid),
        "enable": True,
        "hide": False,
        "iconColor": color,
        "target": {
            "refId": "Anno",
            "query": query,
            "rawQuery": True,
            "fromAnnotations": True,
            "textColumn": text_column,
            "tagsColumn": tags_column,
            "titleColumn": "",
        },
    }


def machine_dashboard(grafana: GrafanaSettings, machines: Sequence[Machine]) -> p.Json:
    """Drill-down for one machine, chosen with the ``machine_type`` and ``machine`` variables."""
    ds = grafana.datasource_uid
    machines = check_machines(machines)
    first = machines[0] if machines else None
    lay = p.Layout()
    score = p.timeseries(
        "Anomaly score",
        ds,
        [
            p.target("A", ds, q.MACHINE_SCORE_RAW, alias="score"),
            p.target("B", ds, q.MACHINE_SCORE_MEDIAN, alias="score_median"),
            p.target("C", ds, q.MACHINE_THRESHOLD, alias="threshold"),
        ],
        description="Raw window score (max per interval), the median-filtered score the alert uses, and the "
        "threshold calibrated on normal audio. Annotations: alert state changes and model versions.",
        overrides=[
            p.override("score", color={"mode": "fixed", "fixedColor": "#8AB8FF"}),
            p.override("score_median", color={"mode": "fixed", "fixedColor": "blue"}, custom__lineWidth=2),
            p.override(
                "threshold",
                color={"mode": "fixed", "fixedColor": "red"},
                custom__lineWidth=2,
                custom__lineStyle={"fill": "dash", "dash": [10, 10]},
            ),
        ],
    )
    lay.place(score, 18, 10)
    ratio = p.stat(
        "Median / threshold (latest)",
        ds,
        [p.target("A", ds, q.MACHINE_RATIO_LATEST, alias="ratio")],
        description="1.0 is the alert line.",
        thresholds=p.RATIO_THRESHOLDS,
        decimals=2,
    )
    lay.place(ratio, 6, 5)
    models = p.stat(
        "Windows by model version",
        ds,
        [p.target("A", ds, q.MACHINE_WINDOWS_BY_MODEL, alias="$tag_model_version")],
        description="Windows scored in the range per model version (more than one = the model "
        "changed; see the annotations).",
    )
    models["options"]["reduceOptions"] = {"calcs": ["sum"], "fields": "", "values": False}
    lay.place(models, 6, 5)
    anomalous = p.timeseries(
        "Anomalous windows per interval",
        ds,
        [p.target("A", ds, q.MACHINE_ANOMALOUS_WINDOWS, alias="anomalous windows")],
        description="Windows whose median score was over the threshold.",
        bars=True,
    )
    lay.place(anomalous, 24, 6)
    state = p.stat(
        "Status",
        ds,
        [p.target("A", ds, q.MACHINE_STATE_NOW, alias="state")],
        description="Latest state reported by the scoring workers: normal, ALERTING, or STALE when no audio "
        "arrived for scoring.stale_after_s (then the scores above are old).",
        mappings=p.STATE_MAPPINGS,
    )
    p.show_text_field(state, "state")
    state["timeFrom"] = grafana.nodata_after
    lay.place(state, 12, 4)
    since = p.stat(
        "Seconds since audio",
        ds,
        [p.target("A", ds, q.MACHINE_SECONDS_SINCE_AUDIO, alias="seconds_since_audio")],
        description="Wall-clock seconds since the newest window of this machine was received and scored.",
        unit="s",
        decimals=0,
    )
    since["timeFrom"] = grafana.nodata_after
    lay.place(since, 12, 4)
    variables = [
        p.query_variable(
            q.VAR_TYPE,
            "machine type",
            ds,
            q.VARIABLE_MACHINE_TYPES,
            current=first.machine_type if first else None,
        ),
        p.query_variable(
            q.VAR_MACHINE, "machine", ds, q.VARIABLE_MACHINES, current=first.machine_id if first else None
        ),
    ]
    annotations = [
        _annotation("alert state changes", ds, q.MACHINE_ALERT_EVENTS, "red", text_column="state"),
        _annotation(
            "model version changes",
            ds,
            q.MACHINE_MODEL_CHANGES,
            "purple",
            text_column="model_version",
            tags_column="model_version",
        ),
    ]
    return p.dashboard(
        MACHINE_UID,
        "soundwatch — machine",
        panels=[score, ratio, models, anomalous, state, since],
        description="One machine's score, threshold, alerts and model versions.",
        tags=TAGS,
        variables=variables,
        annotations=annotations,
        links=_links(),
    )


def pipeline_dashboard(grafana: GrafanaSettings) -> p.Json:
    """Health of the ingest → features → scoring pipeline from the ``pipeline`` measurement."""
    ds = grafana.datasource_uid
    lay = p.Layout()
    by_worker = "$tag_stage/$tag_worker"
    rate_now = p.stat(
        "Scoring throughput now",
        ds,
        [p.target("A", ds, q.PIPELINE_SCORING_RATE_NOW)],
        description="Windows per second scored, summed over scoring workers.",
        unit="none",
    )
    rate_now["timeFrom"] = "5m"
    lag_now = p.stat(
        "Max consumer lag now",
        ds,
        [p.target("A", ds, q.PIPELINE_MAX_LAG_NOW)],
        description="Largest consumer lag (records) over all workers.",
        thresholds={
            "mode": "absolute",
            "steps": [
                {"color": "green", "value": None},
                {"color": "#EAB839", "value": 1000},
                {"color": "red", "value": 10000},
            ],
        },
    )
    lag_now["timeFrom"] = "5m"
    lay.place(rate_now, 6, 4)
    lay.place(lag_now, 6, 4)
    lay.newline()
    panels = [
        rate_now,
        lag_now,
        lay.place(
            p.timeseries(
                "Ingest rate",
                ds,
                [p.target("A", ds, q.PIPELINE_INGEST_RATE, alias="$tag_worker")],
                description="Audio chunks per second sent by each gateway.",
            ),
            12,
            8,
        ),
        lay.place(
            p.timeseries(
                "Worker throughput",
                ds,
                [p.target("A", ds, q.PIPELINE_THROUGHPUT, alias=by_worker)],
                description="Feature windows per second produced (features) and scored (scoring).",
            ),
            12,
            8,
        ),
        lay.place(
            p.timeseries(
                "Consumer lag",
                ds,
                [p.target("A", ds, q.PIPELINE_CONSUMER_LAG, alias=by_worker)],
                description="Records behind the end of the topic, per worker (max in interval).",
            ),
            12,
            8,
        ),
        lay.place(
            p.timeseries(
                "Write errors",
                ds,
                [p.target("A", ds, q.PIPELINE_WRITE_ERRORS, alias=by_worker)],
                description="Failed InfluxDB/Kafka writes per interval.",
                bars=True,
            ),
            12,
            8,
        ),
        lay.place(
            p.timeseries(
                "Buffered points",
                ds,
                [p.target("A", ds, q.PIPELINE_BUFFER, alias=by_worker)],
                description="Points held in a writer's memory buffer (grows while InfluxDB is unreachable).",
            ),
            24,
            7,
        ),
    ]
    return p.dashboard(
        PIPELINE_UID,
        "soundwatch — pipeline health",
        panels=panels,
        description="Ingest rate, consumer lag, worker throughput and write errors.",
        tags=TAGS,
        links=_links(),
        refresh="10s",
        time_from="now-1h",
    )


def all_dashboards(grafana: GrafanaSettings, machines: Sequence[Machine]) -> dict[str, p.Json]:
    """``{uid: dashboard JSON}`` for every soundwatch dashboard."""
    boards = [
        fleet_dashboard(grafana, machines),
        machine_dashboard(grafana, machines),
        pipeline_dashboard(grafana),
    ]
    return {b["uid"]: b for b in boards}
