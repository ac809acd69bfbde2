"""The demo: the real pipeline on one machine, a live terminal view, and an HTML report at the end.

1. start the local services that are not running (and remember which, to stop them afterwards);
   sign models like production does: the configured ``registry_signing_key``, else a random key
   generated once into ``var/registry-signing.key`` (mode 0600);
2. train a model per machine type when none is registered (simulator normal audio, or the
   normal clips of the replayed folder);
3. run gateway -> Faust feature worker -> scoring worker as separate processes (``soundwatch run all``);
4. show machines, score vs threshold, alert state and throughput live;
5. on Ctrl-C or after ``--duration``: export the Grafana provisioning, render the dashboards' data
   to PNG, write ``report.html``, stop the pipeline and the services the demo started.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dashboards.export import export
from dashboards.machines import Machine
from dashboards.render import render
from deploy.local_stack import LocalStack
from deploy.observer import MachineView, PipelineObserver, percentile
from deploy.pipeline import Pipeline
from deploy.stages import PlantSource, pipeline_stages
from soundwatch.console import err_console
from soundwatch.errors import BadInput
from soundwatch.settings import Settings, get_settings
from soundwatch.simulator import write_dcase_dataset

DEFAULT_MACHINES = "fan/id_00,fan/id_02,fan/id_04,pump/id_00,pump/id_02"
DEFAULT_FAULT = "fan/id_02:bearing_ticks@60s"
DEMO_KEY_FILE = Path("var/registry-signing.key")
DEMO_TRAIN_BUDGET_MIN = 3.0  # training of every missing type together (the demo's start-up stays ~3 min)
KEY_ENV = "SOUNDWATCH_REGISTRY_SIGNING_KEY"


@dataclass(frozen=True)
class DemoOptions:
    source: PlantSource
    out_dir: Path
    duration_s: float | None = None
    train_epochs: int = 8
    keep_services: bool = False


# ---------------------------------------------------------------------------------------------- models
def ensure_signing_key(settings: Settings, key_file: Path = DEMO_KEY_FILE) -> Settings:
    """``settings`` with a registry signing key: the configured one, else the demo's own in ``key_file``.

    The demo's key is generated once (``secrets.token_hex(32)``, file mode 0600) and put in this
    process's environment, so `soundwatch train` and the workers the demo starts sign and verify
    with it. When it is first created, the versions already in the registry (saved by earlier,
    unsigned demo runs) are signed after their checksums verify.
    """
    if settings.registry_signing_key is not None:
        return settings
    created = not key_file.exists()
    if created:
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        err_console.print(
            f"no registry signing key configured: generated one for the demo in {key_file} "
            f"(mode 0600); set {KEY_ENV} for a real plant",
            highlight=False,
        )
    elif stat.S_IMODE(key_file.stat().st_mode) & 0o077:
        err_console.print(
            f"[yellow]{key_file} is readable by other users: `chmod 600 {key_file}`[/yellow]", highlight=False
        )
    key = key_file.read_text().strip()
    os.environ[KEY_ENV] = key  # inherited by the processes the demo starts; never printed
    get_settings.cache_clear()
    settings = settings.model_copy(update={"registry_signing_key": SecretStr(key)})
    if created:
        _sign_existing(settings)
    return settings


def _sign_existing(settings: Settings) -> None:
    from soundwatch.model.registry import ModelRegistry  # deferred: loads torch

    rows = ModelRegistry.from_settings(settings).sign_all()
    signed = [f"{t} {v}" for t, v, outcome, _ in rows if outcome == "signed"]
    if signed:
        err_console.print(f"signed the models already in {settings.registry_root} with it: {', '.join(signed)}")
    for t, v, _, exc in rows:
        if exc is not None:
            err_console.print(f"[yellow]{t} {v} is not signed: {exc.message}[/yellow]", highlight=False)


def machine_types_of(source: PlantSource) -> list[str]:
    if source.kind == "sim":
        return sorted({m.split("/")[0] for m in source.machines.split(",")})
    assert source.data is not None
    return sorted(p.name for p in source.data.iterdir() if p.is_dir() and any(p.rglob("*.wav")))


def ensure_models(settings: Settings, source: PlantSource, work_dir: Path, epochs: int) -> dict[str, str]:
    """The current model version per machine type, training one (through `soundwatch train`) where none exists."""
    from soundwatch.model.registry import ModelRegistry  # deferred: loads torch

    registry = ModelRegistry.from_settings(settings)
    types = machine_types_of(source)
    missing = [t for t in types if registry.current_version(t) is None and registry.latest_version(t) is None]
    if missing:
        data = _training_data(source, missing, work_dir)
        err_console.print(
            f"no model registered for {', '.join(missing)}: training one on {data} "
            f"(--method auto: statistic methods, then deep ones at {epochs} epochs per stage within "
            f"{DEMO_TRAIN_BUDGET_MIN:g} minutes in all; a few minutes on 2 CPU cores) ..."
        )
        for mtype in missing:
            cmd = [
                sys.executable,
                "-m",
                "deploy.main",
                "train",
                "--data",
                str(data),
                "--machine-type",
                mtype,
                "--epochs",
                str(epochs),
                "--time-budget",
                f"{max(0.1, DEMO_TRAIN_BUDGET_MIN / len(missing)):.2f}",
                "--registry",
                str(settings.registry_root),
            ]
            if subprocess.run(cmd, env=os.environ.copy()).returncode != 0:
                raise BadInput(
                    f"training the {mtype} model failed (see the messages above)",
                    "fix the cause, or train yourself: soundwatch train --data DIR",
                )
    versions = {}
    for mtype in types:
        version = registry.current_version(mtype)
        if version is None:  # registered on disk but not current (e.g. Redis was restarted): make latest current
            version = registry.latest_version(mtype)
            registry.set_current(mtype, version)
        versions[mtype] = version
    return versions


def _training_data(source: PlantSource, types: list[str], work_dir: Path) -> Path:
    if source.kind == "sim":
        root = work_dir / "sim-train"
        ids = {m.split("/")[1] for m in source.machines.split(",")}
        per_type = max(2, max(int(i.split("_")[-1]) // 2 + 1 for i in ids))
        if not root.is_dir():
            write_dcase_dataset(root, types, ids_per_type=per_type, n_train=12, n_test_normal=0, n_test_anomaly=0)
        return root
    # recorded files: train on the folder's normal clips (a demo model, not a quality claim)
    assert source.data is not None
    root = work_dir / "files-train"
    for mtype in types:
        target = root / mtype / "train"
        target.mkdir(parents=True, exist_ok=True)
        for clip in sorted((source.data / mtype).rglob("normal_*.wav")):
            link = target / clip.name
            if not link.exists():
                link.symlink_to(clip.resolve())
    return root


# ---------------------------------------------------------------------------------------------- live view
def live_table(observer: PipelineObserver, started: float, note: str) -> Group:
    table = Table(title="soundwatch — live", title_justify="left", expand=False)
    for col in ("machine", "model", "windows", "median score", "threshold", "score / threshold", "state"):
        table.add_column(col, justify="right" if col in ("windows", "median score", "threshold") else "left")
    latencies: list[float] = []
    now_ns = time.time_ns()
    for v in observer.snapshot():
        latencies += v.latencies_s[-200:]
        ratio = v.ratio
        bar = "" if math.isnan(ratio) else ("█" * min(10, int(ratio * 5))).ljust(10, "·")
        median = f"{v.medians[-1]:.3f}" if v.medians else "-"
        if observer.is_stale(v, now_ns):  # its last score is old: say so instead of showing it as current
            silent_s = v.seconds_since_audio if v.seconds_since_audio is not None else (now_ns - v.received_ns) / 1e9
            state = Text("STALE", style="bold black on dark_orange")
            gauge = Text(
                f"no audio for {silent_s:.0f} s" if v.received_ns or v.seconds_since_audio else "no audio", style="dim"
            )
            median = Text(median, style="dim")
        else:
            alerting = v.state.value == "alerting"
            state = Text("ALERTING", style="bold white on red") if alerting else Text("normal", "green")
            gauge = Text(f"{bar} {ratio:4.2f}", style="red" if ratio >= 1 else "cyan") if bar else Text("-")
        table.add_row(
            v.key,
            v.model_version,
            str(len(v.scores)),
            median,
            f"{v.thresholds[-1]:.3f}" if v.thresholds else "-",
            gauge,
            state,
        )
    elapsed = time.monotonic() - started
    footer = Text(
        f"{elapsed:6.0f} s elapsed · {observer.windows_per_s():5.1f} windows/s scored · "
        f"latency chunk→score p50 {percentile(latencies, 50):.2f} s · {note}"
    )
    return Group(table, footer)


# ---------------------------------------------------------------------------------------------- the run
def run_demo(settings: Settings, options: DemoOptions) -> Path:
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    settings = ensure_signing_key(settings)
    stack = LocalStack(settings)
    started_services = [s.name for s in stack.status() if not s.answering]
    stack.up(progress=lambda m: err_console.print(m))
    try:
        versions = ensure_models(settings, options.source, out / "work", options.train_epochs)
        err_console.print("models: " + ", ".join(f"{t} {v}" for t, v in versions.items()))
        report = _run_pipeline(settings, options)
    finally:
        if started_services and not options.keep_services:
            stack.down(started_services, progress=lambda m: err_console.print(m))
    return report


def _run_pipeline(settings: Settings, options: DemoOptions) -> Path:
    out = options.out_dir
    stages = pipeline_stages(settings, options.source, log_dir=out / "logs")
    observer = PipelineObserver(settings).start()
    pipeline = Pipeline(stages, say=lambda m: err_console.print(m))
    started = time.monotonic()
    note = "Ctrl-C to stop" + (f" (stops by itself after {options.duration_s:.0f} s)" if options.duration_s else "")
    if err_console.is_terminal:
        with Live(live_table(observer, started, note), console=err_console, refresh_per_second=2) as live:
            pipeline.run(options.duration_s, tick=lambda: live.update(live_table(observer, started, note)))
    else:  # logs and CI: a plain table every 30 s instead of a redrawn screen
        last = [time.monotonic()]

        def tick() -> None:
            if time.monotonic() - last[0] >= 30:
                err_console.print(live_table(observer, started, note))
                last[0] = time.monotonic()

        pipeline.run(options.duration_s, tick=tick)
        err_console.print(live_table(observer, started, note))
    time.sleep(1.0)  # let the observer read the last scores/alerts the workers sent while stopping
    observer.stop()
    return finish(settings, observer.snapshot(), out, started)


def finish(settings: Settings, views: list[MachineView], out: Path, started: float) -> Path:
    """Grafana provisioning, dashboard renderings and the HTML report."""
    from deploy.report import write_report  # deferred: loads matplotlib

    machines = [Machine(v.machine_type, v.machine_id) for v in views]
    images: list[tuple[str, Path]] = []
    if machines:
        export(settings, out / "grafana-provisioning", machines)
        err_console.print(f"Grafana provisioning written to {out / 'grafana-provisioning'}")
        end_ms = int(time.time() * 1000)
        start_ms = end_ms - int((time.monotonic() - started + 30) * 1000)
        try:
            paths = render(settings, out / "dashboards", machines, start_ms=start_ms, end_ms=end_ms)
            images = [(p.stem.replace("_", " "), p) for p in paths]
        except Exception as exc:  # a rendering problem must not cost the report; say what happened
            err_console.print(
                f"[yellow]dashboard rendering failed ({type(exc).__name__}: {exc}); "
                "the report has the score timelines only[/yellow]"
            )
    alerts = sum(len(v.alert_spans()) for v in views)
    summary = {
        "machines": str(len(views)),
        "windows scored": str(sum(len(v.scores) for v in views)),
        "alerts raised": str(alerts),
        "ran for": f"{time.monotonic() - started:.0f} s",
        "Grafana provisioning": str(out / "grafana-provisioning"),
    }
    path = write_report(out / "report.html", views, title="soundwatch demo report", summary=summary, images=images)
    err_console.print(f"[green]report written to {path}[/green]")
    return path
