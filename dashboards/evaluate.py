"""Evaluate a soundwatch alert rule once, outside Grafana, against the real InfluxDB.

Grafana evaluates rules with server-side expressions; this module implements the subset the
soundwatch rules use (InfluxQL queries, ``reduce`` last with drop-non-numbers, ``math`` with
``+ - * /``, parentheses and one comparison over refs and numbers, ``threshold`` gt/lt) so tests
and the demo can show what a rule *would* decide for the data that is in InfluxDB now — without a
Grafana server.

Rules are multi-dimensional as in Grafana: every series a query returns (its tags are the labels,
e.g. ``machine_type``/``machine_id`` of a ``GROUP BY``) is one alert instance; expressions work per
label set, and a single untagged series applies to every instance.

It evaluates one instant; Grafana's pending period (``for``) is not simulated.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from dashboards.influxql import interpolate
from soundwatch.errors import BadInput
from soundwatch.influx.client import InfluxClient

State = Literal["firing", "normal", "nodata"]
_REF = re.compile(r"\$(\w+)")
_ARITHMETIC: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARISONS: dict[type, Callable[[float, float], bool]] = {
    ast.Gt: operator.gt,
    ast.Lt: operator.lt,
    ast.GtE: operator.ge,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


Labels = tuple[tuple[str, str], ...]
"""An alert instance's labels from its series' tags, sorted; ``()`` for an untagged series."""


@dataclass(frozen=True)
class Evaluation:
    """What the rule decided for one instance and the numbers it decided on (refId -> value; None = no data)."""

    state: State
    values: dict[str, float | None]


def instance(**labels: str) -> Labels:
    """The key of the instance with these labels: ``instance(machine_type="fan", machine_id="id_00")``."""
    return tuple(sorted(labels.items()))


def evaluate(rule: dict[str, Any], client: InfluxClient, *, now_ms: int) -> dict[Labels, Evaluation]:
    """Evaluate ``rule`` (alert provisioning API shape) at ``now_ms``: one :class:`Evaluation` per instance.

    No series at all gives the single instance ``()`` in the rule's no-data state, as in Grafana.
    """
    refs: dict[str, dict[Labels, float | None]] = {}
    for item in rule["data"]:
        ref, model = item["refId"], item["model"]
        if item["datasourceUid"] != "__expr__":
            rng = item["relativeTimeRange"]
            query = interpolate(model["query"], start_ms=now_ms - 1000 * rng["from"], end_ms=now_ms - 1000 * rng["to"])
            refs[ref] = {tuple(sorted(s.tags.items())): _last_number(s.values) for s in client.query(query)}
            continue
        kind = model["type"]
        if kind == "reduce":
            refs[ref] = dict(refs[model["expression"]])  # queries already reduced to their last number
        elif kind == "math":
            used = [r for r in _REF.findall(model["expression"]) if r in refs]
            refs[ref] = {
                labels: math_expression(model["expression"], {r: _at(refs[r], labels) for r in used})
                for labels in _label_sets([refs[r] for r in used])
            }
        elif kind == "threshold":
            ev = model["conditions"][0]["evaluator"]
            if ev["type"] not in ("gt", "lt"):
                raise BadInput(f"threshold evaluator {ev['type']!r} is not supported here")
            cmp = operator.gt if ev["type"] == "gt" else operator.lt
            refs[ref] = {
                labels: None if x is None else float(cmp(x, ev["params"][0]))
                for labels, x in refs[model["expression"]].items()
            }
        else:
            raise BadInput(f"expression type {kind!r} is not supported by this evaluator")
    results = refs[rule["condition"]] or {(): None}
    out = {}
    for labels, result in results.items():
        values = {r: _at(v, labels) for r, v in refs.items()}
        if result is None:
            no_data = rule["noDataState"]
            state: State = "firing" if no_data == "Alerting" else "nodata" if no_data == "NoData" else "normal"
        else:
            state = "firing" if result != 0 else "normal"
        out[labels] = Evaluation(state, values)
    return out


def _at(values: dict[Labels, float | None], labels: Labels) -> float | None:
    """A ref's value for an instance: its own, or the one value of an untagged single series."""
    if labels in values:
        return values[labels]
    if set(values) == {()}:
        return values[()]
    return None


def _label_sets(refs: list[dict[Labels, float | None]]) -> list[Labels]:
    tagged = sorted({labels for values in refs for labels in values if labels})
    return tagged or [()]


def math_expression(expression: str, values: dict[str, float | None]) -> float | None:
    """Grafana's ``math`` on reduced (single-number) refs: ``$A + $B > 0``; None when a ref has no data.

    Only arithmetic, parentheses, numbers, refs and one comparison are understood (a comparison
    gives 1.0 or 0.0, as in Grafana); anything else is a :class:`BadInput`.
    """
    try:
        tree = ast.parse(_REF.sub(r"\1", expression.strip()), mode="eval")
    except SyntaxError as exc:
        raise BadInput(f"math expression {expression!r} cannot be parsed: {exc.msg}") from exc

    def ev(node: ast.AST) -> float | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise BadInput(f"math expression {expression!r} uses ${node.id}, which is not an earlier refId")
            return values[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            x = ev(node.operand)
            return None if x is None else -x
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            left, right = ev(node.left), ev(node.right)
            return None if left is None or right is None else _ARITHMETIC[type(node.op)](left, right)
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARISONS:
            left, right = ev(node.left), ev(node.comparators[0])
            return None if left is None or right is None else float(_COMPARISONS[type(node.ops[0])](left, right))
        raise BadInput(f"math expression {expression!r}: {ast.dump(node)} is not supported by this evaluator")

    return ev(tree.body)


def _last_number(rows: list[list[Any]]) -> float | None:
    """Grafana's ``reduce last`` with ``dropNN``: the last finite number of the series."""
    for row in reversed(rows):
        value = row[1]
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None
