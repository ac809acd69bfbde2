"""Confirmed-normal intervals: what people vouch for, stored in Redis with an audit trail.

Retraining learns only from audio a person confirmed as normal, so a confirmation is an
accountable act: each one records who, when and why, can be revoked (never deleted), and every
confirm/revoke is appended to an audit stream. Confirming a range that overlaps an alert is the
dangerous case (it teaches the model that the fault sound is normal): it needs ``force`` and the
overlapping alert spans are stored with the interval.

Redis layout (``P`` = ``settings.redis.key_prefix``):

* ``P:normal:seq`` — counter giving interval ids (small integers people can type);
* ``P:normal:interval:<id>`` — hash with the interval's fields (see :class:`ConfirmedInterval`);
* ``P:normal:ids`` — sorted set of all ids (score = id);
* ``P:normal:machine:<type>/<id>`` — sorted set of a machine's ids (score = start time, ns);
* ``P:normal:audit`` — stream of ``confirm`` / ``revoke`` entries (append-only).

Alert spans come from two places, unioned, because either may be missing: the ``asd_alert``
measurement the scoring worker writes to InfluxDB, and the ``alerts`` Kafka topic
(:class:`~soundwatch.contracts.AlertEvent` state changes). An alert raised at ``t`` is counted
from ``t - alert_pad_s``: the median filter and ``alert_after`` delay the alert behind the sound.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from soundwatch.contracts import AlertEvent, AlertState, ContractError
from soundwatch.errors import BadInput, ServiceUnavailable
from soundwatch.influx import schema as ix
from soundwatch.influx.client import InfluxClient, InfluxQueryError, quote_ident, quote_literal
from soundwatch.kafka import make_consumer
from soundwatch.settings import RedisSettings, Settings

log = logging.getLogger(__name__)

NS = 1_000_000_000
OPEN_END = 2**62  # an alert not resolved yet


# ---------------------------------------------------------------------------- time parsing
_RELATIVE = re.compile(r"^\s*([+-])\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*$")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now_ns: int | None = None) -> int:
    """ISO-8601 (``2026-11-23T14:00``, ``...Z``, ``...+01:00``; naive = UTC), ``now``, relative
    (``-2h``, ``-30m``, ``+10s``, ``-1d``) or epoch seconds -> epoch nanoseconds."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    t = text.strip()
    if t.lower() == "now":
        return now_ns
    m = _RELATIVE.match(t)
    if m:
        delta = int(float(m.group(2)) * _UNITS[m.group(3)] * NS)
        return now_ns + delta if m.group(1) == "+" else now_ns - delta
    if re.fullmatch(r"\d{9,11}(\.\d+)?", t):
        return int(float(t) * NS)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInput(
            f"cannot read the time {text!r}",
            "use ISO-8601 (2026-11-23T14:00:00Z), 'now', a relative form (-2h, -30m, -1d) or epoch seconds",
        ) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * NS)


def format_time(ns: int) -> str:
    if ns >= OPEN_END:
        return "(open)"
    return datetime.fromtimestamp(ns / NS, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


# ---------------------------------------------------------------------------- alert spans
@dataclass(frozen=True)
class AlertSpan:
    machine_type: str
    machine_id: str
    start_ns: int
    end_ns: int  # OPEN_END while still alerting

    def overlaps(self, t_from: int, t_to: int) -> bool:
        return self.start_ns < t_to and t_from < self.end_ns


def spans_from_transitions(
    machine_type: str, machine_id: str, transitions: Iterable[tuple[int, str]], pad_ns: int = 0
) -> list[AlertSpan]:
    """``(time_ns, new_state)`` changes -> alerting spans (a trailing raise stays open)."""
    spans: list[AlertSpan] = []
    start: int | None = None
    for ts, state in sorted(set(transitions)):
        if state == AlertState.ALERTING.value and start is None:
            start = ts
        elif state == AlertState.NORMAL.value and start is not None:
            spans.append(AlertSpan(machine_type, machine_id, start - pad_ns, ts))
            start = None
    if start is not None:
        spans.append(AlertSpan(machine_type, machine_id, start - pad_ns, OPEN_END))
    return spans


class AlertHistory:
    """Alert state changes of a machine, from InfluxDB ``asd_alert`` and the ``alerts`` topic."""

    def __init__(
        self, settings: Settings, alert_pad_s: float = 30.0, use_influx: bool = True, use_kafka: bool = True
    ) -> None:
        self.settings = settings
        self.pad_ns = int(alert_pad_s * NS)
        self.use_influx = use_influx
        self.use_kafka = use_kafka

    def spans(self, machine_type: str, machine_id: str) -> list[AlertSpan]:
        """All alerting spans of the machine. Raises ServiceUnavailable only if no source answers."""
        transitions: set[tuple[int, str]] = set()
        failures: list[str] = []
        answered = 0
        for name, enabled, fetch in (
            ("InfluxDB", self.use_influx, self._influx),
            ("Kafka", self.use_kafka, self._kafka),
        ):
            if not enabled:
                continue
            try:
                transitions |= fetch(machine_type, machine_id)
                answered += 1
            except ServiceUnavailable as exc:
                failures.append(f"{name}: {exc.message}")
        if answered == 0:
            raise ServiceUnavailable(
                "cannot check the machine's alert history: " + "; ".join(failures),
                "start the services, or pass --force to confirm without the check (recorded as forced)",
            )
        return spans_from_transitions(machine_type, machine_id, transitions, self.pad_ns)

    def _influx(self, machine_type: str, machine_id: str) -> set[tuple[int, str]]:
        q = (
            f"SELECT {quote_ident(ix.STATE)} FROM {quote_ident(ix.ALERT_MEASUREMENT)} "
            f"WHERE {quote_ident(ix.MACHINE_TYPE)} = {quote_literal(machine_type)} "
            f"AND {quote_ident(ix.MACHINE_ID)} = {quote_literal(machine_id)}"
        )
        try:
            with InfluxClient(self.settings.influx) as client:
                series = client.query(q, epoch="ns")
        except InfluxQueryError as exc:
            if "database not found" in exc.error:  # no alert was ever written
                return set()
            raise ServiceUnavailable(exc.message, exc.hint) from exc
        return {
            (int(t), str(state)) for s in series for t, state in zip(s.column("time"), s.column(ix.STATE), strict=True)
        }

    def _kafka(self, machine_type: str, machine_id: str) -> set[tuple[int, str]]:
        """Read the whole alerts topic (state changes only, so it stays small)."""
        from kafka import TopicPartition  # deferred: loads kafka
        from kafka.errors import KafkaError  # deferred: loads kafka

        topic = self.settings.kafka.topics.alerts
        out: set[tuple[int, str]] = set()
        try:
            consumer = make_consumer(self.settings, group_id=None, consumer_timeout_ms=2000)
        except ServiceUnavailable:
            raise
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            if not tps:
                return out
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            deadline = time.monotonic() + 30
            while any(consumer.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    for rec in records:
                        try:
                            ev = AlertEvent.decode(rec.value)
                        except ContractError:
                            continue  # not ours to dead-letter: the worker owns this topic
                        if ev.machine_type == machine_type and ev.machine_id == machine_id:
                            out.add((ev.timestamp_ns, ev.current.value))
        except KafkaError as exc:
            raise ServiceUnavailable(f"cannot read the alerts topic {topic}: {exc}") from exc
        finally:
            consumer.close()
        return out


# ---------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class ConfirmedInterval:
    """A range of one machine's audio a person vouched for as normal."""

    id: int
    machine_type: str
    machine_id: str
    from_ns: int
    to_ns: int
    by: str
    at_ns: int
    note: str = ""
    forced: bool = False
    alerts: list[tuple[int, int]] = field(default_factory=list)  # overlapping alert spans when forced
    revoked: bool = False
    revoked_by: str = ""
    revoked_at_ns: int = 0
    revoke_note: str = ""

    @property
    def machine(self) -> str:
        return f"{self.machine_type}/{self.machine_id}"

    @property
    def duration_s(self) -> float:
        return (self.to_ns - self.from_ns) / NS

    def to_hash(self) -> dict[str, str]:
        d = asdict(self)
        d["alerts"] = json.dumps(self.alerts)
        return {k: (str(int(v)) if isinstance(v, bool) else str(v)) for k, v in d.items()}

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> ConfirmedInterval:
        return cls(
            id=int(h["id"]),
            machine_type=h["machine_type"],
            machine_id=h["machine_id"],
            from_ns=int(h["from_ns"]),
            to_ns=int(h["to_ns"]),
            by=h["by"],
            at_ns=int(h["at_ns"]),
            note=h.get("note", ""),
            forced=h.get("forced") == "1",
            alerts=[tuple(a) for a in json.loads(h.get("alerts", "[]"))],  # type: ignore[misc]
            revoked=h.get("revoked") == "1",
            revoked_by=h.get("revoked_by", ""),
            revoked_at_ns=int(h.get("revoked_at_ns", "0")),
            revoke_note=h.get("revoke_note", ""),
        )

    def as_json(self) -> dict[str, object]:
        d = asdict(self)
        d["from"], d["to"], d["at"] = format_time(self.from_ns), format_time(self.to_ns), format_time(self.at_ns)
        return d


class AlertOverlap(BadInput):
    """The range overlaps alerts: confirming it would teach the model a fault is normal."""

    def __init__(self, machine: str, spans: list[AlertSpan]) -> None:
        listed = ", ".join(f"{format_time(s.start_ns)}..{format_time(s.end_ns)}" for s in spans)
        super().__init__(
            f"{machine}: the range overlaps {len(spans)} alert(s): {listed}",
            "check that these alerts were false alarms, then repeat with --force "
            "(the overlap is recorded in the audit trail)",
        )
        self.spans = spans


def default_user() -> str:
    try:
        return os.environ.get("SOUNDWATCH_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class ConfirmationStore:
    """Confirm / revoke / list confirmed-normal intervals in Redis."""

    def __init__(self, redis_settings: RedisSettings, client=None) -> None:  # client: redis.Redis
        self.prefix = redis_settings.key_prefix
        if client is None:
            import redis  # deferred: loads redis

            client = redis.Redis.from_url(
                redis_settings.url, decode_responses=True, socket_timeout=10, **redis_settings.client_kwargs()
            )
        self.r = client
        self._url = redis_settings.url

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, "normal", *parts))

    def _call(self, what: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
        import redis  # deferred: loads redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise ServiceUnavailable(
                f"Redis at {self._url} failed while {what}: {exc}",
                "start it with `soundwatch services up` or set SOUNDWATCH_REDIS__URL",
            ) from exc

    # -- writes -----------------------------------------------------------------------------
    def confirm(
        self,
        machine_type: str,
        machine_id: str,
        from_ns: int,
        to_ns: int,
        *,
        by: str | None = None,
        note: str = "",
        force: bool = False,
        alerts: AlertHistory | None = None,
        now_ns: int | None = None,
    ) -> ConfirmedInterval:
        """Record ``[from_ns, to_ns)`` as normal. Overlapping alerts raise :class:`AlertOverlap` unless ``force``."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        machine = f"{machine_type}/{machine_id}"
        if to_ns <= from_ns:
            raise BadInput(f"{machine}: --to ({format_time(to_ns)}) must be after --from ({format_time(from_ns)})")
        if from_ns > now_ns:
            raise BadInput(
                f"{machine}: the range starts in the future ({format_time(from_ns)})",
                "only audio that was heard can be confirmed",
            )
        to_ns = min(to_ns, now_ns)
        overlapping: list[AlertSpan] = []
        if alerts is not None:
            try:
                overlapping = [s for s in alerts.spans(machine_type, machine_id) if s.overlaps(from_ns, to_ns)]
            except ServiceUnavailable as exc:
                if not force:
                    raise
                note = (note + " " if note else "") + f"[alert check unavailable: {exc.message}]"
        if overlapping and not force:
            raise AlertOverlap(machine, overlapping)
        new_id = int(self._call("allocating an interval id", self.r.incr, self._k("seq")))
        iv = ConfirmedInterval(
            new_id,
            machine_type,
            machine_id,
            from_ns,
            to_ns,
            by or default_user(),
            now_ns,
            note,
            bool(force and (overlapping or "alert check unavailable" in note)),
            [(s.start_ns, s.end_ns) for s in overlapping],
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k("interval", str(new_id)), mapping=iv.to_hash())
        pipe.zadd(self._k("ids"), {str(new_id): new_id})
        pipe.zadd(self._k("machine", machine), {str(new_id): from_ns})
        pipe.xadd(self._k("audit"), self._audit_fields("confirm", iv, iv.by, now_ns, note))
        self._call("recording the confirmation", pipe.execute)
        log.info(
            "confirmed %s %s..%s as normal (#%d by %s%s)",
            machine,
            format_time(from_ns),
            format_time(to_ns),
            new_id,
            iv.by,
            ", FORCED over alerts" if iv.forced else "",
        )
        return iv

    def revoke(
        self, interval_id: int, *, by: str | None = None, note: str = "", now_ns: int | None = None
    ) -> ConfirmedInterval:
        """Mark an interval revoked (kept for the audit trail; retraining ignores it from now on)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        iv = self.get(interval_id)
        if iv.revoked:
            raise BadInput(
                f"interval #{interval_id} was already revoked by {iv.revoked_by} at {format_time(iv.revoked_at_ns)}"
            )
        by = by or default_user()
        fields = {"revoked": "1", "revoked_by": by, "revoked_at_ns": str(now_ns), "revoke_note": note}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._k("interval", str(interval_id)), mapping=fields)
        pipe.xadd(self._k("audit"), self._audit_fields("revoke", iv, by, now_ns, note))
        self._call("recording the revocation", pipe.execute)
        return self.get(interval_id)

    @staticmethod
    def _audit_fields(action: str, iv: ConfirmedInterval, by: str, at_ns: int, note: str) -> dict[str, str]:
        return {
            "action": action,
            "interval": str(iv.id),
            "machine": iv.machine,
            "from_ns": str(iv.from_ns),
            "to_ns": str(iv.to_ns),
            "by": by,
            "at_ns": str(at_ns),
            "note": note,
            "forced": str(int(iv.forced)),
            "alerts": json.dumps(iv.alerts),
        }

    # -- reads ------------------------------------------------------------------------------
    def get(self, interval_id: int) -> ConfirmedInterval:
        h = self._call("reading an interval", self.r.hgetall, self._k("interval", str(interval_id)))
        if not h:
            raise BadInput(f"no confirmed-normal interval #{interval_id}", "see `soundwatch normal list`")
        return ConfirmedInterval.from_hash(h)

    def intervals(
        self,
        machine_type: str | None = None,
        machine_id: str | None = None,
        *,
        include_revoked: bool = False,
        since_ns: int | None = None,
    ) -> list[ConfirmedInterval]:
        """Intervals, oldest first; ``since_ns`` keeps those whose range ends after it."""
        if machine_type and machine_id:
            ids = self._call(
                "listing intervals", self.r.zrange, self._k("machine", f"{machine_type}/{machine_id}"), 0, -1
            )
        else:
            ids = self._call("listing intervals", self.r.zrange, self._k("ids"), 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self._k("interval", str(i)))
        out = [ConfirmedInterval.from_hash(h) for h in self._call("reading intervals", pipe.execute) if h]
        if machine_type:
            out = [iv for iv in out if iv.machine_type == machine_type]
        if machine_id:
            out = [iv for iv in out if iv.machine_id == machine_id]
        if not include_revoked:
            out = [iv for iv in out if not iv.revoked]
        if since_ns is not None:
            out = [iv for iv in out if iv.to_ns > since_ns]
        return sorted(out, key=lambda iv: (iv.from_ns, iv.id))

    def audit(self, count: int = 1000) -> list[dict[str, str]]:
        """The audit trail, oldest first (each entry also carries its stream id)."""
        rows = self._call("reading the audit trail", self.r.xrange, self._k("audit"), count=count)
        return [{"entry": eid, **fields} for eid, fields in rows]


__all__ = [
    "AlertHistory",
    "AlertOverlap",
    "AlertSpan",
    "ConfirmationStore",
    "ConfirmedInterval",
    "format_time",
    "parse_time",
    "spans_from_transitions",
]
