"""Merge soundwatch's one notification route into an organisation's policy tree — a pure function.

Grafana has exactly one notification policy tree per organisation, shared by every team; writing
it (provisioning API or a provisioned ``policies.yaml``) replaces all of it. So soundwatch never
builds a tree: it reads the current one, puts its single child route in, and writes the result.

Rules of :func:`merge_policy_tree`:

* the root (receiver, grouping, timings, mute/active time intervals) and every foreign route are
  kept exactly as they are, in order;
* soundwatch's route is the top-level route whose matchers equal those of ``ours``
  (``app=soundwatch``); it is replaced in place (an operator may have moved it), or, the first time,
  inserted first so no broader foreign route catches soundwatch's alerts before it;
* merging twice gives the same tree (idempotent), so ``push`` writes nothing when nothing changed.

:func:`tree_from_export` reads Grafana's export format (``apiVersion`` + ``policies`` list, as the
UI's "Export" and ``GET /api/v1/provisioning/policies/export`` produce) so the merge also works on
a tree saved to a file.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import yaml

from soundwatch.errors import BadInput

Json = dict[str, Any]

# What a Grafana without any policy configuration has (Grafana's built-in default root).
DEFAULT_ROOT: Json = {"receiver": "grafana-default-email", "group_by": ["grafana_folder", "alertname"]}
# Keys the API adds to what it returns; not part of the tree one writes back.
_SERVER_KEYS = ("provenance",)
_LEGACY_MATCHER = re.compile(r'^\s*([^=!~\s]+)\s*(=~|!~|!=|=)\s*"?(.*?)"?\s*$')

Matcher = tuple[str, str, str]


def matchers(route: Mapping[str, Any]) -> frozenset[Matcher]:
    """A route's label matchers as a set, from ``object_matchers`` and the legacy ``matchers`` strings."""
    out = {(str(m[0]), str(m[1]), str(m[2])) for m in route.get("object_matchers") or []}
    for text in route.get("matchers") or []:
        match = _LEGACY_MATCHER.match(str(text))
        if match is None:
            raise BadInput(f"notification policy matcher {text!r} is not like label=value", "fix it in Grafana")
        out.add((match.group(1), match.group(2), match.group(3)))
    return frozenset(out)


def merge_policy_tree(existing: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> Json:
    """The organisation's tree ``existing`` with soundwatch's child route ``ours`` put in (see module doc).

    ``existing`` is in API shape (a route with ``receiver``, ``routes``, ...); None or empty means
    Grafana's default root. Neither argument is modified.
    """
    key = matchers(ours)
    if not key:
        raise ValueError("soundwatch's route must have matchers, or it would catch every alert of the organisation")
    tree = copy.deepcopy(dict(existing)) if existing else copy.deepcopy(DEFAULT_ROOT)
    for server_key in _SERVER_KEYS:
        tree.pop(server_key, None)
    if not tree.get("receiver"):
        raise BadInput(
            "the existing notification policy tree has no root receiver",
            "pass the tree exactly as Grafana exports it (Alerting > Notification policies > Export)",
        )
    routes: list[Json] = list(tree.get("routes") or [])
    mine = [i for i, route in enumerate(routes) if matchers(route) == key]
    if mine:
        routes[mine[0]] = copy.deepcopy(dict(ours))
        routes = [r for i, r in enumerate(routes) if i not in mine[1:]]  # a duplicate of ours left by hand
    else:
        routes.insert(0, copy.deepcopy(dict(ours)))
    tree["routes"] = routes
    return tree


class _ExportLoader(yaml.SafeLoader):
    """YAML as Grafana (Go) writes it: a bare ``=`` (a matcher's operator) is the string "=".

    PyYAML follows YAML 1.1, where a bare ``=`` is the obscure ``!!value`` tag and fails to load.
    """


_ExportLoader.add_constructor("tag:yaml.org,2002:value", yaml.SafeLoader.construct_yaml_str)


def load_policy_file(text: str) -> Json:
    """The policy tree in a file Grafana exported (YAML or JSON, export format or a bare tree)."""
    try:
        doc = yaml.load(text, Loader=_ExportLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise BadInput(f"the notification policy file is not YAML/JSON: {exc}", "pass Grafana's exported file") from exc
    if not isinstance(doc, dict):
        raise BadInput("the notification policy file holds no tree", "pass the file Grafana exported")
    return tree_from_export(doc)


def tree_from_export(doc: Mapping[str, Any], org_id: int = 1) -> Json:
    """The policy tree of ``org_id`` from Grafana's export format, or ``doc`` itself if it is a bare tree."""
    if "policies" not in doc:
        if "receiver" in doc:
            return dict(doc)
        raise BadInput(
            "the notification policy file has neither 'policies' (Grafana's export format) nor a root 'receiver'",
            "export it from Grafana: Alerting > Notification policies > Export, or "
            "GET /api/v1/provisioning/policies/export",
        )
    trees = [p for p in doc["policies"] or [] if int(p.get("orgId", 1)) == org_id]
    if len(trees) != 1:
        raise BadInput(f"the notification policy file has {len(trees)} trees for org {org_id}, expected 1")
    return {k: v for k, v in trees[0].items() if k != "orgId"}
