"""`soundwatch run all` and `soundwatch demo`: the whole pipeline on one machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from deploy.bench_e2e import run_bench
from deploy.demo import DEFAULT_FAULT, DemoOptions, run_demo
from deploy.local_stack import LocalStack
from deploy.pipeline import Pipeline
from deploy.profiling import py_spy
from deploy.stages import PlantSource, pipeline_stages
from soundwatch.console import err_console
from soundwatch.errors import BadInput
from soundwatch.settings import get_settings

run_app = typer.Typer(help="Run pipeline stages as separate, supervised processes.", no_args_is_help=True)


@run_app.callback()
def _run_group() -> None:
    """Run pipeline stages as separate, supervised processes."""


SourceOpt = Annotated[str, typer.Option("--source", help="sim (simulated plant) or files (replay recordings)")]
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="files: folder of WAV/FLAC recordings (DCASE names)", exists=True, file_okay=False),
]
MachinesOpt = Annotated[str, typer.Option("--machines", help="sim: type/id list or a count")]
FaultOpt = Annotated[
    list[str] | None, typer.Option("--fault", help="sim: fault schedule, repeatable, e.g. fan/id_02:bearing_ticks@60s")
]
DurationOpt = Annotated[
    float | None, typer.Option("--duration", min=1.0, help="stop after this many seconds (default: until Ctrl-C)")
]


def _source(source: str, data: Path | None, machines: str, faults: list[str], speed: float):
    if source not in ("sim", "files"):
        raise BadInput(f"--source {source!r} is not one of: sim, files")
    if source == "files" and data is None:
        raise BadInput("--source files needs --data DIR", "e.g. --data ../shared/data/real-mini")
    return PlantSource(kind=source, machines=machines, faults=tuple(faults), data=data, speed=speed)


@run_app.command("all")
def run_all(
    source: SourceOpt = "sim",
    data: DataOpt = None,
    machines: MachinesOpt = "fan/id_00,fan/id_02,fan/id_04,pump/id_00,pump/id_02",
    fault: FaultOpt = None,
    speed: Annotated[float, typer.Option("--speed", min=0.0, help="gateway pace, x real time")] = 1.0,
    feature_workers: Annotated[int, typer.Option("--feature-workers", min=1, max=64)] = 1,
    scoring_workers: Annotated[int, typer.Option("--scoring-workers", min=1, max=64)] = 1,
    duration: DurationOpt = None,
    log_dir: Annotated[Path, typer.Option("--log-dir", help="one log file per process")] = Path("var/logs"),
) -> None:
    """Gateway, feature worker(s) and scoring worker(s) as separate processes, restarted if they die.

    Needs the services (`soundwatch services up`) and a current model per machine type (`soundwatch train`).
    Ctrl-C stops the gateway first (it flushes), then the workers.
    """
    settings = get_settings()
    if _is_local(settings):
        LocalStack(settings).require("kafka", "redis", "influxdb")
    stages = pipeline_stages(
        settings,
        _source(source, data, machines, fault or [], speed),
        log_dir=log_dir,
        feature_workers=feature_workers,
        scoring_workers=scoring_workers,
    )
    Pipeline(stages, say=lambda m: err_console.print(m)).run(duration)


def _is_local(settings) -> bool:
    return settings.kafka.bootstrap_servers.startswith(("127.0.0.1", "localhost"))


def demo(
    source: SourceOpt = "sim",
    data: DataOpt = None,
    machines: MachinesOpt = "fan/id_00,fan/id_02,fan/id_04,pump/id_00,pump/id_02",
    fault: FaultOpt = None,
    duration: DurationOpt = None,
    out: Annotated[Path, typer.Option("--out", help="report, Grafana provisioning, logs")] = Path("var/demo"),
    train_epochs: Annotated[
        int, typer.Option("--train-epochs", min=1, help="epochs per stage when a model must be trained first")
    ] = 8,
    keep_services: Annotated[
        bool, typer.Option("--keep-services", help="leave the services running at the end")
    ] = False,
) -> None:
    """The whole product on one machine: services, a model, gateway -> features -> scoring, a live view,
    and an HTML report (score timelines, alert spectrograms, dashboards) when it stops.

    The simulated plant has five machines; fan/id_02 develops bearing ticks after 60 s unless --fault says
    otherwise. `--source files --data DIR` replays recordings instead.
    """
    faults = fault if fault is not None else ([DEFAULT_FAULT] if source == "sim" else [])
    options = DemoOptions(
        source=_source(source, data, machines, faults, 1.0),
        out_dir=out,
        duration_s=duration,
        train_epochs=train_epochs,
        keep_services=keep_services,
    )
    run_demo(get_settings(), options)


def bench_e2e(
    as_json: bool = typer.Option(False, "--json", help="print only the JSON result on stdout"),
    machines: Annotated[int, typer.Option("--machines", min=1, help="simulated machines for the latency run")] = 20,
    seconds: Annotated[float, typer.Option("--seconds", min=20.0, help="length of each step")] = 60.0,
    max_machines: Annotated[int, typer.Option("--max-machines", min=1, help="stop doubling N here")] = 160,
    log_dir: Annotated[Path, typer.Option("--log-dir")] = Path("var/bench-e2e"),
    profile: Annotated[
        bool, typer.Option("--profile", help="py-spy samples of every process per step, in LOG_DIR/n<N>/profile")
    ] = False,
) -> None:
    """Latency chunk produced -> point in InfluxDB (p50/p99) with N machines, and the largest N sustained;
    per step, CPU-seconds per machine-hour and memory of each process and the consumer lag."""
    settings = get_settings()
    LocalStack(settings).require("kafka", "redis", "influxdb")
    if profile:
        py_spy()  # missing: say so now, not after the first step
    say = (lambda m: None) if as_json else (lambda m: err_console.print(m))
    result = run_bench(settings, machines, seconds, max_machines, log_dir, say=say, profile=profile)
    typer.echo(json.dumps(result))
