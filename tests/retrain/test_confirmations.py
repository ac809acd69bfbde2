"""Confirmed-normal intervals: stored in Redis, audited, forced over alerts only on request."""

from __future__ import annotations

import pytest

from soundwatch.contracts import AlertEvent, AlertState, machine_key
from soundwatch.errors import BadInput
from soundwatch.influx.client import InfluxClient
from soundwatch.influx.schema import alert_point
from training.service.confirmations import (
    AlertHistory,
    AlertOverlap,
    ConfirmationStore,
    parse_time,
    spans_from_transitions,
)

NS = 10**9
NOW = 1_790_000_000 * NS


def test_parse_time_forms() -> None:
    assert parse_time("-2h", NOW) == NOW - 7200 * NS
    assert parse_time("+30m", NOW) == NOW + 1800 * NS
    assert parse_time("now", NOW) == NOW
    assert parse_time("2026-11-23T14:00:00Z") == parse_time("2026-11-23T15:00:00+01:00")
    assert parse_time("2026-11-23T14:00:00") == parse_time("2026-11-23T14:00:00Z"), "naive times are UTC"
    with pytest.raises(BadInput, match="ISO-8601"):
        parse_time("yesterday-ish")


def test_alert_spans_from_transitions() -> None:
    spans = spans_from_transitions("fan", "id_00", [(100, "alerting"), (200, "normal"), (300, "alerting")], pad_ns=10)
    assert [(s.start_ns, s.end_ns) for s in spans[:1]] == [(90, 200)]
    assert spans[1].start_ns == 290 and spans[1].overlaps(10**15, 10**15 + 1), "an unresolved alert stays open"


@pytest.mark.integration
def test_confirm_list_revoke_with_audit_and_force_over_alerts(isolated_settings) -> None:

    from soundwatch.kafka import make_producer

    s = isolated_settings
    t_alert = NOW - 3600 * NS
    # id_00: an alert (raise + resolve) on the alerts topic, as the scoring worker publishes it
    producer = make_producer(s)
    for ts, prev, cur in ((t_alert, "normal", "alerting"), (t_alert + 120 * NS, "alerting", "normal")):
        ev = AlertEvent("fan", "id_00", "v1", ts, AlertState(prev), AlertState(cur), 3.0, 2.0)
        producer.send(s.kafka.topics.alerts, key=machine_key("fan", "id_00"), value=ev.encode())
    producer.flush()
    # id_01: an open alert only in InfluxDB's asd_alert measurement
    with InfluxClient(s.influx) as influx:
        influx.write(
            [
                alert_point(
                    machine_type="fan",
                    machine_id="id_01",
                    state="alerting",
                    score_median=3.0,
                    threshold=2.0,
                    time_ns=t_alert,
                ).to_line()
            ]
        )

    store = ConfirmationStore(s.redis)
    history = AlertHistory(s, alert_pad_s=30)
    # a range clear of the alert is accepted
    ok = store.confirm(
        "fan",
        "id_00",
        t_alert - 7200 * NS,
        t_alert - 600 * NS,
        by="alice",
        note="after service",
        alerts=history,
        now_ns=NOW,
    )
    assert not ok.forced and ok.by == "alice"
    # overlapping the alert (even only its 30 s pad) needs force
    with pytest.raises(AlertOverlap, match="--force"):
        store.confirm("fan", "id_00", t_alert - 20 * NS, t_alert - 5 * NS, by="bob", alerts=history, now_ns=NOW)
    forced = store.confirm(
        "fan",
        "id_00",
        t_alert,
        t_alert + 60 * NS,
        by="bob",
        note="valve noise, not a fault",
        force=True,
        alerts=history,
        now_ns=NOW,
    )
    assert forced.forced and forced.alerts == [(t_alert - 30 * NS, t_alert + 120 * NS)]
    with pytest.raises(AlertOverlap):  # the InfluxDB-only open alert is seen too
        store.confirm("fan", "id_01", NOW - 60 * NS, NOW, alerts=history, now_ns=NOW)
    with pytest.raises(BadInput, match="must be after"):
        store.confirm("fan", "id_00", NOW - 10 * NS, NOW - 20 * NS, now_ns=NOW)

    assert [iv.id for iv in store.intervals("fan", "id_00")] == [ok.id, forced.id]
    revoked = store.revoke(forced.id, by="carol", note="it was a fault after all", now_ns=NOW + NS)
    assert revoked.revoked and revoked.revoked_by == "carol"
    assert [iv.id for iv in store.intervals("fan", "id_00")] == [ok.id]
    assert len(store.intervals(include_revoked=True)) == 2
    with pytest.raises(BadInput, match="already revoked"):
        store.revoke(forced.id, by="carol")

    trail = store.audit()
    assert [(e["action"], e["by"], e["forced"]) for e in trail] == [
        ("confirm", "alice", "0"),
        ("confirm", "bob", "1"),
        ("revoke", "carol", "1"),
    ]
    assert trail[1]["note"] == "valve noise, not a fault"
