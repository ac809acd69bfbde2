"""Grafana-managed alerting as code: a fixed set of multi-dimensional rules, a contact point, one route.

The rules do not grow with the fleet: each queries every machine at once (InfluxQL ``GROUP BY
machine_type, machine_id``) and Grafana makes one alert instance per series, labelled with the
machine's tags. A machine that starts reporting is alerted on without a re-export. Group
``soundwatch-machines`` (every :data:`MACHINE_EVAL_INTERVAL_S`):

* **machine alerting** (severity ``critical``): the scoring worker's own alert state — the
  ``alerting`` field the workers write to ``machine_status`` every ``scoring.status_interval_s``,
  set and cleared by the hysteresis of ``scoring.alerts``. Grafana re-derives nothing and adds no
  pending period, so what pages is exactly what the worker decided (and the ``alerts`` topic carries).
* **machine silent** (severity ``warning``): a known machine's ``seconds_since_audio`` exceeds
  ``settings.grafana.nodata_after``. The workers keep reporting machines whose audio stopped, so the
  silent machine is named; no status at all (no scoring worker writing) fires the rule's no-data state.

Group ``soundwatch-pipeline`` (every minute, severity ``warning``): **audio lost or contested** —
the feature workers' ``chunks_skipped`` / ``chunks_conflicting`` / ``topic_resyncs`` counters grew
in the last 5 minutes.

Routing touches only soundwatch's alerts: :func:`soundwatch_route` is one child route matched on
the ``app=soundwatch`` label, merged into the organisation's existing policy tree by
:func:`dashboards.policy.merge_policy_tree`; the root and other teams' routes are left alone.

Everything here is plain JSON in the shape of Grafana's alerting provisioning HTTP API (the
``grafana-foundation-sdk`` ``alerting`` models); :func:`file_provisioning` converts it to the YAML
shape that Grafana's file provisioning reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from dashboards import queries as q
from dashboards.builder import MACHINE_SCORE_PANEL, PIPELINE_UID, machine_url
from dashboards.policy import merge_policy_tree
from soundwatch.errors import ConfigError
from soundwatch.influx import schema as ix
from soundwatch.settings import GrafanaSettings

Json = dict[str, Any]

MACHINE_GROUP = "soundwatch-machines"
ALERTING_UID = "sw-machine-alerting"
SILENT_UID = "sw-machine-silent"
RULE_UID_PREFIX = "sw-"  # every rule soundwatch creates (push deletes its own rules that are no longer built)
# The workers write machine_status every 10 s (scoring.status_interval_s): evaluate as often.
MACHINE_EVAL_INTERVAL_S = 10
PIPELINE_EVAL_INTERVAL_S = 60
# The machine rules read each machine's latest status in this range: a few status intervals, robust to a late
# write. A machine no worker reports any more drops out of the result (Grafana resolves its instance).
STATUS_LOOKBACK_S = 120
CONTACT_POINT = "soundwatch-maintenance"
FALLBACK_RECEIVER = "grafana-default-email"  # exists in every Grafana; used when settings name no contact
EXPR_DS = {"type": "__expr__", "uid": "__expr__"}
APP_KEY = "app"
APP_LABEL = {APP_KEY: "soundwatch"}
RUNBOOK = (
    "1. Open the dashboard link and compare the median score with the threshold: a short spike that "
    "already fell back is usually a transient (door, forklift, maintenance work). "
    "2. Listen on site or to the recorded audio; check the machine's vibration/temperature if available. "
    "3. If the sound is abnormal: create a maintenance work order and keep the alert. "
    "4. If the sound is normal (false alarm): mark the interval as confirmed-normal so the next "
    "retraining learns it, and silence this machine's alert until then. "
    "5. Silent-machine alerts: check the gateway/microphone of this machine and the pipeline-health dashboard; "
    "without a machine name, no scoring worker is writing status: check the scoring workers and InfluxDB."
)

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def duration_s(text: str) -> int:
    """Seconds in a Grafana/Prometheus-style duration such as ``90s``, ``2m``, ``1h30m``."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ConfigError(
            f"duration {text!r} is not like 30s, 2m or 1h30m",
            "fix SOUNDWATCH_GRAFANA__NODATA_AFTER",
        )
    h, m, s = (int(g or 0) for g in match.groups())
    return 3600 * h + 60 * m + s


def folder_uid(grafana: GrafanaSettings) -> str:
    """Stable folder uid from the folder title (Grafana uids: <= 40 chars of [A-Za-z0-9_-])."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", grafana.folder).strip("-").lower()
    if not slug:
        raise ConfigError(f"folder name {grafana.folder!r} has no usable characters", "set SOUNDWATCH_GRAFANA__FOLDER")
    return slug[:40]


def public_url(grafana: GrafanaSettings) -> str:
    """The Grafana address people open from a notification (``public_url``, else ``url``)."""
    return (grafana.public_url or grafana.url).rstrip("/")


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
            "datasource": dict(EXPR_DS),  # a copy: shared objects become YAML anchors in the export
            "hide": False,
            "intervalMs": 1000,
            "maxDataPoints": 43200,
            **model,
        },
    }


def _reduce_last(ref: str, of: str) -> Json:
    return _expression(ref, {"type": "reduce", "expression": of, "reducer": "last", "settings": {"mode": "dropNN"}})


def _threshold_gt(ref: str, of: str, value: float) -> Json:
    return _expression(
        ref,
        {"type": "threshold", "expression": of, "conditions": [{"evaluator": {"type": "gt", "params": [value]}}]},
    )


# Go templates Grafana fills per alert instance from the series' tags (the GROUP BY machine tags).
MACHINE_TEMPLATE = f"{{{{ $labels.{ix.MACHINE_TYPE} }}}}/{{{{ $labels.{ix.MACHINE_ID} }}}}"


def _machine_annotations(grafana: GrafanaSettings, summary: str, description: str) -> dict[str, str]:
    return {
        "summary": summary,
        "description": description,
        "runbook": RUNBOOK,
        "dashboard_url": machine_url(
            public_url(grafana), f"{{{{ $labels.{ix.MACHINE_TYPE} }}}}", f"{{{{ $labels.{ix.MACHINE_ID} }}}}"
        ),
        "__dashboardUid__": MACHINE_SCORE_PANEL.dashboard_uid,
        "__panelId__": str(MACHINE_SCORE_PANEL.panel_id),
    }


def alerting_rule(grafana: GrafanaSettings) -> Json:
    """Critical, one instance per machine: the scoring worker says the machine is ALERTING.

    The worker's hysteresis (``scoring.alert_after`` / ``resolve_after``) is the only definition of
    an alert; Grafana adds no pending period (``for: 0s``), it only reads the state the workers write
    to ``machine_status`` every ``scoring.status_interval_s``.
    """
    return {
        "uid": ALERTING_UID,
        "title": "soundwatch machine alerting",
        "ruleGroup": MACHINE_GROUP,
        "folderUID": folder_uid(grafana),
        "orgID": 1,
        "condition": "C",
        "data": [
            _influx_query("A", grafana.datasource_uid, q.ALERT_MACHINE_ALERTING, STATUS_LOOKBACK_S),
            _reduce_last("B", "A"),
            _threshold_gt("C", "B", 0),
        ],
        "for": "0s",
        "noDataState": "OK",  # no worker reporting at all is the silent rule's no-data alert
        "execErrState": "Error",
        "isPaused": False,
        "labels": {**APP_LABEL, "severity": "critical"},
        "annotations": _machine_annotations(
            grafana,
            f"{MACHINE_TEMPLATE} sounds abnormal: the scoring worker raised its alert",
            "The machine's median-filtered anomaly score was over the threshold calibrated on its normal sound "
            "for scoring.alert_after consecutive windows; the alert resolves after scoring.resolve_after normal "
            "windows in a row.",
        ),
    }


def silent_rule(grafana: GrafanaSettings) -> Json:
    """Warning, one instance per machine: no audio from a known machine for ``nodata_after``.

    The scoring workers keep writing ``machine_status`` for every machine they have scored, so a
    silent machine is a series with a growing ``seconds_since_audio`` — it is named. No status at
    all (no scoring worker writes) is this rule's no-data state: it fires without a machine name.
    """
    window = duration_s(grafana.nodata_after)
    if window < 60:
        raise ConfigError(
            f"nodata_after={grafana.nodata_after} is shorter than 1m",
            "use at least 1m: machines send audio about once a second but status is written every 10 s",
        )
    return {
        "uid": SILENT_UID,
        "title": "soundwatch machine silent",
        "ruleGroup": MACHINE_GROUP,
        "folderUID": folder_uid(grafana),
        "orgID": 1,
        "condition": "C",
        "data": [
            _influx_query("A", grafana.datasource_uid, q.ALERT_SECONDS_SINCE_AUDIO, STATUS_LOOKBACK_S),
            _reduce_last("B", "A"),
            _threshold_gt("C", "B", window),
        ],
        "for": "0s",
        "noDataState": "Alerting",
        "execErrState": "Error",
        "isPaused": False,
        "labels": {**APP_LABEL, "severity": "warning"},
        "annotations": _machine_annotations(
            grafana,
            f'{MACHINE_TEMPLATE} has sent no audio for {{{{ printf "%.0f" $values.B.Value }}}} s '
            f"(more than {grafana.nodata_after})",
            f"The scoring workers received no audio window of this machine for more than {grafana.nodata_after}: "
            "microphone, gateway or pipeline problem. Without a machine name: no scoring worker writes "
            f"{ix.MACHINE_STATUS_MEASUREMENT} at all (scoring stopped, or InfluxDB unreachable).",
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
            "dashboard_url": f"{public_url(grafana)}/d/{PIPELINE_UID}/soundwatch-pipeline",
        },
    }


def rule_groups(grafana: GrafanaSettings) -> list[Json]:
    """The machine group (two rules for the whole fleet) and the pipeline group: three rules for any fleet."""
    groups = [
        (MACHINE_GROUP, MACHINE_EVAL_INTERVAL_S, [alerting_rule(grafana), silent_rule(grafana)]),
        (PIPELINE_GROUP, PIPELINE_EVAL_INTERVAL_S, [audio_loss_rule(grafana)]),
    ]
    return [
        {"title": title, "folderUid": folder_uid(grafana), "interval": interval, "rules": rules}
        for title, interval, rules in groups
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


WEBHOOK_URL_ENV = "SOUNDWATCH_GRAFANA__WEBHOOK_URL"


def _file_receiver(contact_point: Json) -> Json:
    """A contact point's integration as a provisioning file holds it: the webhook URL (it usually embeds
    a token) as a reference Grafana expands from its own environment, never the secret itself."""
    out = {k: v for k, v in contact_point.items() if k != "name"}
    if out["type"] == "webhook":
        out["settings"] = {**out["settings"], "url": f"${WEBHOOK_URL_ENV}"}
    return out


def receiver(grafana: GrafanaSettings) -> str:
    return CONTACT_POINT if contact_points(grafana) else FALLBACK_RECEIVER


def soundwatch_route(grafana: GrafanaSettings) -> Json:
    """The one child route soundwatch adds to the organisation's policy tree (alerts labelled ``app=soundwatch``).

    Grouped per machine; critical (machine alerting) alerts go out fast and repeat hourly, warnings
    (silent machine, audio lost) wait a little to batch and repeat twice a day. Nothing else in the
    tree is soundwatch's: see :func:`dashboards.policy.merge_policy_tree`.
    """
    to = receiver(grafana)
    return {
        "receiver": to,
        "object_matchers": [[APP_KEY, "=", APP_LABEL[APP_KEY]]],
        "group_by": ["grafana_folder", "alertname", ix.MACHINE_TYPE, ix.MACHINE_ID],
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


@dataclass(frozen=True)
class AlertingConfig:
    """Everything Grafana needs for soundwatch alerting, in API shape."""

    groups: list[Json]
    contact_points: list[Json]
    route: Json


def build(grafana: GrafanaSettings) -> AlertingConfig:
    """Rules, contact point and route: the same for 10 or 10,000 machines."""
    return AlertingConfig(rule_groups(grafana), contact_points(grafana), soundwatch_route(grafana))


def _fmt_interval(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def file_provisioning(
    grafana: GrafanaSettings, config: AlertingConfig, policy_tree: Json | None = None
) -> dict[str, Json]:
    """The same config in Grafana's file-provisioning shape: ``{file name: YAML document}``.

    A provisioned ``policies.yaml`` replaces the organisation's whole policy tree, so it is written
    only from ``policy_tree`` — the organisation's current tree (API shape) — with soundwatch's
    route merged in; without it, no policy file is written (``push`` merges into the live tree).
    """
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
    files: dict[str, Json] = {"rules.yaml": {"apiVersion": 1, "groups": groups}}
    if policy_tree is not None:
        merged = merge_policy_tree(policy_tree, config.route)
        files["policies.yaml"] = {"apiVersion": 1, "policies": [{"orgId": 1, **merged}]}
    if config.contact_points:
        receivers = [_file_receiver(cp) for cp in config.contact_points]
        files["contact-points.yaml"] = {
            "apiVersion": 1,
            "contactPoints": [{"orgId": 1, "name": CONTACT_POINT, "receivers": receivers}],
        }
    return files
