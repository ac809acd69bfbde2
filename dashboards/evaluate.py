"""Evaluate a soundwatch alert rule once, outside Grafana, against the real InfluxDB.

Grafana evaluates rules with server-side expressions; this module implements the subset the
soundwatch rules use (InfluxQL queries, ``reduce`` last with drop-non-numbers, ``math`` with one
comparison of two refs, ``threshold`` gt/lt) so tests and the demo can show what a rule *would*
decide for the data that is in InfluxDB now — without a Grafana server.

It evaluates one instant; Grafana's pending period (``for``) is not simulated.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Literal

from dashboards.influxql import InfluxQL, interpolate
from soundwatch.errors import BadInput

State = Literal["firing", "normal", "nodata"]
_COMPARE = re.compile(r"^\$(\w+)\s*(>=|<=|>|<|==|!=)\s*\$(\w+)$")
_OPS = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass(frozen=True)
class Evaluation:
    """What the rule decided and the numbers it decided on (refId -> value; None = no data)."""

    state: State
    values: dict[str, float | None]


def evaluate(rule: dict[str, Any], client: InfluxQL, *, now_ms: int) -> Evaluation:
    """Evaluate ``rule`` (alert provisioning API shape) at ``now_ms``."""
    values: dict[str, float | None] = {}
    for item in rule["data"]:
        ref, model = item["refId"], item["model"]
        if item["datasourceUid"] != "__expr__":
            rng = item["relativeTimeRange"]
            query = interpolate(
                model["query"], start_ms=now_ms - 1000 * rng["from"], end_ms=now_ms - 1000 * rng["to"]
            )
            series = client.query(query)
            if len(series) > 1:
                raise BadInput(
                    f"query {ref} of rule {rule['title']!r} returned {len(series)} series, expected 1"
                )
            values[ref] = _last_number(series[0].values) if series else None
            continue
        kind = model["type"]
        if kind == "reduce":
            values[ref] = values[model["expression"]]  # queries already reduced to their last number
        elif kind == "math":
            match = _COMPARE.match(model["expression"].strip())
            if not match:
                raise BadInput(f"math expression {model['expression']!r} is not '$X <op> $Y'")
            left, op, right = values[match.group(1)], match.group(2), values[match.group(3)]
            values[ref] = None if left is None or right is None else float(_OPS[op](left, right))
        elif kind == "threshold":
            ev = model["conditions"][0]["evaluator"]
            x = values[model["expression"]]
            if ev["type"] not in ("gt", "lt"):
                raise BadInput(f"threshold evaluator {ev['type']!r} is not supported here")
            cmp = operator.gt if ev["type"] == "gt" else operator.lt
            values[ref] = None if x is None else float(cmp(x, ev["params"][0]))
        else:
            raise BadInput(f"expression type {kind!r} is not supported by this evaluator")
    result = values[rule["condition"]]
    if result is None:
        no_data = rule["noDataState"]
        return Evaluation(
            "firing" if no_data == "Alerting" else "nodata" if no_data == "NoData" else "normal", values
        )
    return Evaluation("firing" if result != 0 else "normal", values)


def _last_number(rows: list[list[Any]]) -> float | None:
    """Grafana's ``reduce last`` with ``dropNN``: the last finite number of the series."""
    for row in reversed(rows):
        value = row[1]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None
