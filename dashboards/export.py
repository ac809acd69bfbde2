"""Write Grafana file provisioning for soundwatch: what deploy/ mounts at ``/etc/grafana/provisioning``.

Layout under ``out_dir``::

    datasources/soundwatch.yaml          InfluxDB (InfluxQL) data source, uid settings.grafana.datasource_uid
    dashboards/soundwatch.yaml           dashboard provider (folder settings.grafana.folder)
    dashboards/soundwatch/*.json         fleet, machine, pipeline dashboards
    alerting/rules.yaml                  two rule groups, three multi-dimensional rules for any fleet
    alerting/contact-points.yaml         only when a webhook or e-mail is configured
    alerting/policies.yaml               only with ``policy_tree``: the organisation's tree + soundwatch's route

One folder: Grafana's file provisioning names a rule group's folder by title only and provisions
alerting before dashboards (creating the folder with a random uid), so the dashboard provider names
the same folder by title too, and finds that folder instead of creating a second one.

Secrets are written as ``$SOUNDWATCH_INFLUX__...`` references that Grafana expands from its own
environment. Output is deterministic (sorted keys), so re-exporting unchanged input changes no file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dashboards import alerting
from dashboards.builder import all_dashboards
from dashboards.datasource import datasource
from dashboards.machines import Machine, check_machines
from soundwatch.errors import BadInput
from soundwatch.settings import Settings

DEFAULT_PROVISIONING_ROOT = "/etc/grafana/provisioning"


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    written.append(path)


def _yaml(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


def export(
    settings: Settings,
    out_dir: Path,
    machines: Sequence[Machine],
    *,
    provisioning_root: str = DEFAULT_PROVISIONING_ROOT,
    policy_tree: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the provisioning tree for ``machines`` into ``out_dir``; return the files written.

    ``provisioning_root`` is where Grafana will see ``out_dir`` (the dashboard provider needs the
    absolute path of the JSON files inside the Grafana container). ``policy_tree`` is the
    organisation's current notification policy tree (API shape); soundwatch's route is merged into
    it. Without it no ``policies.yaml`` is written: a provisioned one would replace the whole tree.
    """
    machines = check_machines(machines)
    if not machines:
        raise BadInput(
            "no machines to build dashboards and alert rules for",
            "train a model first (registry), pass --machines TYPE/ID,... or use --from-influx",
        )
    grafana = settings.grafana
    out_dir = Path(out_dir)
    written: list[Path] = []

    _write(
        out_dir / "datasources" / "soundwatch.yaml",
        _yaml({"apiVersion": 1, "datasources": [datasource(settings, secrets="env")]}),
        written,
    )

    provider = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "soundwatch",
                "orgId": 1,
                "folder": grafana.folder,  # by title, like the rule groups (see module doc)
                "type": "file",
                "disableDeletion": False,
                "allowUiUpdates": False,
                "updateIntervalSeconds": 30,
                "options": {
                    "path": f"{provisioning_root.rstrip('/')}/dashboards/soundwatch",
                    "foldersFromFilesStructure": False,
                },
            }
        ],
    }
    _write(out_dir / "dashboards" / "soundwatch.yaml", _yaml(provider), written)
    for uid, board in all_dashboards(grafana, machines).items():
        _write(
            out_dir / "dashboards" / "soundwatch" / f"{uid}.json",
            json.dumps(board, indent=2, sort_keys=True) + "\n",
            written,
        )

    config = alerting.build(grafana)
    files = alerting.file_provisioning(grafana, config, policy_tree)
    for optional in ("contact-points.yaml", "policies.yaml"):
        stale = out_dir / "alerting" / optional
        if optional not in files and stale.exists():
            stale.unlink()  # an earlier export's file must not linger in the mounted tree
    for name, doc in files.items():
        _write(out_dir / "alerting" / name, _yaml(doc), written)
    return written
