"""``soundwatch features ...``: run the stream worker, extract features offline, benchmark."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Log-mel features: the Faust stream worker and offline extraction.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
log = logging.getLogger(__name__)


@app.callback()
def _features() -> None:
    """Log-mel features: the Faust stream worker and offline extraction."""


@app.command("run")
def run(
    web_port: Annotated[int | None, typer.Option("--web-port", help="worker web server port on 127.0.0.1; 0 disables "
                                                 "it (default: stream.workers_web_port)")] = None,  # fmt: skip
) -> None:
    """Start one Faust worker (audio.raw -> features.logmel). Stop with Ctrl-C or SIGTERM."""
    from features.app import run_worker
    from soundwatch.settings import get_settings

    settings = get_settings()
    run_worker(settings, web_port=web_port, loglevel=logging.getLevelName(logging.getLogger().level).lower())


if __name__ == "__main__":
    app()
