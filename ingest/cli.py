"""Command-line entry points of the ingest stage.

The root CLI registers :func:`gateway` as ``soundwatch gateway`` and :func:`bench` as
``soundwatch bench ingest``. :data:`app` holds both for running this module alone
(``python -m ingest.cli gateway ...``) and for CliRunner tests.
"""

from __future__ import annotations

import json
import logging
import threading
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from ingest.bench import run_bench
from ingest.gateway import StatusLine, install_signal_handlers, run_gateway
from ingest.health import GatewayHealth
from ingest.sources.files import FileReplaySource
from ingest.sources.mic import MicSource
from ingest.sources.simulator import SimulatorSource, parse_fault_command, parse_machines
from soundwatch.console import err_console
from soundwatch.errors import BadInput
from soundwatch.settings import IngestSettings, get_settings

log = logging.getLogger(__name__)


class SourceKind(StrEnum):
    mic = "mic"
    files = "files"
    sim = "sim"


def gateway(
    source: Annotated[SourceKind, typer.Option("--source", help="where audio comes from")] = SourceKind.sim,
    path: Annotated[
        Path | None,
        typer.Option("--path", help="files: a WAV/FLAC file or a folder (DCASE names give machine type/id)"),
    ] = None,
    loop: Annotated[bool, typer.Option("--loop", help="files: start over at the end")] = False,
    speed: Annotated[
        float,
        typer.Option(
            "--speed",
            min=0.0,
            help="files/sim: x real time; 0 = as fast as possible (pauses instead of dropping when the broker lags)",
        ),
    ] = 1.0,
    machine_type: Annotated[
        str | None,
        typer.Option("--machine-type", help="files/mic: machine type (files: overrides the folder name)"),
    ] = None,
    machine_id: Annotated[
        str | None,
        typer.Option("--machine-id", help="files/mic: machine id (files: overrides id_XX from the name)"),
    ] = None,
    machines: Annotated[
        str, typer.Option("--machines", help="sim: a count or type/id list, e.g. fan/id_00,pump/id_02")
    ] = "4",
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="sim: fault schedule, repeatable: type/id:fault[=severity]@SECONDSs, e.g. fan/id_00:bearing_ticks@60s",
        ),
    ] = None,
    control_file: Annotated[
        Path | None,
        typer.Option("--control-file", help="sim: follow this file for fault commands (echo 'fan/id_00:rub' >> FILE)"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="sim: signature seed")] = 0,
    loop_seconds: Annotated[
        float | None,
        typer.Option(
            "--loop-seconds",
            help="sim: render each machine's first N seconds once and repeat them (capacity benchmarks; no faults)",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="mic: device index or part of its name")] = None,
    channel: Annotated[int, typer.Option("--channel", min=0, help="mic: input channel to use")] = 0,
    duration: Annotated[float | None, typer.Option("--duration", min=0.0, help="stop after this many seconds")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="default: settings kafka.topics.audio_raw")] = None,
    gateway_id: Annotated[str | None, typer.Option("--gateway-id", help="default: settings ingest.gateway_id")] = None,
    no_idempotence: Annotated[
        bool,
        typer.Option(
            "--no-idempotence",
            help="for brokers that refuse idempotent producers (then 1 request in flight keeps order)",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the final report as JSON on stdout")] = False,
    health: Annotated[
        bool, typer.Option("--health/--no-health", help="write the gateway's health to InfluxDB every 10 s")
    ] = True,
) -> None:
    """Stream audio (microphone, files or the simulator) to Kafka; spool to disk while the broker is away.

    Shows a live status line on stderr. SIGINT/SIGTERM stop it gracefully: the backlog is
    flushed for up to 10 s and what remains stays in the spool for the next start.
    """
    settings = get_settings()
    sr = settings.features.sample_rate
    chunk = int(round(settings.ingest.chunk_seconds * sr))
    src = _make_source(
        source,
        sr,
        chunk,
        path=path,
        loop=loop,
        speed=speed,
        machine_type=machine_type,
        machine_id=machine_id,
        machines=machines,
        faults=fault or [],
        control_file=control_file,
        seed=seed,
        loop_s=loop_seconds,
        device=device,
        channel=channel,
    )
    err_console.print(
        f"gateway {gateway_id or settings.ingest.gateway_id}: {src.describe()} -> "
        f"{settings.kafka.bootstrap_servers} topic {topic or settings.kafka.topics.audio_raw}",
        highlight=False,
        markup=False,  # paths and ids may hold [brackets]
    )
    stop = threading.Event()
    restore = install_signal_handlers(stop)
    try:
        report = run_gateway(
            settings,
            src,
            topic=topic,
            gateway_id=gateway_id,
            duration_s=duration,
            stop=stop,
            idempotent=not no_idempotence,
            backpressure=source != SourceKind.mic and speed == 0,
            status=StatusLine(),
            health=GatewayHealth(settings, gateway_id or settings.ingest.gateway_id) if health else None,
        )
    finally:
        restore()
    err_console.print(
        f"sent {report.chunks_sent} of {report.chunks_in} chunks in {report.elapsed_s:.1f} s; "
        f"{report.undelivered_chunks} wait in the spool; outages: {report.outages}",
        highlight=False,
        markup=False,  # paths and ids may hold [brackets]
    )
    if report.dropped_chunks:
        err_console.print(
            f"SPOOL LIMIT HIT: dropped {report.dropped_chunks} chunks "
            f"({report.dropped_bytes / 1e6:.1f} MB): {report.dropped_by_machine}",
            style="bold red",
            highlight=False,
            markup=False,
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict()))


def _make_source(
    kind: SourceKind,
    sr: int,
    chunk: int,
    *,
    path: Path | None,
    loop: bool,
    speed: float,
    machine_type: str | None,
    machine_id: str | None,
    machines: str,
    faults: list[str],
    control_file: Path | None,
    seed: int,
    loop_s: float | None,
    device: str | None,
    channel: int,
):
    if kind is SourceKind.files:
        if path is None:
            raise BadInput("--source files needs --path", "pass a WAV/FLAC file or a folder, e.g. --path data/fan")
        return FileReplaySource(
            path, sr, chunk, loop=loop, speed=speed, machine_type=machine_type, machine_id=machine_id
        )
    if kind is SourceKind.sim:
        return SimulatorSource(
            parse_machines(machines),
            sr,
            chunk,
            schedule=[parse_fault_command(f) for f in faults],
            control_file=control_file,
            speed=speed,
            seed=seed,
            loop_s=loop_s,
        )
    if not machine_type or not machine_id:
        raise BadInput(
            "--source mic needs --machine-type and --machine-id",
            "name the machine this microphone listens to, e.g. --machine-type fan --machine-id id_00",
        )
    return MicSource(machine_type, machine_id, sr, chunk, device=device, channel=channel)


def bench(
    as_json: bool = typer.Option(False, "--json", help="print only the JSON result on stdout"),
    seconds: Annotated[float, typer.Option("--seconds", min=1.0, help="how long to send")] = 10.0,
    machines: Annotated[int, typer.Option("--machines", min=1, help="distinct machine keys")] = 1000,
    reference: Annotated[
        bool, typer.Option("--reference/--no-reference", help="also time a bare producer in the same run")
    ] = True,
    compression: Annotated[
        str | None,
        typer.Option("--compression", help="override ingest.compression for this run: none, gzip, snappy, lz4, zstd"),
    ] = None,
) -> None:
    """Measure chunks/s and MB/s one gateway process delivers, and how many real-time machines that is."""
    settings = get_settings()
    if compression is not None:
        settings = _with_compression(settings, compression)
    if not as_json:
        err_console.print(
            f"benchmarking one gateway against {settings.kafka.bootstrap_servers} for {seconds:g} s ...", markup=False
        )
    result = run_bench(settings, seconds=seconds, machines=machines, reference=reference)
    typer.echo(json.dumps(result))
    if not as_json:
        verdict = "meets" if result["machines_realtime"] >= 500 else "MISSES"
        err_console.print(
            f"one gateway carries {result['machines_realtime']:.0f} real-time 16 kHz machines "
            f"({verdict} the 500 target)",
            highlight=False,
            markup=False,
        )


def _with_compression(settings, compression: str):
    try:
        ingest = IngestSettings(**{**settings.ingest.model_dump(), "compression": compression})
    except ValidationError as exc:
        raise BadInput(
            f"--compression {compression!r} is not one of none, gzip, snappy, lz4, zstd",
            "pick one of those (snappy/lz4/zstd need their Python packages)",
        ) from exc
    return settings.model_copy(update={"ingest": ingest})


app = typer.Typer(help="Ingest: gateways and their benchmark.", no_args_is_help=True, add_completion=False)
app.command("gateway")(gateway)
app.command("bench")(bench)

if __name__ == "__main__":
    app()
