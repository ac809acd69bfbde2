"""``soundwatch dashboards``: export Grafana provisioning, push to Grafana, render PNGs.

Machines come from ``--machines TYPE/ID,...``, else ``--from-influx`` (machines that wrote
scores), else the model registry (``settings.registry_root``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from dashboards.export import export
from dashboards.machines import Machine, machines_from_influx, machines_from_registry, parse_machines
from dashboards.policy import load_policy_file
from dashboards.push import push
from dashboards.render import render
from soundwatch.console import err_console
from soundwatch.errors import BadInput
from soundwatch.settings import Settings, get_settings

app = typer.Typer(help="Grafana dashboards and alerting as code: export, push, render.", no_args_is_help=True)

MachinesOpt = Annotated[
    str | None,
    typer.Option("--machines", "-m", help="machines as TYPE/ID, comma separated (default: the model registry)"),
]
FromInflux = Annotated[
    bool, typer.Option("--from-influx", help="use the machines that have written scores to InfluxDB")
]


def resolve_machines(settings: Settings, machines: str | None, from_influx: bool) -> list[Machine]:
    """The machine list for a command, from the first source the user chose (see module doc)."""
    if machines:
        return parse_machines(machines)
    found = machines_from_influx(settings.influx) if from_influx else machines_from_registry(settings.registry_root)
    if not found:
        where = (
            f"InfluxDB database {settings.influx.database!r}" if from_influx else f"registry {settings.registry_root}"
        )
        raise BadInput(f"no machines found in the {where}", "pass --machines TYPE/ID,... explicitly")
    return found


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="directory for the provisioning tree")],
    machines: MachinesOpt = None,
    from_influx: FromInflux = False,
    provisioning_root: Annotated[
        str, typer.Option(help="where Grafana sees --out (for the dashboard provider)")
    ] = "/etc/grafana/provisioning",
    policy_tree: Annotated[
        Path | None,
        typer.Option(
            "--policy-tree",
            help="the organisation's notification policy tree as Grafana exports it (YAML/JSON): writes "
            "alerting/policies.yaml = that tree + soundwatch's route (without it: no policy file)",
        ),
    ] = None,
) -> None:
    """Write Grafana file provisioning (data source, dashboards, alert rules, contact point, merged policy)."""
    settings = get_settings()
    found = resolve_machines(settings, machines, from_influx)
    tree = None
    if policy_tree is not None:
        try:
            text = policy_tree.read_text()
        except OSError as exc:
            raise BadInput(f"cannot read the policy tree {policy_tree}: {exc}", "check the path") from exc
        tree = load_policy_file(text)
    if not settings.grafana.webhook_url and not settings.grafana.email_addresses:
        err_console.print(
            "[yellow]warning:[/yellow] no SOUNDWATCH_GRAFANA__WEBHOOK_URL or __EMAIL_ADDRESSES set: "
            "alerts route to Grafana's default contact point"
        )
    if tree is None:
        err_console.print(
            "[yellow]note:[/yellow] no --policy-tree: no policies.yaml written (it would replace every team's "
            "routes); soundwatch alerts follow the organisation's root policy until `dashboards push` or an "
            "export with --policy-tree merges soundwatch's route"
        )
    paths = export(settings, out, found, provisioning_root=provisioning_root, policy_tree=tree)
    err_console.print(f"wrote {len(paths)} files for {len(found)} machines under {out}")
    typer.echo(json.dumps({"files": [str(p) for p in paths], "machines": [m.key for m in found]}, indent=2))


@app.command("push")
def push_cmd(
    url: Annotated[str | None, typer.Option("--url", help="Grafana base URL (default settings.grafana.url)")] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="service-account token (default settings.grafana.token)", envvar="GRAFANA_TOKEN"),
    ] = None,
    machines: MachinesOpt = None,
    from_influx: FromInflux = False,
) -> None:
    """Upsert everything into a running Grafana over its HTTP API; a second push changes nothing."""
    settings = get_settings()
    found = resolve_machines(settings, machines, from_influx)
    secret = token or (settings.grafana.token.get_secret_value() if settings.grafana.token else None)
    report = push(url or settings.grafana.url, secret, settings, found)
    err_console.print(
        f"created {len(report.created)}, updated {len(report.updated)}, deleted {len(report.deleted)}, "
        f"unchanged {len(report.unchanged)}"
    )
    typer.echo(json.dumps(report.__dict__, indent=2))


@app.command("render")
def render_cmd(
    out: Annotated[Path, typer.Option("--out", help="directory for the PNG files")],
    machines: MachinesOpt = None,
    from_influx: FromInflux = False,
    minutes: Annotated[float, typer.Option(help="time range: the last N minutes")] = 60.0,
    machine: Annotated[
        list[str] | None,
        typer.Option("--machine", help="drill-down PNG only for TYPE/ID (repeatable; default: every machine)"),
    ] = None,
) -> None:
    """Draw the fleet and machine dashboards' data (same InfluxQL as Grafana) into PNG files."""
    settings = get_settings()
    found = resolve_machines(settings, machines, from_influx)
    end_ms = int(time.time() * 1000)
    drill = parse_machines(",".join(machine)) if machine else None
    paths = render(settings, out, found, start_ms=end_ms - int(minutes * 60_000), end_ms=end_ms, drill_down=drill)
    err_console.print(f"wrote {len(paths)} PNG files under {out}")
    typer.echo(json.dumps([str(p) for p in paths], indent=2))
