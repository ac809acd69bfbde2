"""Grafana's macro interpolation, so the dashboards' InfluxQL can run outside Grafana.

Used by :mod:`dashboards.render` (PNG report), :mod:`dashboards.evaluate` and the tests, which run
the very strings that go into the Grafana JSON through the core client
(:class:`soundwatch.influx.client.InfluxClient`). The interpolation follows Grafana's InfluxQL data
source: ``$timeFilter`` becomes ``time >= <from>ms and time <= <to>ms``, ``$__interval`` a
duration literal, and ``$name`` / ``${name}`` a template variable's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from soundwatch.errors import BadInput

_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def interpolate(
    query: str,
    *,
    start_ms: int,
    end_ms: int,
    interval: str = "1m",
    variables: Mapping[str, str] | None = None,
) -> str:
    """Replace Grafana's macros and template variables the way Grafana does before sending a query.

    Raises :class:`BadInput` for a variable that has no value, instead of sending ``$name`` to
    InfluxDB (which would answer with a confusing parse error).
    """
    values = {
        "timeFilter": f"time >= {int(start_ms)}ms and time <= {int(end_ms)}ms",
        "__interval": interval,
        "interval": interval,
        **(variables or {}),
    }

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise BadInput(f"query uses ${name} but no value was given for it", f"query: {query}")
        return values[name]

    return _VAR.sub(sub, query)
