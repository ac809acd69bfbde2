"""What soundwatch writes to InfluxDB: measurement, tag and field names, points, line protocol.

Every writer builds its points here and every reader (dashboards, confirmations, the demo) takes
the names from here, so a rename is one edit.

Measurements:

* ``asd_score`` (scoring worker) — tags ``machine_type, machine_id, model_version``; fields
  ``score, score_median, threshold`` (float), ``anomalous`` (bool); time = window end (a replay
  overwrites).
* ``asd_alert`` (scoring worker) — tags ``machine_type, machine_id``; fields ``state``
  (``alerting``/``normal``), ``score_median, threshold``; time = end of the window that changed it.
* ``machine_status`` (scoring worker, every ``scoring.status_interval_s``, one point per known
  machine of the partitions the worker owns) — tags ``machine_type, machine_id``; fields
  ``seconds_since_audio`` (float: wall-clock seconds since the machine's newest window was
  received), ``state`` (``normal``/``alerting``/``stale``), ``alerting``, ``stale`` (int 0/1);
  wall-clock time. A machine whose audio stopped keeps getting points, so silence has a name.
* ``pipeline`` (every stage, about every 10 s) — tags ``stage, worker``; rates are floats,
  counts ints (a field must keep its type). Counters (``write_errors``, ``dead_letters``,
  ``chunks_skipped``, ``chunks_conflicting``, ...) count since the worker started.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

# ---------------------------------------------------------------- measurements
SCORE_MEASUREMENT = "asd_score"
ALERT_MEASUREMENT = "asd_alert"
MACHINE_STATUS_MEASUREMENT = "machine_status"
PIPELINE_MEASUREMENT = "pipeline"

# ---------------------------------------------------------------- tags
MACHINE_TYPE = "machine_type"
MACHINE_ID = "machine_id"
MODEL_VERSION = "model_version"
STAGE = "stage"
WORKER = "worker"

# ---------------------------------------------------------------- fields
# asd_score
SCORE = "score"
SCORE_MEDIAN = "score_median"
THRESHOLD = "threshold"
ANOMALOUS = "anomalous"
# asd_alert (also SCORE_MEDIAN, THRESHOLD) and machine_status
STATE = "state"
# machine_status
SECONDS_SINCE_AUDIO = "seconds_since_audio"
ALERTING = "alerting"
STALE = "stale"
# pipeline
WINDOWS_PER_S = "windows_per_s"
CHUNKS_PER_S = "chunks_per_s"
CONSUMER_LAG = "consumer_lag"
WRITE_ERRORS = "write_errors"
BUFFER_POINTS = "buffer_points"
CHUNKS_SKIPPED = "chunks_skipped"  # features stage: audio chunks lost (counter)
CHUNKS_CONFLICTING = "chunks_conflicting"  # features stage: chunks of a machine two gateways claim (counter)
TOPIC_RESYNCS = "topic_resyncs"  # features stage: input partitions found recreated/truncated (counter)

# stage tag values
STAGE_INGEST = "ingest"
STAGE_FEATURES = "features"
STAGE_SCORING = "scoring"


class MachineState(StrEnum):
    """The ``state`` field of ``machine_status``: stale wins, because a silent machine's score is old."""

    NORMAL = "normal"
    ALERTING = "alerting"
    STALE = "stale"

    @classmethod
    def of(cls, *, alerting: bool, stale: bool) -> MachineState:
        return cls.STALE if stale else cls.ALERTING if alerting else cls.NORMAL


FieldValue = float | int | bool | str


# ---------------------------------------------------------------- line protocol
def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", r"\,").replace("=", r"\=").replace(" ", r"\ ")


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", r"\,").replace(" ", r"\ ")


def _field_value(value: FieldValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"InfluxDB cannot store the non-finite float {value}")
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class Point:
    """One InfluxDB point. ``time_ns`` is part of the point's identity (see the package docstring)."""

    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, FieldValue]
    time_ns: int

    def to_line(self) -> str:
        """The point in line protocol (tags and fields sorted, empty tag values left out)."""
        if not self.fields:
            raise ValueError(f"point of {self.measurement} has no fields")
        tags = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in sorted(self.tags.items()) if v != "")
        fields = ",".join(f"{_escape_key(k)}={_field_value(v)}" for k, v in sorted(self.fields.items()))
        return f"{_escape_measurement(self.measurement)}{tags} {fields} {int(self.time_ns)}"


# ---------------------------------------------------------------- builders
def score_point(
    *,
    machine_type: str,
    machine_id: str,
    model_version: str,
    end_ns: int,
    score: float,
    score_median: float,
    threshold: float,
    anomalous: bool,
) -> Point:
    """The ``asd_score`` point of one window (timestamp = window end, so replays overwrite)."""
    return Point(
        SCORE_MEASUREMENT,
        {MACHINE_TYPE: machine_type, MACHINE_ID: machine_id, MODEL_VERSION: model_version},
        {
            SCORE: float(score),
            SCORE_MEDIAN: float(score_median),
            THRESHOLD: float(threshold),
            ANOMALOUS: bool(anomalous),
        },
        end_ns,
    )


def alert_point(
    *, machine_type: str, machine_id: str, state: str, score_median: float, threshold: float, time_ns: int
) -> Point:
    """The ``asd_alert`` point of an alert state change (Grafana annotations read it)."""
    return Point(
        ALERT_MEASUREMENT,
        {MACHINE_TYPE: machine_type, MACHINE_ID: machine_id},
        {STATE: state, SCORE_MEDIAN: float(score_median), THRESHOLD: float(threshold)},
        time_ns,
    )


def machine_status_point(
    *, machine_type: str, machine_id: str, seconds_since_audio: float, alerting: bool, stale: bool, time_ns: int
) -> Point:
    """The ``machine_status`` point of one known machine at ``time_ns`` (wall clock)."""
    state = MachineState.of(alerting=alerting, stale=stale)
    return Point(
        MACHINE_STATUS_MEASUREMENT,
        {MACHINE_TYPE: machine_type, MACHINE_ID: machine_id},
        {
            SECONDS_SINCE_AUDIO: float(seconds_since_audio),
            STATE: state.value,
            ALERTING: int(alerting),
            STALE: int(stale),
        },
        time_ns,
    )


def pipeline_point(stage: str, worker: str, fields: Mapping[str, FieldValue], time_ns: int | None = None) -> Point:
    """A ``pipeline`` health point of one worker (wall-clock time unless ``time_ns`` is given)."""
    return Point(
        PIPELINE_MEASUREMENT,
        {STAGE: stage, WORKER: worker},
        dict(fields),
        time.time_ns() if time_ns is None else time_ns,
    )
