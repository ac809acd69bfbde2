"""Every InfluxQL query the dashboards, annotations, variables and alert rules run — in one place.

Why one module: the same strings are put into the Grafana JSON, run by :mod:`dashboards.render`
for the PNG report, and run by the tests against a real InfluxDB, so what is tested and drawn is
exactly what Grafana will ask. InfluxQL (not Flux/SQL) because it works on InfluxDB 1.x, 2.x
(DBRP mapping) and 3.x. Measurement, tag and field names come from the core schema
(:mod:`soundwatch.influx.schema`, which documents the measurements), never spelled out here.

Grafana macros used: ``$timeFilter`` and ``$__interval`` (replaced by Grafana, and by
:func:`dashboards.influxql.interpolate` outside Grafana), and the drill-down template variables
``$machine_type`` / ``$machine``.
"""

from __future__ import annotations

from soundwatch.influx import schema as ix

SCORE = ix.SCORE_MEASUREMENT
ALERT = ix.ALERT_MEASUREMENT
STATUS = ix.MACHINE_STATUS_MEASUREMENT
PIPELINE = ix.PIPELINE_MEASUREMENT

# drill-down template variables
VAR_TYPE = "machine_type"
VAR_MACHINE = "machine"


def _q(name: str) -> str:
    """A quoted identifier: ``"name"``."""
    return f'"{name}"'


# quoted names used below (identifiers in InfluxQL are double-quoted)
_TYPE, _ID, _MODEL = _q(ix.MACHINE_TYPE), _q(ix.MACHINE_ID), _q(ix.MODEL_VERSION)
_STAGE, _WORKER = _q(ix.STAGE), _q(ix.WORKER)
_SCORE, _MEDIAN, _THRESHOLD, _ANOMALOUS = _q(ix.SCORE), _q(ix.SCORE_MEDIAN), _q(ix.THRESHOLD), _q(ix.ANOMALOUS)
_STATE, _SINCE, _ALERTING, _STALE = _q(ix.STATE), _q(ix.SECONDS_SINCE_AUDIO), _q(ix.ALERTING), _q(ix.STALE)
_BY_MACHINE = f"{_TYPE}, {_ID}"


_SELECTED = f"{_TYPE} = '${VAR_TYPE}' AND {_ID} = '${VAR_MACHINE}'"

# ---------------------------------------------------------------- fleet overview
# Latest median score divided by the threshold: 1.0 is the alert line for every machine.
FLEET_RATIO_LATEST = (
    f'SELECT last({_MEDIAN}) / last({_THRESHOLD}) AS "ratio" FROM "{SCORE}" WHERE $timeFilter GROUP BY {_BY_MACHINE}'
)
FLEET_RATIO_OVER_TIME = (
    f'SELECT max({_MEDIAN}) / max({_THRESHOLD}) AS "ratio" FROM "{SCORE}" '
    f"WHERE $timeFilter GROUP BY time($__interval), {_BY_MACHINE} fill(none)"
)
FLEET_OVER_THRESHOLD = (
    'SELECT count("ratio") AS "machines" FROM ('
    f'SELECT last({_MEDIAN}) / last({_THRESHOLD}) AS "ratio" FROM "{SCORE}" '
    f'WHERE $timeFilter GROUP BY {_BY_MACHINE}) WHERE "ratio" >= 1'
)
FLEET_REPORTING = (
    'SELECT count("last") AS "machines" FROM ('
    f'SELECT last({_MEDIAN}) FROM "{SCORE}" WHERE $timeFilter GROUP BY {_BY_MACHINE})'
)
# Machines the scoring workers know but hear nothing from (their latest status point says stale).
FLEET_STALE = (
    'SELECT sum("stale") AS "machines" FROM ('
    f'SELECT last({_STALE}) AS "stale" FROM "{STATUS}" WHERE $timeFilter GROUP BY {_BY_MACHINE})'
)
# The latest status of every machine the scoring workers know (silent ones included: they keep
# getting status points), with the time it was reported.
FLEET_MACHINE_STATUS = (
    f'SELECT {_STATE}, {_SINCE}, {_ALERTING}, {_STALE} FROM "{STATUS}" WHERE $timeFilter '
    f"GROUP BY {_BY_MACHINE} ORDER BY time DESC LIMIT 1"
)
# The latest alert state change of every machine, with its real time ("since when").
FLEET_LAST_ALERT_CHANGE = (
    f'SELECT {_STATE}, {_MEDIAN}, {_THRESHOLD} FROM "{ALERT}" WHERE $timeFilter '
    f"GROUP BY {_BY_MACHINE} ORDER BY time DESC LIMIT 1"
)


# The status grid: one tile per machine a worker reports, in ONE query for the whole fleet.
FLEET_STATUS_GRID = f'SELECT last({_STATE}) AS "state" FROM "{STATUS}" WHERE $timeFilter GROUP BY {_BY_MACHINE}'


# ---------------------------------------------------------------- machine drill-down
MACHINE_SCORE_RAW = (
    f'SELECT max({_SCORE}) AS "score" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    "GROUP BY time($__interval) fill(none)"
)
MACHINE_SCORE_MEDIAN = (
    f'SELECT mean({_MEDIAN}) AS "score_median" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    "GROUP BY time($__interval) fill(none)"
)
MACHINE_THRESHOLD = (
    f'SELECT mean({_THRESHOLD}) AS "threshold" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    "GROUP BY time($__interval) fill(none)"
)
MACHINE_ANOMALOUS_WINDOWS = (
    f'SELECT count({_SCORE}) AS "anomalous_windows" FROM "{SCORE}" '
    f"WHERE {_SELECTED} AND {_ANOMALOUS} = true AND $timeFilter GROUP BY time($__interval) fill(0)"
)
MACHINE_RATIO_LATEST = (
    f'SELECT last({_MEDIAN}) / last({_THRESHOLD}) AS "ratio" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter'
)
MACHINE_STATE_NOW = f'SELECT last({_STATE}) AS "state" FROM "{STATUS}" WHERE {_SELECTED} AND $timeFilter'
MACHINE_SECONDS_SINCE_AUDIO = (
    f'SELECT last({_SINCE}) AS "seconds_since_audio" FROM "{STATUS}" WHERE {_SELECTED} AND $timeFilter'
)
MACHINE_WINDOWS_BY_MODEL = (
    f'SELECT count({_SCORE}) AS "windows" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter GROUP BY {_MODEL}'
)
# annotations
MACHINE_ALERT_EVENTS = f'SELECT {_STATE}, {_MEDIAN}, {_THRESHOLD} FROM "{ALERT}" WHERE {_SELECTED} AND $timeFilter'
# First window of each model version in the range: marks where a new model took over. The tag is
# selected as a column too (allowed beside a selector), so Grafana can use it as annotation text.
MACHINE_MODEL_CHANGES = (
    f'SELECT first({_SCORE}) AS "first_score", {_MODEL} FROM "{SCORE}" '
    f"WHERE {_SELECTED} AND $timeFilter GROUP BY {_MODEL}"
)
# template variables
VARIABLE_MACHINE_TYPES = f'SHOW TAG VALUES FROM "{SCORE}" WITH KEY = {_TYPE}'
VARIABLE_MACHINES = f"SHOW TAG VALUES FROM \"{SCORE}\" WITH KEY = {_ID} WHERE {_TYPE} = '${VAR_TYPE}'"

# ---------------------------------------------------------------- pipeline health
_BY_WORKER = f"time($__interval), {_STAGE}, {_WORKER} fill(none)"
PIPELINE_INGEST_RATE = (
    f'SELECT mean({_q(ix.CHUNKS_PER_S)}) AS "chunks_per_s" FROM "{PIPELINE}" '
    f"WHERE {_STAGE} = '{ix.STAGE_INGEST}' AND $timeFilter GROUP BY time($__interval), {_WORKER} fill(none)"
)
PIPELINE_THROUGHPUT = (
    f'SELECT mean({_q(ix.WINDOWS_PER_S)}) AS "windows_per_s" FROM "{PIPELINE}" WHERE $timeFilter GROUP BY {_BY_WORKER}'
)
PIPELINE_CONSUMER_LAG = (
    f'SELECT max({_q(ix.CONSUMER_LAG)}) AS "consumer_lag" FROM "{PIPELINE}" WHERE $timeFilter GROUP BY {_BY_WORKER}'
)
# write_errors is a counter since worker start: the per-interval increase is what matters, and
# non_negative_difference ignores the drop when a worker restarts.
PIPELINE_WRITE_ERRORS = (
    f'SELECT non_negative_difference(max({_q(ix.WRITE_ERRORS)})) AS "write_errors" FROM "{PIPELINE}" '
    f"WHERE $timeFilter GROUP BY {_BY_WORKER}"
)
PIPELINE_BUFFER = (
    f'SELECT max({_q(ix.BUFFER_POINTS)}) AS "buffer_points" FROM "{PIPELINE}" WHERE $timeFilter GROUP BY {_BY_WORKER}'
)
PIPELINE_SCORING_RATE_NOW = (
    'SELECT sum("w") AS "windows_per_s" FROM ('
    f'SELECT last({_q(ix.WINDOWS_PER_S)}) AS "w" FROM "{PIPELINE}" '
    f"WHERE {_STAGE} = '{ix.STAGE_SCORING}' AND $timeFilter GROUP BY {_WORKER})"
)
PIPELINE_MAX_LAG_NOW = (
    'SELECT max("lag") AS "consumer_lag" FROM ('
    f'SELECT last({_q(ix.CONSUMER_LAG)}) AS "lag" FROM "{PIPELINE}" WHERE $timeFilter GROUP BY {_STAGE}, {_WORKER})'
)


def features_counter_increase(counter: str) -> str:
    """Fleet-wide increase of a feature-worker counter (``chunks_skipped``, ...) inside the time range.

    The counters count since each worker started: per worker, the sum of the non-negative steps
    between its points is what happened inside the range (a restarted worker is a new series).
    """
    return (
        'SELECT sum("step") AS "increase" FROM ('
        f'SELECT non_negative_difference({_q(counter)}) AS "step" FROM "{PIPELINE}" '
        f"WHERE {_STAGE} = '{ix.STAGE_FEATURES}' AND $timeFilter GROUP BY {_WORKER})"
    )


# ---------------------------------------------------------------- alert rules (Grafana-managed)
# One series per machine the scoring workers report (GROUP BY the machine tags): a rule over them is
# multi-dimensional, one alert instance per machine, whatever the number of machines.
ALERT_MACHINE_ALERTING = (
    f'SELECT last({_ALERTING}) AS "alerting" FROM "{STATUS}" WHERE $timeFilter GROUP BY {_BY_MACHINE}'
)
"""The workers' own alert state (1 = ALERTING, from ``scoring.alerts``), re-reported every status interval."""
ALERT_SECONDS_SINCE_AUDIO = (
    f'SELECT last({_SINCE}) AS "seconds_since_audio" FROM "{STATUS}" WHERE $timeFilter GROUP BY {_BY_MACHINE}'
)
"""Seconds since each known machine's newest audio: the workers keep reporting a silent machine by name."""
