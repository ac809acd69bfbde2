"""The ``soundwatch`` command line: the wiring of every stage's commands (they live in the stages' ``cli`` modules).

It lives in ``deploy/`` because wiring the stages together is deployment: the core (``soundwatch/``)
imports no stage, by statement or by import string.

Errors become one message on stderr and a named exit code (:class:`soundwatch.errors.ExitCode`);
tracebacks only with ``--debug``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.markup import escape
from typer.core import TyperGroup

from deploy.local_stack import LocalStack
from soundwatch import redaction
from soundwatch.console import err_console
from soundwatch.errors import ExitCode, SoundwatchError
from soundwatch.settings import CONFIG_ENV, get_settings

# Stage commands: (module, attribute, help). Loaded on first use so that `soundwatch --help` and light
# commands do not pay for torch/faust imports. An attribute is a typer.Typer (a command group) or a function.
_STAGE_COMMANDS: dict[str, tuple[str, str, str]] = {
    "gateway": ("ingest.cli", "gateway", "Publish machine audio (microphone, files or simulator) to Kafka."),
    "features": ("features.cli", "app", "Log-mel features: the Faust stream worker and offline extraction."),
    "score": ("scoring.cli", "app", "Scoring workers: batched inference, median filter, alerts, InfluxDB."),
    "train": ("training.cli", "train", "Train a model per machine type and register it."),
    "synth": (
        "training.cli",
        "synth",
        "Write a seeded synthetic benchmark (basic, or hard-v1: quiet faults, domain shift).",
    ),
    "evaluate": ("training.cli", "evaluate", "Score test clips the way the stream does: AUC/pAUC, CSVs, plots."),
    "dashboards": ("dashboards.cli", "app", "Grafana dashboards and alerting as code: export, push, render."),
    "normal": (
        "training.service.ops_cli",
        "normal_app",
        "Confirm audio ranges as normal for retraining; list, revoke.",
    ),
    "models": ("training.service.ops_cli", "models_app", "Model versions: list, show, promote, roll back."),
    "retrain": (
        "training.service.ops_cli",
        "retrain",
        "Fine-tune on confirmed-normal audio; promote through the gate.",
    ),
    "machines": (
        "scoring.cli",
        "machines_app",
        "Machines the scoring workers know: list, forget a decommissioned one.",
    ),
    "archive": (
        "training.service.ops_cli",
        "archive_app",
        "The raw-audio archive (rolling FLAC segments) retraining reads.",
    ),
    "run": ("deploy.cli", "run_app", "Run the whole pipeline as separate, supervised processes (run all)."),
    "demo": ("deploy.cli", "demo", "The whole product on one machine: live view, then an HTML report."),
}
_BENCH_COMMANDS: dict[str, tuple[str, str, str]] = {
    "features": ("features.cli", "bench", "Log-mel speed vs librosa and a bare FFT floor; stream real-time factor."),
    "ingest": ("ingest.cli", "bench", "Chunks/s one gateway sustains to the broker; machines it can carry."),
    "scoring": ("deploy.bench_scoring", "bench", "Windows/s one scoring worker sustains; batched vs one at a time."),
    "e2e": ("deploy.cli", "bench_e2e", "Chunk -> InfluxDB point latency with N machines; machines sustained."),
    "faults": ("deploy.bench_faults", "bench_faults", "Fault injection on a private stack: lost windows per scenario."),
    "methods": ("training.cli", "bench_methods", "Every training method on the same data: AUC, pAUC, cost, compared."),
    "quality": (
        "training.cli",
        "bench_quality",
        "Baselines and every method on one DCASE folder: AUC, pAUC, official score.",
    ),
}


def _lazy_group(table: dict[str, tuple[str, str, str]]) -> type[TyperGroup]:
    class LazyGroup(TyperGroup):
        _listing = False

        def list_commands(self, ctx: click.Context) -> list[str]:
            return [*super().list_commands(ctx), *table]

        def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
            if name not in table:
                return super().get_command(ctx, name)
            module_name, attribute, help_text = table[name]
            if self._listing:  # rendering --help: do not import the stage
                return click.Command(name, help=help_text, short_help=help_text)
            target = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(target, typer.Typer):
                single = typer.Typer(add_completion=False)
                single.command(name)(target)
                target = single
            command = typer.main.get_command(target)
            command.name = name
            if command.help is None:
                command.help = help_text
            return command

        def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            self._listing = True
            try:
                super().format_help(ctx, formatter)
            finally:
                self._listing = False

    return LazyGroup


app = typer.Typer(
    cls=_lazy_group(_STAGE_COMMANDS),
    name="soundwatch",
    help="Continuous acoustic anomaly monitoring for plant machines.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
services_app = typer.Typer(
    help="Start, stop and check the local Kafka broker, Redis and InfluxDB.", no_args_is_help=True
)
bench_app = typer.Typer(
    cls=_lazy_group(_BENCH_COMMANDS),
    no_args_is_help=True,
    help="Benchmarks that print one JSON object (compared with a reference in the same run).",
)
app.add_typer(config_app, name="config")
app.add_typer(services_app, name="services")
app.add_typer(bench_app, name="bench")

_state = {"debug": False}


@app.callback()
def _root(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML settings file", exists=True, dir_okay=False)
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and debug logs")] = False,
) -> None:
    if config is not None:
        os.environ[CONFIG_ENV] = str(config)
        get_settings.cache_clear()
    _state["debug"] = debug
    level = logging.DEBUG if debug else _configured_log_level()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)  # also when logging was set up before (basicConfig then does nothing)
    redaction.install()  # credentials never reach a log line, whoever logs and however handlers change
    for noisy in ("kafka", "aiokafka", "faust", "mode", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.ERROR)


def _configured_log_level() -> int:
    """``log_level`` of the effective settings (TOML file or environment); INFO while they do not load
    (the command itself then reports the settings error)."""
    try:
        return int(getattr(logging, get_settings().log_level))
    except SoundwatchError:
        return logging.INFO


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of TOML")] = False,
) -> None:
    """Print the effective settings (defaults, TOML file, SOUNDWATCH_* environment), secrets masked.

    The TOML output is a valid settings file: unset settings appear as comments.
    """
    data = get_settings().masked()
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    typer.echo("\n".join(toml_lines(data)))


def toml_lines(data: dict, prefix: str = "") -> list[str]:
    """``data`` (plain values, nested dicts) as TOML; ``None`` (unset) becomes a ``# key =`` comment."""
    out: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if scalars or not prefix:
        if prefix:
            out.append(f"[{prefix}]")
        for key, value in scalars.items():
            out.append(f"# {key} =  (unset)" if value is None else f"{key} = {_toml_value(value)}")
        out.append("")
    for key, value in data.items():
        if isinstance(value, dict):
            out += toml_lines(value, f"{prefix}.{key}" if prefix else key)
    return out


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and value != value:
            return "nan"
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


ServiceNames = Annotated[list[str] | None, typer.Argument(help="kafka, redis, influxdb (default: all)")]


@services_app.command("up")
def services_up(names: ServiceNames = None) -> None:
    """Start the services that are not running yet (idempotent) and create topics and the database."""
    LocalStack(get_settings()).up(names, progress=lambda m: err_console.print(m))
    err_console.print("[green]local stack is up[/green]")


@services_app.command("down")
def services_down(names: ServiceNames = None) -> None:
    """Stop the services this project started."""
    LocalStack(get_settings()).down(names, progress=lambda m: err_console.print(m))


@services_app.command("status")
def services_status(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Say for each service whether it answers and, if not, what to run. Exit 4 if any is down."""
    statuses = LocalStack(get_settings()).status()
    if as_json:
        typer.echo(json.dumps([s.__dict__ for s in statuses], indent=2))
    else:
        for s in statuses:
            mark = "[green]up[/green]  " if s.answering else "[red]down[/red]"
            pid = f" pid {s.pid}" if s.pid else ""
            err_console.print(f"{mark} {s.name:<9} {s.address:<16}{pid}  {s.detail}")
            if s.hint:
                err_console.print(f"     -> {s.hint}")
    if not all(s.answering for s in statuses):
        raise typer.Exit(int(ExitCode.SERVICE_UNAVAILABLE))


# typer >= 0.2x bundles its own copy of click: its usage errors are not click.ClickException
_CLICK_ERRORS: tuple[type[Exception], ...] = (
    click.ClickException,
    *((typer.TyperException,) if hasattr(typer, "TyperException") else ()),
)


def _traceback_if_debug() -> None:
    """With ``--debug``, the traceback of the exception being handled, on stderr; never a different exit code."""
    if _state["debug"]:
        traceback.print_exc(file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and turn errors into messages and exit codes.

    The exit code depends only on the error (:class:`ExitCode`); ``--debug`` adds the traceback.
    """
    _state["debug"] = False
    try:
        # standalone_mode=False: click returns the exit code of ctx.exit()/typer.Exit and raises its errors here
        result = app(args=argv, prog_name="soundwatch", standalone_mode=False)
        if isinstance(result, int) and result:
            sys.exit(result)
    except SoundwatchError as exc:
        _traceback_if_debug()
        err_console.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        if exc.hint:
            err_console.print(f"  [yellow]hint:[/yellow] {escape(exc.hint)}", highlight=False)
        sys.exit(int(exc.exit_code))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, click.Abort):
        err_console.print("aborted")
        sys.exit(int(ExitCode.INTERRUPTED))
    except KeyboardInterrupt:
        sys.exit(int(ExitCode.INTERRUPTED))
    except _CLICK_ERRORS as exc:  # a bad command, option or value: usage, "Try '... --help'", exit 2
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {escape(str(exc))}", highlight=False)
        sys.exit(int(ExitCode.USAGE))
    except Exception as exc:  # an unexpected bug
        _traceback_if_debug()
        err_console.print(f"[red]unexpected error:[/red] {type(exc).__name__}: {escape(str(exc))}", highlight=False)
        if not _state["debug"]:
            err_console.print("  rerun with --debug for the traceback, and report it if it persists")
        else:
            err_console.print("  please report it with the traceback above")
        sys.exit(int(ExitCode.ERROR))


if __name__ == "__main__":
    main()
