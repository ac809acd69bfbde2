"""``soundwatch score run``: the scoring worker (``soundwatch bench scoring`` lives in :mod:`deploy.bench_scoring`).

``python -m scoring.cli run`` runs the worker without the root CLI.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from soundwatch.choices import Device
from soundwatch.console import err_console
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


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("kafka", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    app()
