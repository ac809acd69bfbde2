"""Grafana-managed alerting as code: rules per machine, a contact point, a notification policy.

Two rules per machine (one rule group per machine type, evaluated every minute):

* **anomaly** (severity ``critical``): the latest median-filtered score is above the latest
  threshold, continuously for ``settings.grafana.alert_for``. Queries ``M`` (median) and ``T``
  (threshold) are InfluxQL; ``B``/``TH`` reduce them to their last value, ``C`` = ``$B > $TH``.
  A silent machine is *not* an anomaly (``noDataState = OK``) — the second rule covers it.
* **no data** (severity ``warning``): the machine wrote no score for ``settings.grafana.nodata_after``
  (the count query returns no row -> ``noDataState = Alerting``).

Per-machine rules (rather than one multi-dimensional rule) are what make the no-data rule work:
a machine that stops reporting disappears from a GROUP BY result, but its own rule sees "no data".

One fleet-wide rule (group ``soundwatch-pipeline``, severity ``warning``): **audio lost or
contested** — the feature workers' ``chunks_skipped`` or ``chunks_conflicting`` counters grew in
the last 5 minutes (audio chunks were lost, or two gateways claim one machine).

Everything here is plain JSON in the shape of Grafana's alerting provisioning HTTP API (the
``grafana-foundation-sdk`` ``alerting`` models); :func:`file_provisioning` converts it to the YAML
shape that Grafana's file provisioning reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dashboards import queries as q
from dashboards.builder import MACHINE_SCORE_PANEL, PIPELINE_UID, machine_url
from dashboards.machines import Machine, check_machines
from soundwatch.errors import ConfigError
from soundwatch.influx import schema as ix
from soundwatch.settings import GrafanaSettings

Json = dict[str, Any]

EVAL_INTERVAL_S = 60
# The anomaly queries look at this much recent data: a few windows, robust to a late write.
ANOMALY_LOOKBACK_S = 2 * EVAL_INTERVAL_S
CONTACT_POINT = "soundwatch-maintenance"
FALLBACK_RECEIVER = "grafana-default-email"  # exists in every Grafana; used when settings name no contact
EXPR_DS = {"type": "__expr__", "uid": "__expr__"}
APP_LABEL = {"app": "soundwatch"}
RUNBOOK = (
    "1. Open the dashboard link and compare the median score with the threshold: a short spike that "
    "already fell back is usually a transient (door, forklift, maintenance work). "
    "2. Listen on site or to the recorded audio; check the machine's vibration/temperature if available. "
    "3. If the sound is abnormal: create a maintenance work order and keep the alert. "
    "4. If the sound is normal (false alarm): mark the interval as confirmed-normal so the next "
    "retraining learns it, and silence this machine's alert until then. "
    "5. No-data alerts: check the gateway/microphone of this machine and the pipeline-health dashboard."
)

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def duration_s(text: str) -> int:
    """Seconds in a Grafana/Prometheus-style duration such as ``90s``, ``2m``, ``1h30m``."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ConfigError(
            f"duration {text!r} is not like 30s, 2m or 1h30m",
            "fix SOUNDWATCH_GRAFANA__ALERT_FOR / SOUNDWATCH_GRAFANA__NODATA_AFTER",
        )
    h, m, s = (int(g or 0) for g in match.groups())
    return 3600 * h + 60 * m + s


def folder_uid(grafana: GrafanaSettings) -> str:
    """Stable folder uid from the folder title (Grafana uids: <= 40 chars of [A-Za-z0-9_-])."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", grafana.folder).strip("-").lower()
    if not slug:
        raise ConfigError(f"folder name {grafana.folder!r} has no usable characters", "set SOUNDWATCH_GRAFANA__FOLDER")
    return slug[:40]


def rule_uid(kind: str, machine: Machine) -> str:
    """Stable, short rule uid: pushes update the same rule instead of creating a new one."""
    digest = hashlib.sha1(f"{kind}:{machine.key}".encode()).hexdigest()[:20]
    return f"sw-{kind}-{digest}"


def group_name(machine_type: str) -> str:
    return f"soundwatch-{machine_type}"


def _influx_query(ref: str, ds_uid: str, query: str, lookback_s: int) -> Json:
    return {
        "refId": ref,
        "datasourceUid": ds_uid,
        "queryType": "",
        "relativeTimeRange": {"from": lookback_s, "to": 0},
        "model": {
            "refId": ref,
            "datasource": {"type": "influxdb", "uid": ds_uid},
            "query": query,
            "rawQuery": True,
            "resultFormat": "time_series",
            "intervalMs": 1000,
            "maxDataPoints": 43200,
        },
    }


def _expression(ref: str, model: Json) -> Json:
    return {
        "refId": ref,
        "datasourceUid": "__expr__",
        "queryType": "",
        "relativeTimeRange": {"from": 0, "to": 0},
        "model": {
            "refId": ref,
            "datasource": EXPR_DS,
            "hide": False,
            "intervalMs": 1000,
            "maxDataPoints": 43200,
            **model,
        },
    }


def _reduce_last(ref: str, of: str) -> Json:
    return _expression(ref, {"type": "reduce", "expression": of, "reducer": "last", "settings": {"mode": "dropNN"}})


def _labels(machine: Machine, severity: str) -> dict[str, str]:
    return {
        **APP_LABEL,
        "severity": severity,
        "machine_type": machine.machine_type,
        "machine_id": machine.machine_id,
    }


def _annotations(grafana: GrafanaSettings, machine: Machine, summary: str, description: str) -> dict[str, str]:
    return {
        "summary": summary,
        "description": description,
        "runbook": RUNBOOK,
        "dashboard_url": machine_url(grafana.url, machine),
        "__dashboardUid__": MACHINE_SCORE_PANEL.dashboard_uid,
        "__panelId__": str(MACHINE_SCORE_PANEL.panel_id),
    }


def anomaly_rule(grafana: GrafanaSettings, machine: Machine) -> Json:
    """Median score above threshold for ``alert_for`` -> critical alert for this machine."""
    duration_s(grafana.alert_for)  # validate early, with a message naming the setting
    ds = grafana.datasource_uid
    summary = (
        f'{machine.key} sounds abnormal: median score {{{{ printf "%.3f" $values.B.Value }}}} is above '
        f'its threshold {{{{ printf "%.3f" $values.TH.Value }}}} for at least {grafana.alert_for}'
    )
    return {
        "uid": rule_uid("anomaly", machine),
        "title": f"soundwatch anomaly {machine.key}",
        "ruleGroup": group_name(machine.machine_type),
        "folderUID": folder_uid(grafana),
        "orgID": 1,
        "condition": "C",
        "data": [
            _influx_query("M", ds, q.alert_median(machine), ANOMALY_LOOKBACK_S),
            _influx_query("T", ds, q.alert_threshold(machine), ANOMALY_LOOKBACK_S),
            _reduce_last("B", "M"),
            _reduce_last("TH", "T"),
            _expression("C", {"type": "math", "expression": "$B > $TH"}),
        ],
        "for": grafana.alert_for,
        "noDataState": "OK",
        "execErrState": "Error",
        "isPaused": False,
        "labels": _labels(machine, "critical"),
        "annotations": _annotations(
            grafana,
            machine,
            summary,
            "The median-filtered anomaly score of this machine stayed above the "
            "threshold calibrated on its normal sound.",
        ),
    }


def nodata_rule(grafana: GrafanaSettings, machine: Machine) -> Json:
    """No score written for ``nodata_after`` -> warning for this machine."""
    window = duration_s(grafana.nodata_after)
    if window < 60:
        raise ConfigError(
            f"nodata_after={grafana.nodata_after} is shorter than 1m",
            "use at least 1m: scores arrive about once a second but writes are batched",
        )
    ds_uid = grafana.datasource_uid
    return {
        "uid": rule_uid("nodata", machine),
        "title": f"soundwatch no data {machine.key}",
        "ruleGroup": group_name(machine.machine_type),
        "folderUID": folder_uid(grafana),
        "orgID": 1,
        "condition": "C",
        "data": [
            _influx_query("A", ds_uid, q.alert_window_count(machine), window),
            _reduce_last("B", "A"),
            _expression(
                "C",
                {
                    "type": "threshold",
                    "expression": "B",
                    "conditions": [{"evaluator": {"type": "lt", "params": [1]}}],
                },
            ),
        ],
        "for": "0s",
        "noDataState": "Alerting",
        "execErrState": "Error",
        "isPaused": False,
        "labels": _labels(machine, "warning"),
        "annotations": _annotations(
            grafana,
            machine,
            f"{machine.key} has sent no anomaly scores for {grafana.nodata_after}",
            f"No asd_score point for this machine in InfluxDB (datasource {ds_uid}) in "
            f"the last {grafana.nodata_after}: microphone, gateway or pipeline problem.",
        ),
    }


PIPELINE_GROUP = "soundwatch-pipeline"
AUDIO_LOSS_UID = "sw-pipeline-audio-loss"
AUDIO_LOSS_LOOKBACK_S = 300
AUDIO_LOSS_RUNBOOK = (
    "1. Open the pipeline-health dashboard and the feature workers' logs: they name the machines and "
    "partitions concerned. "
    "2. Chunks skipped: audio was lost upstream — typically the broker lost or truncated audio.raw "
    "(restart without persistent storage, topic recreated); check the broker, then the gateways' spools. "
    "3. Topic resyncs: the broker lost or recreated audio.raw; the feature workers read the new log from its "
    "start (README, Reliability: what to do after a broker lost its data). "
    "4. Chunks conflicting: two gateways publish audio for one machine (a replaced gateway still running, "
    "a copied configuration); the older one's chunks go to the dead-letter topic — stop or reconfigure it. "
    "5. Machines whose audio stopped show as STALE on the fleet dashboard."
)


def audio_loss_rule(grafana: GrafanaSettings) -> Json:
    """Fleet-wide: a feature worker skipped chunks (audio lost) or saw two gateways claim a machine."""
    ds = grafana.datasource_uid
    lookback = AUDIO_LOSS_LOOKBACK_S
    summary = (
        '{{ printf "%.0f" $values.SR.Value }} audio chunks lost and {{ printf "%.0f" $values.CR.Value }} '
        f"chunks from a second gateway of the same machine in the last {lookback // 60} minutes; "
        '{{ printf "%.0f" $values.RR.Value }} audio.raw partitions found recreated or truncated'
    )
    return {
        "uid": AUDIO_LOSS_UID,
        "title": "soundwatch audio lost or contested",
        "ruleGroup": PIPELINE_GROUP,
        "folderUID": folder_uid(grafana),
        "orgID": 1,
        "condition": "E",
        "data": [
            _influx_query("S", ds, q.features_counter_increase(ix.CHUNKS_SKIPPED), lookback),
            _influx_query("C", ds, q.features_counter_increase(ix.CHUNKS_CONFLICTING), lookback),
            _influx_query("R", ds, q.features_counter_increase(ix.TOPIC_RESYNCS), lookback),
            _reduce_last("SR", "S"),
            _reduce_last("CR", "C"),
            _reduce_last("RR", "R"),
            _expression("E", {"type": "math", "expression": "$SR + $CR + $RR > 0"}),
        ],
        "for": "0s",
        "noDataState": "OK",  # no feature worker reporting is the machines' staleness, not this rule
        "execErrState": "Error",
        "isPaused": False,
        "labels": {**APP_LABEL, "severity": "warning", "scope": "pipeline"},
        "annotations": {
            "summary": summary,
            "description": "The feature workers' chunks_skipped / chunks_conflicting / topic_resyncs counters "
            "grew: audio was lost before it could be scored, two gateways claim one machine, or the broker lost "
            "or recreated audio.raw.",
            "runbook": AUDIO_LOSS_RUNBOOK,
            "dashboard_url": f"{grafana.url.rstrip('/')}/d/{PIPELINE_UID}/soundwatch-pipeline",
        },
    }


def rule_groups(grafana: GrafanaSettings, machines: Sequence[Machine]) -> list[Json]:
    """One rule group per machine type with both rules of each of its machines, then the pipeline group."""
    by_type: dict[str, list[Json]] = {}
    for m in check_machines(machines):
        by_type.setdefault(m.machine_type, []).extend([anomaly_rule(grafana, m), nodata_rule(grafana, m)])
    groups = [(group_name(t), rules) for t, rules in sorted(by_type.items())]
    groups.append((PIPELINE_GROUP, [audio_loss_rule(grafana)]))
    return [
        {"title": title, "folderUid": folder_uid(grafana), "interval": EVAL_INTERVAL_S, "rules": rules}
        for title, rules in groups
    ]


def contact_points(grafana: GrafanaSettings) -> list[Json]:
    """The integrations of the ``soundwatch-maintenance`` contact point (webhook and/or email)."""
    out: list[Json] = []
    if grafana.webhook_url:
        out.append(
            {
                "uid": "soundwatch-webhook",
                "name": CONTACT_POINT,
                "type": "webhook",
                "settings": {"url": grafana.webhook_url.get_secret_value(), "httpMethod": "POST"},
                "disableResolveMessage": False,
            }
        )
    if grafana.email_addresses:
        out.append(
            {
                "uid": "soundwatch-email",
                "name": CONTACT_POINT,
                "type": "email",
                "settings": {"addresses": ";".join(grafana.email_addresses), "singleEmail": False},
                "disableResolveMessage": False,
            }
        )
    return out


def receiver(grafana: GrafanaSettings) -> str:
    return CONTACT_POINT if contact_points(grafana) else FALLBACK_RECEIVER


def notification_policy(grafana: GrafanaSettings) -> Json:
    """Policy tree: soundwatch alerts grouped per machine, routed by severity.

    Critical (anomaly) alerts go out fast and repeat hourly; warnings (no data) wait a little
    to batch and repeat twice a day. Other alerts of the organisation keep the root receiver.
    """
    to = receiver(grafana)
    by_machine = ["grafana_folder", "alertname", "machine_type", "machine_id"]
    return {
        "receiver": to,
        "group_by": ["grafana_folder", "alertname"],
        "routes": [
            {
                "receiver": to,
                "object_matchers": [["app", "=", APP_LABEL["app"]]],
                "group_by": by_machine,
                "group_wait": "30s",
                "group_interval": "5m",
                "repeat_interval": "4h",
                "routes": [
                    {
                        "receiver": to,
                        "object_matchers": [["severity", "=", "critical"]],
                        "group_wait": "10s",
                        "group_interval": "1m",
                        "repeat_interval": "1h",
                    },
                    {
                        "receiver": to,
                        "object_matchers": [["severity", "=", "warning"]],
                        "group_wait": "1m",
                        "group_interval": "5m",
                        "repeat_interval": "12h",
                    },
                ],
            }
        ],
    }


@dataclass(frozen=True)
class AlertingConfig:
    """Everything Grafana needs for soundwatch alerting, in API shape."""

    groups: list[Json]
    contact_points: list[Json]
    policy: Json


def build(grafana: GrafanaSettings, machines: Sequence[Machine]) -> AlertingConfig:
    return AlertingConfig(rule_groups(grafana, machines), contact_points(grafana), notification_policy(grafana))


def _fmt_interval(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def file_provisioning(grafana: GrafanaSettings, config: AlertingConfig) -> dict[str, Json]:
    """The same config in Grafana's file-provisioning shape: ``{file name: YAML document}``."""
    groups = []
    for g in config.groups:
        rules = []
        for r in g["rules"]:
            rules.append({k: v for k, v in r.items() if k not in ("ruleGroup", "folderUID", "orgID")})
        groups.append(
            {
                "orgId": 1,
                "name": g["title"],
                "folder": grafana.folder,
                "interval": _fmt_interval(g["interval"]),
                "rules": rules,
            }
        )
    files: dict[str, Json] = {
        "rules.yaml": {"apiVersion": 1, "groups": groups},
        "policies.yaml": {"apiVersion": 1, "policies": [{"orgId": 1, **config.policy}]},
    }
    if config.contact_points:
        receivers = [{k: v for k, v in cp.items() if k != "name"} for cp in config.contact_points]
        files["contact-points.yaml"] = {
            "apiVersion": 1,
            "contactPoints": [{"orgId": 1, "name": CONTACT_POINT, "receivers": receivers}],
        }
    return files
