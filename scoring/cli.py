"""``soundwatch score run``: the scoring worker (``soundwatch bench scoring`` lives in :mod:`deploy.bench_scoring`).

``python -m scoring.cli run`` runs the worker without the root CLI.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from scoring.status import KnownMachines
from soundwatch.choices import Device
from soundwatch.console import err_console
from soundwatch.errors import BadInput, ServiceUnavailable
from soundwatch.settings import Settings, get_settings

app = typer.Typer(
    help="Score feature windows: batched inference, median filter, alerts, InfluxDB.", no_args_is_help=True
)

log = logging.getLogger(__name__)


THREADS_HELP = (
    "torch CPU threads per worker (0 = torch's default). 1 by default: on a shared or busy host, "
    "intra-op threads wait on each other (the bench measured ~4x more windows/s with 1 than with 2 "
    "on a loaded 2-core machine); scale out with more workers instead"
)


def set_threads(threads: int) -> None:
    if threads > 0:
        import torch  # deferred: loads torch

        torch.set_num_threads(threads)


@app.callback()
def _group() -> None:
    """Keeps ``run`` a sub-command even though it is the only one (``score run``, not ``score``)."""


def _with_overrides(settings: Settings, registry: Path | None, **scoring: Any) -> Settings:
    update = {k: v for k, v in scoring.items() if v is not None}
    changes: dict[str, Any] = {}
    if update:
        changes["scoring"] = settings.scoring.model_copy(update=update)
    if registry is not None:
        changes["registry_root"] = registry
    return settings.model_copy(update=changes) if changes else settings


@app.command("run")
def run(
    registry: Annotated[
        Path | None, typer.Option("--registry", help="model registry root (default: settings registry_root)")
    ] = None,
    device: Annotated[Device | None, typer.Option("--device", help="where the model runs")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", min=1, help="windows per forward pass")] = None,
    max_wait_ms: Annotated[
        int | None, typer.Option("--max-wait-ms", min=0, help="longest a window waits for its batch")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", min=0, max=65535, help="Prometheus port (0 = any free port)")
    ] = None,
    threads: Annotated[int, typer.Option("--threads", min=0, help=THREADS_HELP)] = 1,
) -> None:
    """Run a scoring worker in the consumer group until SIGINT/SIGTERM (then flush and commit)."""
    set_threads(threads)
    settings = _with_overrides(
        get_settings(),
        registry,
        device=None if device is None else Device(device).value,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        metrics_port=metrics_port,
    )
    from scoring.worker import ScoringWorker  # deferred: loads kafka, torch

    worker = ScoringWorker(settings)

    def _stop(signum: int, _frame: object) -> None:
        err_console.print(f"{signal.Signals(signum).name}: stopping after the current batch (flush + commit)")
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.run(
        on_started=lambda w: err_console.print(
            f"scoring worker {w.worker_id}: {settings.kafka.topics.features} -> InfluxDB {settings.influx.url}, "
            f"device {w.device}, metrics on {settings.scoring.metrics_host}:{w.metrics.port}"
        )
    )


machines_app = typer.Typer(
    help="Machines the scoring workers know (staleness signal): list them, forget a decommissioned one.",
    no_args_is_help=True,
)


def _known(settings: Settings) -> KnownMachines:
    """The scoring group's known machines, read from Redis."""
    import redis  # deferred: loads redis only for the machines commands

    client = redis.Redis.from_url(
        settings.redis.url, socket_timeout=5.0, socket_connect_timeout=5.0, **settings.redis.client_kwargs()
    )
    known = KnownMachines(client, settings.redis.key_prefix, settings.scoring.group_id)
    if not known.refresh():
        raise ServiceUnavailable(
            f"cannot read the known machines from Redis at {settings.redis.url}",
            "start Redis (`soundwatch services up redis`) or fix SOUNDWATCH_REDIS__URL",
        )
    return known


@machines_app.command("list")
def machines_list(as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False) -> None:
    """Every machine the scoring group knows, with the seconds since its last scored audio."""
    known = _known(get_settings())
    now_ns = time.time_ns()
    rows = {m: round((now_ns - seen.received_ns) / 1e9, 1) for m, seen in known.machines().items()}
    if as_json:
        typer.echo(json.dumps({"seconds_since_audio": rows}))
        return
    for machine, since in rows.items():
        typer.echo(f"{machine:<40} {since:>12.1f} s since audio")


@machines_app.command("forget")
def machines_forget(
    machine_type: Annotated[str, typer.Argument(help="e.g. fan")],
    machine_id: Annotated[str, typer.Argument(help="e.g. id_00")],
) -> None:
    """Drop a decommissioned machine: no more status points (STALE), its alert state cleared.

    Machines silent for scoring.forget_after_s are dropped anyway; a machine that sends audio again is
    known again.
    """
    settings = get_settings()
    machine = f"{machine_type}/{machine_id}"
    known = _known(settings)
    try:
        existed = known.forget(machine, time.time_ns())
    except Exception as exc:  # the redis client's connection errors
        raise ServiceUnavailable(f"cannot forget {machine} in Redis: {exc}", "check that Redis is running") from exc
    if not existed:
        raise BadInput(
            f"the scoring group {settings.scoring.group_id} does not know machine {machine}",
            "`soundwatch machines list` shows the known machines",
        )
    err_console.print(f"forgot {machine}: the workers stop reporting it at their next status interval")


if __name__ == "__main__":
    import sys

    logging.basicConfig(
        level=get_settings().log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()
