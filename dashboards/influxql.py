"""Run the dashboards' InfluxQL outside Grafana: macro interpolation and a small ``/query`` client.

Used by :mod:`dashboards.render` (PNG report) and the tests, so both execute the very strings
that go into the Grafana JSON. The interpolation follows Grafana's InfluxQL data source:
``$timeFilter`` becomes ``time >= <from>ms and time <= <to>ms``, ``$__interval`` a duration
literal, and ``$name`` / ``${name}`` a template variable's value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from soundwatch.errors import BadInput, ServiceUnavailable
from soundwatch.settings import InfluxSettings

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


@dataclass(frozen=True)
class Series:
    """One series of an InfluxQL answer: name, tags and rows as ``{column: value}``."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.values]

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [row[i] for row in self.values]


class InfluxQL:
    """Minimal InfluxQL-over-HTTP client (``GET /query``): works against 1.x, 2.x (v1 compat), 3.x.

    ``epoch="ms"`` makes times integers in milliseconds, which is what matplotlib and the tests want.
    """

    def __init__(self, settings: InfluxSettings) -> None:
        self._url = settings.url.rstrip("/") + "/query"
        self._db = settings.database if settings.api == "v1" else settings.bucket
        self._timeout = settings.timeout_s
        self._params: dict[str, str] = {}
        if settings.username:
            self._params["u"] = settings.username
            self._params["p"] = settings.password.get_secret_value() if settings.password else ""
        self._headers: dict[str, str] = {}
        if settings.api == "v2" and settings.token is not None:
            self._headers["Authorization"] = f"Token {settings.token.get_secret_value()}"

    def query(self, q: str) -> list[Series]:
        """Run one statement; return its series (empty list when nothing matched)."""
        params = {**self._params, "db": self._db, "q": q, "epoch": "ms"}
        try:
            resp = requests.get(self._url, params=params, headers=self._headers, timeout=self._timeout)
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                f"InfluxDB at {self._url} cannot be reached: {exc}",
                "start it (`soundwatch services up`) or fix SOUNDWATCH_INFLUX__URL",
            ) from exc
        if resp.status_code != 200:
            raise BadInput(
                f"InfluxDB answered HTTP {resp.status_code} to {q!r}: {resp.text[:300]}",
                "check the query, database name and credentials",
            )
        results = resp.json().get("results", [])
        if not results:
            return []
        first = results[0]
        if "error" in first:
            raise BadInput(f"InfluxDB rejected {q!r}: {first['error']}", "the query is wrong for this server")
        return [
            Series(
                s.get("name", ""), dict(s.get("tags") or {}), list(s["columns"]), list(s.get("values") or [])
            )
            for s in first.get("series", [])
        ]
