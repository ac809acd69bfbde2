"""Every InfluxQL query the dashboards, annotations, variables and alert rules run — in one place.

Why one module: the same strings are put into the Grafana JSON, run by :mod:`dashboards.render`
for the PNG report, and run by the tests against a real InfluxDB, so what is tested and drawn is
exactly what Grafana will ask. InfluxQL (not Flux/SQL) because it works on InfluxDB 1.x, 2.x
(DBRP mapping) and 3.x.

Grafana macros used: ``$timeFilter`` and ``$__interval`` (replaced by Grafana, and by
:func:`dashboards.influxql.interpolate` outside Grafana), and the drill-down template variables
``$machine_type`` / ``$machine``.

Measurements (written by the workers; see README.md):

* ``asd_score``  tags machine_type, machine_id, model_version; fields score, score_median,
  threshold (float), anomalous (bool); time = window end.
* ``asd_alert``  tags machine_type, machine_id; fields state (string), score_median, threshold.
* ``pipeline``   tags stage, worker; float fields windows_per_s, consumer_lag, write_errors
  (cumulative count since the worker started), chunks_per_s, buffer_points.
"""

from __future__ import annotations

from dashboards.machines import Machine

SCORE = "asd_score"
ALERT = "asd_alert"
PIPELINE = "pipeline"

# drill-down template variables
VAR_TYPE = "machine_type"
VAR_MACHINE = "machine"


def _machine(machine_type: str, machine_id: str) -> str:
    # Machine names are validated against the id pattern (no quotes), so plain literals are safe.
    return f"\"machine_type\" = '{machine_type}' AND \"machine_id\" = '{machine_id}'"


_SELECTED = _machine(f"${VAR_TYPE}", f"${VAR_MACHINE}")

# ---------------------------------------------------------------- fleet overview
# Latest median score divided by the threshold: 1.0 is the alert line for every machine.
FLEET_RATIO_LATEST = (
    f'SELECT last("score_median") / last("threshold") AS "ratio" FROM "{SCORE}" '
    'WHERE $timeFilter GROUP BY "machine_type", "machine_id"'
)
FLEET_RATIO_OVER_TIME = (
    f'SELECT max("score_median") / max("threshold") AS "ratio" FROM "{SCORE}" '
    'WHERE $timeFilter GROUP BY time($__interval), "machine_type", "machine_id" fill(none)'
)
FLEET_OVER_THRESHOLD = (
    'SELECT count("ratio") AS "machines" FROM ('
    f'SELECT last("score_median") / last("threshold") AS "ratio" FROM "{SCORE}" '
    'WHERE $timeFilter GROUP BY "machine_type", "machine_id") WHERE "ratio" >= 1'
)
FLEET_REPORTING = (
    'SELECT count("last") AS "machines" FROM ('
    f'SELECT last("score_median") FROM "{SCORE}" WHERE $timeFilter GROUP BY "machine_type", "machine_id")'
)
# The latest alert state change of every machine, with its real time ("since when").
FLEET_LAST_ALERT_CHANGE = (
    f'SELECT "state", "score_median", "threshold" FROM "{ALERT}" WHERE $timeFilter '
    'GROUP BY "machine_type", "machine_id" ORDER BY time DESC LIMIT 1'
)


def machine_status(machine: Machine) -> str:
    """One status-grid tile: this machine's latest median / threshold (no row = no data)."""
    return (
        f'SELECT last("score_median") / last("threshold") AS "ratio" FROM "{SCORE}" '
        f"WHERE {_machine(*machine)} AND $timeFilter"
    )


# ---------------------------------------------------------------- machine drill-down
MACHINE_SCORE_RAW = (
    f'SELECT max("score") AS "score" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    "GROUP BY time($__interval) fill(none)"
)
MACHINE_SCORE_MEDIAN = (
    f'SELECT mean("score_median") AS "score_median" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    "GROUP BY time($__interval) fill(none)"
)
MACHINE_THRESHOLD = (
    f'SELECT mean("threshold") AS "threshold" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    "GROUP BY time($__interval) fill(none)"
)
MACHINE_ANOMALOUS_WINDOWS = (
    f'SELECT count("score") AS "anomalous_windows" FROM "{SCORE}" '
    f'WHERE {_SELECTED} AND "anomalous" = true AND $timeFilter GROUP BY time($__interval) fill(0)'
)
MACHINE_RATIO_LATEST = (
    f'SELECT last("score_median") / last("threshold") AS "ratio" FROM "{SCORE}" '
    f"WHERE {_SELECTED} AND $timeFilter"
)
MACHINE_WINDOWS_BY_MODEL = (
    f'SELECT count("score") AS "windows" FROM "{SCORE}" WHERE {_SELECTED} AND $timeFilter '
    'GROUP BY "model_version"'
)
# annotations
MACHINE_ALERT_EVENTS = (
    f'SELECT "state", "score_median", "threshold" FROM "{ALERT}" WHERE {_SELECTED} AND $timeFilter'
)
# First window of each model version in the range: marks where a new model took over. The tag is
# selected as a column too (allowed beside a selector), so Grafana can use it as annotation text.
MACHINE_MODEL_CHANGES = (
    f'SELECT first("score") AS "first_score", "model_version" FROM "{SCORE}" '
    f'WHERE {_SELECTED} AND $timeFilter GROUP BY "model_version"'
)
# template variables
VARIABLE_MACHINE_TYPES = f'SHOW TAG VALUES FROM "{SCORE}" WITH KEY = "machine_type"'
VARIABLE_MACHINES = (
    f'SHOW TAG VALUES FROM "{SCORE}" WITH KEY = "machine_id" WHERE "machine_type" = \'${VAR_TYPE}\''
)

# ---------------------------------------------------------------- pipeline health
PIPELINE_INGEST_RATE = (
    f'SELECT mean("chunks_per_s") AS "chunks_per_s" FROM "{PIPELINE}" WHERE "stage" = \'ingest\' '
    'AND $timeFilter GROUP BY time($__interval), "worker" fill(none)'
)
PIPELINE_THROUGHPUT = (
    f'SELECT mean("windows_per_s") AS "windows_per_s" FROM "{PIPELINE}" WHERE $timeFilter '
    'GROUP BY time($__interval), "stage", "worker" fill(none)'
)
PIPELINE_CONSUMER_LAG = (
    f'SELECT max("consumer_lag") AS "consumer_lag" FROM "{PIPELINE}" WHERE $timeFilter '
    'GROUP BY time($__interval), "stage", "worker" fill(none)'
)
# write_errors is a counter since worker start: the per-interval increase is what matters, and
# non_negative_difference ignores the drop when a worker restarts.
PIPELINE_WRITE_ERRORS = (
    f'SELECT non_negative_difference(max("write_errors")) AS "write_errors" FROM "{PIPELINE}" '
    'WHERE $timeFilter GROUP BY time($__interval), "stage", "worker" fill(none)'
)
PIPELINE_BUFFER = (
    f'SELECT max("buffer_points") AS "buffer_points" FROM "{PIPELINE}" WHERE $timeFilter '
    'GROUP BY time($__interval), "stage", "worker" fill(none)'
)
PIPELINE_SCORING_RATE_NOW = (
    'SELECT sum("w") AS "windows_per_s" FROM ('
    f'SELECT last("windows_per_s") AS "w" FROM "{PIPELINE}" WHERE "stage" = \'scoring\' AND $timeFilter '
    'GROUP BY "worker")'
)
PIPELINE_MAX_LAG_NOW = (
    'SELECT max("lag") AS "consumer_lag" FROM ('
    f'SELECT last("consumer_lag") AS "lag" FROM "{PIPELINE}" WHERE $timeFilter GROUP BY "stage", "worker")'
)


# ---------------------------------------------------------------- alert rules (Grafana-managed)
def alert_median(machine: Machine) -> str:
    """Latest median score of one machine inside the rule's relative time range."""
    where = _machine(*machine)
    return f'SELECT last("score_median") AS "score_median" FROM "{SCORE}" WHERE {where} AND $timeFilter'


def alert_threshold(machine: Machine) -> str:
    """Latest threshold of one machine (it changes with the model version)."""
    return (
        f'SELECT last("threshold") AS "threshold" FROM "{SCORE}" WHERE {_machine(*machine)} AND $timeFilter'
    )


def alert_window_count(machine: Machine) -> str:
    """Windows scored for one machine in the range; no row at all means the machine is silent."""
    return (
        f'SELECT count("score_median") AS "windows" FROM "{SCORE}" WHERE {_machine(*machine)} AND $timeFilter'
    )
