"""``soundwatch features ...``: run the stream worker, extract features offline; ``bench`` for the lead's
``soundwatch bench features``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from soundwatch.audio.audio_io import read_audio
from soundwatch.console import err_console
from soundwatch.errors import BadInput, SoundwatchError
from soundwatch.params import FeatureParams
from soundwatch.settings import get_settings

app = typer.Typer(
    help="Log-mel features: the Faust stream worker and offline extraction.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg"}


@app.callback()
def _features() -> None:
    """Log-mel features: the Faust stream worker and offline extraction."""


@app.command("run")
def run(
    web_port: Annotated[
        int | None,
        typer.Option(
            "--web-port", help="worker web server port on 127.0.0.1; 0 disables it (default: stream.workers_web_port)"
        ),
    ] = None,
) -> None:
    """Start one Faust worker (audio.raw -> features.logmel). Stop with Ctrl-C or SIGTERM.

    Start more workers with the same settings to split the partitions (each needs its own
    --web-port, or 0).
    """
    from features.app import run_worker  # deferred: loads numba, scipy

    settings = get_settings()
    root = logging.getLogger()
    if not root.handlers:  # run as `python -m features.cli`: the soundwatch CLI did not set logging up
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        for noisy in ("kafka", "aiokafka", "faust", "mode"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python's selector warns about slow tasks whenever the CPU is busy (it is: computing features)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    run_worker(settings, web_port=web_port, loglevel=logging.getLevelName(root.level).lower())


def audio_files(source: Path) -> list[Path]:
    """``source`` itself if it is a file, else the audio files under it (sorted, recursive)."""
    if source.is_file():
        return [source]
    if source.is_dir():
        return sorted(f for f in source.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES and f.is_file())
    raise BadInput(f"{source}: no such file or directory", "give an audio file or a folder of WAV/FLAC/OGG files")


def extract_file(path: Path, out: Path, params_json: str) -> int:
    """Write ``out`` (.npz: windows, start_frames, params, source, n_samples); return the window count."""
    from soundwatch.audio.windows import offline_windows  # deferred: loads numba, scipy

    params = FeatureParams.from_json(params_json)
    audio = read_audio(path, params.sample_rate)
    windows, starts = offline_windows(audio, params=params)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(
        tmp,
        windows=windows,
        start_frames=starts,
        params=np.array(params_json),
        source=np.array(str(path)),
        n_samples=np.array(audio.size, dtype=np.int64),
    )
    tmp.replace(out)  # a crash never leaves a half-written file under the final name
    return int(starts.size)


@app.command("extract")
def extract(
    source: Annotated[
        Path,
        typer.Argument(help="an audio file, or a folder searched recursively for WAV/FLAC/OGG", show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (mirrors the input tree)")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="output format; npz holds windows [N, n_mels, W] "
            "float32, start_frames [N] int64, params (JSON), source, n_samples",
        ),
    ] = "npz",
) -> None:
    """Write each file's feature windows, exactly as the stream would emit them, under --out."""
    if fmt != "npz":
        raise typer.BadParameter(f"unknown format {fmt!r}; choose from: npz", param_hint="--format")
    files = audio_files(source)
    if not files:
        raise BadInput(f"{source}: no .wav/.flac/.ogg files found", "point at a folder that holds audio files")
    params_json = get_settings().features.canonical_json()
    base = source if source.is_dir() else source.parent
    failed: list[str] = []
    total = 0
    columns = (TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("extract", total=len(files))
        for path in files:
            target = out / path.relative_to(base).with_suffix(".npz")
            try:
                total += extract_file(path, target, params_json)
            except BadInput as exc:
                failed.append(exc.message)
                err_console.print(f"[red]skipped[/red] {exc.message}", highlight=False)
            progress.advance(task)
    err_console.print(f"{len(files) - len(failed)} file(s), {total} windows -> {out}", highlight=False)
    if failed:
        raise BadInput(
            f"{len(failed)} of {len(files)} file(s) could not be read (listed above)",
            "fix or remove them and run again; the others were written",
        )


def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    seconds: Annotated[float, typer.Option("--seconds", help="audio seconds for the log-mel comparison")] = 320.0,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="best of this many runs each")] = 5,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="also measure one Faust worker through the local broker")
    ] = True,
    stream_seconds: Annotated[
        float, typer.Option("--stream-seconds", help="audio seconds sent through the stream")
    ] = 480.0,
) -> None:
    """Log-mel speed against librosa and a bare rfft+matmul floor, and the stream's real-time factor."""
    from features.bench import logmel_bench, stream_bench  # deferred: loads numba, scipy

    settings = get_settings()
    result = logmel_bench(seconds=seconds, repeats=repeats, params=settings.features)
    if stream:
        try:
            result.update(stream_bench(settings, audio_seconds=stream_seconds))
        except (SoundwatchError, RuntimeError) as exc:
            result.update({"stream_realtime_factor": None, "stream_error": str(exc)})
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:28} {value}")


if __name__ == "__main__":
    app()
