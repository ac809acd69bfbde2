"""The one InfluxDB HTTP client: writes line protocol, runs InfluxQL, creates databases.

``settings.api`` picks the dialect:

* ``v1`` — InfluxDB 1.x: ``POST /write?db=&rp=&precision=ns``; with ``username`` set, an
  ``Authorization: Basic`` header (1.x has no tokens). A ``token`` without a username is sent as
  ``Authorization: Token`` (the 1.x-compatible endpoints of 2.x/3.x).
* ``v2`` — InfluxDB 2.x/3.x: ``POST /api/v2/write?org=&bucket=&precision=ns`` with
  ``Authorization: Token``.

Queries use ``/query`` (InfluxQL) in both cases: 1.x serves it natively, 2.x through its DBRP
mapping (database = bucket) and 3.x natively. Credentials are only ever sent in the header, so no
URL — in an exception, a log line or a proxy's access log — carries them, and every error
message names the server by its plain URL.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

from soundwatch.errors import BadInput, ConfigError, ServiceUnavailable, SoundwatchError
from soundwatch.redaction import redact, register_basic_auth, register_secret
from soundwatch.settings import InfluxSettings

log = logging.getLogger(__name__)

_CREDENTIALS_HINT = (
    "check the InfluxDB credentials: SOUNDWATCH_INFLUX__USERNAME/PASSWORD for 1.x, SOUNDWATCH_INFLUX__TOKEN for 2.x/3.x"
)


class InfluxWriteError(SoundwatchError):
    """A write failed. ``retryable`` is False only when the server rejected the data itself."""

    def __init__(
        self, message: str, hint: str | None = None, *, retryable: bool = True, status: int | None = None
    ) -> None:
        super().__init__(message, hint)
        self.retryable = retryable
        self.status = status


class InfluxQueryError(BadInput):
    """The server answered, but rejected the statement (``error`` is InfluxDB's own text)."""

    def __init__(self, message: str, hint: str | None = None, *, error: str = "") -> None:
        super().__init__(message, hint)
        self.error = error


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


def quote_ident(name: str) -> str:
    """An InfluxQL identifier: ``"name"``."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(value: str) -> str:
    """An InfluxQL string literal: ``'value'``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def auth_header(settings: InfluxSettings) -> dict[str, str]:
    """The ``Authorization`` header for ``settings`` (empty without credentials); see the module docstring."""
    token = settings.token.get_secret_value() if settings.token else ""
    if settings.api == "v1" and settings.username:
        password = settings.password.get_secret_value() if settings.password else ""
        register_basic_auth(settings.username, password)
        basic = base64.b64encode(f"{settings.username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    if token:
        register_secret(token)
        return {"Authorization": f"Token {token}"}
    return {}


class InfluxClient:
    """Writes and queries one database (1.x) or bucket (2.x/3.x). Not thread-safe: one per thread."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.shown_url = shown = redact(self.url)  # settings move URL credentials out; hand-made ones may not
        self.database = settings.database if settings.api == "v1" else settings.bucket
        self.timeout_s = settings.timeout_s
        self._session = requests.Session()
        self._session.headers.update(auth_header(settings))
        if settings.api == "v1":
            self._write_path = "/write"
            self._write_params = {"db": settings.database, "precision": "ns"}
            if settings.retention_policy:
                self._write_params["rp"] = settings.retention_policy
            self.where = f"InfluxDB at {shown} (database {settings.database})"
        else:
            self._write_path = "/api/v2/write"
            self._write_params = {"org": settings.org, "bucket": settings.bucket, "precision": "ns"}
            self.where = f"InfluxDB at {shown} (bucket {settings.bucket}, org {settings.org})"

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()

    # ------------------------------------------------------------------ write
    def write(self, lines: Sequence[str]) -> None:
        """Write line-protocol ``lines`` (nanosecond timestamps) or raise :class:`InfluxWriteError`."""
        body = "\n".join(lines).encode()
        try:
            resp = self._session.post(
                self.url + self._write_path, params=self._write_params, data=body, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise InfluxWriteError(
                f"cannot reach {self.where}: {_describe(exc)}",
                "start InfluxDB (soundwatch services up) or fix SOUNDWATCH_INFLUX__URL",
            ) from exc
        if resp.status_code not in (200, 204):
            raise _write_error(resp.status_code, resp.text, self.where)

    # ------------------------------------------------------------------ query
    def query(self, q: str, *, epoch: str = "ms") -> list[Series]:
        """Run one read statement (``SELECT``/``SHOW``); its series, empty when nothing matched.

        Times come back as integers in ``epoch`` units (``ns``, ``us``, ``ms``, ``s``).
        Raises :class:`ServiceUnavailable` (unreachable, 5xx), :class:`ConfigError` (credentials,
        wrong URL) or :class:`InfluxQueryError` (the statement was rejected).
        """
        return self._run("GET", q, {"db": self.database, "q": q, "epoch": epoch})

    def execute(self, q: str) -> list[Series]:
        """Run a statement that changes something (``CREATE``/``DROP``): InfluxDB 1.x wants those POSTed."""
        return self._run("POST", q, {"db": self.database, "q": q})

    def create_database(self) -> None:
        """``CREATE DATABASE`` (idempotent) — 1.x; on 2.x/3.x make the bucket and its DBRP mapping instead."""
        self.execute(f"CREATE DATABASE {quote_ident(self.database)}")

    def drop_database(self) -> None:
        self.execute(f"DROP DATABASE {quote_ident(self.database)}")

    def _run(self, method: str, q: str, params: dict[str, str]) -> list[Series]:
        try:
            resp = self._session.request(method, self.url + "/query", params=params, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise ServiceUnavailable(
                f"cannot reach InfluxDB at {self.shown_url}: {_describe(exc)}",
                "start it (`soundwatch services up`) or fix SOUNDWATCH_INFLUX__URL",
            ) from exc
        status = resp.status_code
        if status in (401, 403):
            raise ConfigError(
                f"InfluxDB at {self.shown_url} refused the credentials (HTTP {status}) for {q!r}", _CREDENTIALS_HINT
            )
        if status == 404:
            raise ConfigError(
                f"InfluxDB at {self.shown_url} has no /query endpoint (HTTP 404)",
                "fix SOUNDWATCH_INFLUX__URL (scheme, host and port of the InfluxDB HTTP API)",
            )
        if status >= 500:
            raise ServiceUnavailable(
                f"InfluxDB at {self.shown_url} failed on {q!r} (HTTP {status}): {_body(resp.text)}",
                "InfluxDB is overloaded or failing; try again",
            )
        try:
            payload = resp.json()
        except ValueError:
            payload = {}
        results = payload.get("results", [])
        error = payload.get("error") or next((r["error"] for r in results if "error" in r), "")
        if status != 200 or error:
            raise InfluxQueryError(
                f"InfluxDB rejected {q!r} (HTTP {status}): {error or _body(resp.text)}",
                "check the statement and the database name",
                error=error,
            )
        if not results:
            return []
        return [
            Series(s.get("name", ""), dict(s.get("tags") or {}), list(s["columns"]), list(s.get("values") or []))
            for s in results[0].get("series", [])
        ]


def _describe(exc: Exception) -> str:
    """An exception from ``requests`` in one line, with anything credential-like masked."""
    return redact(f"{type(exc).__name__}: {exc}")


def _body(text: str) -> str:
    return redact(text.strip()[:300])


def _write_error(status: int, body: str, where: str) -> InfluxWriteError:
    text = _body(body)
    if status in (400, 422):  # malformed points, field-type conflicts, outside retention: retrying cannot help
        return InfluxWriteError(
            f"{where} rejected the points (HTTP {status}): {text}",
            "this is a bug or a field-type conflict in the database; the points are dropped",
            retryable=False,
            status=status,
        )
    hints = {
        401: _CREDENTIALS_HINT,
        403: "the credentials lack write permission on this database/bucket",
        404: "the database/bucket does not exist: create it (CREATE DATABASE ...) or fix the name",
    }
    return InfluxWriteError(
        f"{where} answered HTTP {status}: {text}",
        hints.get(status, "InfluxDB is overloaded or failing; the write is retried"),
        retryable=True,
        status=status,
    )
