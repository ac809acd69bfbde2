"""Upsert soundwatch's Grafana objects over the HTTP API with ``grafana-client``; idempotent.

Every object has a stable uid. For each one, ``push`` reads what Grafana has, compares it with
what soundwatch wants, and writes only when they differ — so a second push with unchanged input
sends no write at all (and creates no new dashboard versions). Objects are written in dependency
order: folder, data source, dashboards, contact points, notification policy, alert rules.

* One folder: the one with uid ``folder_uid(settings)``, else the folder already titled
  ``settings.grafana.folder`` (file provisioning creates it with a random uid), else a new one.
* The notification policy tree is the organisation's: ``push`` reads it, merges soundwatch's one
  route in (:func:`dashboards.policy.merge_policy_tree`) and writes it back only if that changed
  it, without provenance so the other teams can still edit their routes in the UI.
* Alert rules soundwatch created before (uid prefix ``sw-`` and label ``app=soundwatch``) that it no
  longer builds are deleted — e.g. the per-machine rules of earlier versions.

Comparison rules (Grafana adds ids, versions, provenance, timestamps, and may omit false/empty
values; secrets come back redacted):

* only the keys soundwatch sets are compared; a key Grafana omits matches a false/empty value;
* durations compare by length (``2m`` == ``2m0s`` == ``120s``);
* a value Grafana returns as ``[REDACTED]`` matches anything — rotate secrets in the Grafana UI
  or delete the object to have ``push`` recreate it.

Requires Grafana 9.1+ (alerting provisioning API); the output targets Grafana 11.x.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import niquests
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException, GrafanaUnauthorizedError

from dashboards import alerting
from dashboards.builder import all_dashboards
from dashboards.datasource import datasource
from dashboards.machines import Machine, check_machines
from dashboards.policy import merge_policy_tree
from soundwatch.errors import BadInput, ConfigError, ServiceUnavailable, SoundwatchError
from soundwatch.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
REDACTED = "[REDACTED]"
_DURATION_KEYS = {"for", "group_wait", "group_interval", "repeat_interval"}


@dataclass
class PushReport:
    """What a push did, object by object (``kind:uid``)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


def same(want: Any, have: Any, key: str = "") -> bool:
    """True when ``have`` (from Grafana) already says everything ``want`` says (see module doc)."""
    if isinstance(have, str) and have == REDACTED:
        return True
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return False
        return all(same(v, have[k], k) if k in have else _blank(v) for k, v in want.items())
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(same(w, h, key) for w, h in zip(want, have, strict=True))
        )
    if key in _DURATION_KEYS and isinstance(want, str) and isinstance(have, str):
        try:
            return alerting.duration_s(want) == alerting.duration_s(have)
        except SoundwatchError:
            return want == have
    if isinstance(want, bool) or isinstance(have, bool):
        return want is have
    return bool(want == have)


def _blank(value: Any) -> bool:
    """False, 0, "", None, and containers of only such values: what Grafana's ``omitempty`` drops."""
    if isinstance(value, dict):
        return all(_blank(v) for v in value.values())
    if isinstance(value, list):
        return all(_blank(v) for v in value)
    return not value


def _missing(exc: GrafanaException) -> bool:
    return isinstance(exc, GrafanaClientError) and exc.status_code == 404


def _translate(what: str, exc: Exception) -> SoundwatchError:
    """A Grafana/HTTP failure as an error that says what to do."""
    if isinstance(exc, GrafanaUnauthorizedError):
        return ConfigError(
            f"Grafana rejected the token while trying to {what} (HTTP 401)",
            "pass a service-account token with Admin rights: --token or SOUNDWATCH_GRAFANA__TOKEN",
        )
    if isinstance(exc, GrafanaClientError):
        if exc.status_code == 403:
            return ConfigError(
                f"the token may not {what} (HTTP 403)",
                "give the service account the Admin role (alerting provisioning needs it)",
            )
        return BadInput(
            f"Grafana refused to {what}: HTTP {exc.status_code} {exc.message}",
            "the Grafana version may be too old (need 9.1+; targets 11.x) or the object is invalid",
        )
    if isinstance(exc, GrafanaException):
        return ServiceUnavailable(
            f"Grafana failed to {what}: {exc.message}", "check that Grafana is up and the URL is right"
        )
    return ServiceUnavailable(
        f"cannot reach Grafana to {what}: {exc}",
        "check --url / SOUNDWATCH_GRAFANA__URL and that Grafana is running",
    )


class _Pusher:
    def __init__(self, api: GrafanaApi, report: PushReport) -> None:
        self.api = api
        self.report = report

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one API call; turn client errors into messages that say what to do."""
        try:
            return fn(*args, **kwargs)
        except (GrafanaException, niquests.exceptions.RequestException) as exc:
            raise _translate(what, exc) from exc

    def get(self, what: str, fn: Callable[..., Any], *args: Any) -> Any | None:
        """Read one object; None when Grafana says 404."""
        try:
            return fn(*args)
        except GrafanaException as exc:
            if _missing(exc):
                return None
            raise _translate(what, exc) from exc
        except niquests.exceptions.RequestException as exc:
            raise _translate(what, exc) from exc

    def upsert(
        self,
        kind: str,
        uid: str,
        want: Any,
        have: Any | None,
        create: Callable[[], Any],
        update: Callable[[], Any],
    ) -> None:
        name = f"{kind}:{uid}"
        if have is None:
            self.call(f"create {name}", create)
            self.report.created.append(name)
        elif not same(want, have):
            self.call(f"update {name}", update)
            self.report.updated.append(name)
        else:
            self.report.unchanged.append(name)


def push(
    url: str,
    token: str | None,
    settings: Settings,
    machines: Sequence[Machine],
    *,
    timeout_s: float = 10.0,
    api: GrafanaApi | None = None,
) -> PushReport:
    """Upsert folder, data source, dashboards, contact points, policy and rules into Grafana at ``url``.

    ``token`` is a service-account token (Bearer); None uses ``user:password@`` in ``url`` if any.
    """
    machines = check_machines(machines)
    if not machines:
        raise BadInput(
            "no machines to push dashboards and alert rules for",
            "pass --machines TYPE/ID,... or use --from-influx",
        )
    api = api or GrafanaApi.from_url(url, credential=token, timeout=timeout_s)
    report = PushReport()
    g = _Pusher(api, report)
    grafana = settings.grafana
    folder_uid = alerting.folder_uid(grafana)

    # folder: ours by uid, else the one with our title (file provisioning made it), else a new one
    have = g.get("read the folder", api.folder.get_folder, folder_uid)
    if have is None:
        folders = g.call("list folders", api.folder.get_all_folders) or []
        titled = [f for f in folders if f.get("title") == grafana.folder]
        if titled:
            folder_uid, have = titled[0]["uid"], titled[0]
    g.upsert(
        "folder",
        folder_uid,
        {"uid": folder_uid, "title": grafana.folder},
        have,
        lambda: api.folder.create_folder(grafana.folder, uid=folder_uid),
        lambda: api.folder.update_folder(folder_uid, title=grafana.folder, overwrite=True),
    )

    # data source (secrets are write-only in Grafana: compare the rest, send all)
    ds = datasource(settings, secrets="inline")
    ds_view = {k: v for k, v in ds.items() if k != "secureJsonData"}
    have = g.get("read the data source", api.datasource.get_datasource_by_uid, ds["uid"])
    if have is not None and any(not (have.get("secureJsonFields") or {}).get(k) for k in ds.get("secureJsonData", {})):
        have = {**have, "url": None}  # a secret Grafana does not have yet: force an update
    g.upsert(
        "datasource",
        ds["uid"],
        ds_view,
        have,
        lambda: api.datasource.create_datasource(ds),
        lambda: api.datasource.update_datasource_by_uid(ds["uid"], ds),
    )

    # dashboards
    for uid, board in all_dashboards(grafana, machines).items():
        have = g.get(f"read dashboard {uid}", api.dashboard.get_dashboard, uid)
        have_view = None
        if have is not None:
            have_view = {**have.get("dashboard", {}), "__folder": (have.get("meta") or {}).get("folderUid")}
        body = {
            "dashboard": board,
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "soundwatch dashboards push",
        }
        g.upsert(
            "dashboard",
            uid,
            {**board, "__folder": folder_uid},
            have_view,
            partial(api.dashboard.update_dashboard, body),
            partial(api.dashboard.update_dashboard, body),
        )

    # contact points: one named contact point, one integration per uid
    config = alerting.build(grafana)
    existing = g.call("list contact points", api.alertingprovisioning.get_contactpoints, alerting.CONTACT_POINT) or []
    by_uid = {cp.get("uid"): cp for cp in existing if cp.get("name") == alerting.CONTACT_POINT}
    for cp in config.contact_points:
        g.upsert(
            "contact-point",
            cp["uid"],
            cp,
            by_uid.get(cp["uid"]),
            partial(api.alertingprovisioning.create_contactpoint, cp),
            partial(api.alertingprovisioning.update_contactpoint, cp["uid"], cp),
        )
    for uid in sorted(set(by_uid) - {cp["uid"] for cp in config.contact_points}):
        if uid and str(uid).startswith("soundwatch-"):
            g.call(f"delete contact point {uid}", api.alertingprovisioning.delete_contactpoint, uid)
            report.deleted.append(f"contact-point:{uid}")

    # notification policy tree (one per organisation, shared): merge soundwatch's route in
    have = g.call("read the notification policy", api.alertingprovisioning.get_notification_policy_tree)
    tree = merge_policy_tree(have, config.route)
    g.upsert(
        "policy",
        "soundwatch-route",
        tree,
        have,
        lambda: None,
        lambda: api.alertingprovisioning.set_notification_policy_tree(tree, disable_provenance=True),
    )

    # alert rules, then each group's evaluation interval
    wanted: set[str] = set()
    for group in config.groups:
        for built in group["rules"]:
            rule = {**built, "folderUID": folder_uid}
            wanted.add(rule["uid"])
            have = g.get(f"read alert rule {rule['uid']}", api.alertingprovisioning.get_alertrule, rule["uid"])
            g.upsert(
                "alert-rule",
                rule["uid"],
                rule,
                have,
                partial(api.alertingprovisioning.create_alertrule, rule),
                partial(api.alertingprovisioning.update_alertrule, rule["uid"], rule),
            )
        current = g.call(
            f"read rule group {group['title']}",
            api.alertingprovisioning.get_rule_group,
            folder_uid,
            group["title"],
        )
        if current.get("interval") != group["interval"]:
            g.call(
                f"set the interval of rule group {group['title']}",
                api.alertingprovisioning.update_rule_group,
                folder_uid,
                group["title"],
                {**current, "interval": group["interval"]},
            )
            report.updated.append(f"rule-group:{group['title']}")
    for rule in g.call("list alert rules", api.alertingprovisioning.get_alertrules_all) or []:
        uid = rule.get("uid", "")
        labels = rule.get("labels") or {}
        ours = uid.startswith(alerting.RULE_UID_PREFIX) and labels.get(alerting.APP_KEY) == alerting.APP_LABEL["app"]
        if ours and uid not in wanted and rule.get("provenance") == "file":
            log.warning(
                "alert rule %s is soundwatch's but was provisioned from a file: delete it from the provisioning "
                "files (an old export) — the API may not delete it",
                uid,
            )
        elif ours and uid not in wanted:
            g.call(f"delete alert rule {uid}", api.alertingprovisioning.delete_alertrule, uid)
            report.deleted.append(f"alert-rule:{uid}")
    log.info(
        "grafana push: %d created, %d updated, %d deleted, %d unchanged",
        len(report.created),
        len(report.updated),
        len(report.deleted),
        len(report.unchanged),
    )
    return report
