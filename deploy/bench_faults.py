"""`soundwatch bench faults`: break a private pipeline on purpose and count what got lost.

Every scenario runs on its own :class:`~deploy.fault_stack.FaultPipeline` (own broker, real feature
and scoring workers, simulator gateways at 2x real time), injects its fault while audio flows,
lets the pipeline drain, and reports chunks acknowledged by the broker, the windows they imply,
distinct points in InfluxDB, duplicates, dead letters and ``lost = windows implied - distinct
points``, which must be 0. ``baseline`` (no fault) is the reference run in the same invocation.

Scenarios are registered by name in :data:`SCENARIOS` with :func:`scenario`; a new one (e.g. a
secrets grep) is one decorated function ``(FaultBench) -> dict`` — pipeline scenarios return
``bench.finish(pipeline)``, others any JSON-able dict with an ``ok`` flag.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from deploy.fault_stack import FaultPipeline
from deploy.local_stack import LocalStack
from deploy.private_services import PrivateInflux, plumbing_model
from soundwatch.console import err_console
from soundwatch.contracts import AudioChunk, machine_key
from soundwatch.errors import ExitCode
from soundwatch.settings import Settings, get_settings

MACHINES = ["fan/id_00", "fan/id_02"]


@dataclass
class FaultBench:
    """What a scenario gets: the base settings, a work directory, and how to build a pipeline."""

    settings: Settings
    work_dir: Path
    registry_root: Path
    say: Callable[[str], None] = lambda m: None
    pipelines: list[FaultPipeline] = field(default_factory=list)
    influxes: list[PrivateInflux] = field(default_factory=list)

    def private_influx(self, name: str) -> PrivateInflux:
        influx = PrivateInflux(self.work_dir / name / "influxd")
        self.influxes.append(influx)
        return influx.start()

    def close(self) -> None:
        """Stop what the last scenario started: pipelines first (their DROP DATABASE), then private influxd."""
        for p in self.pipelines:
            p.close()
        for influx in self.influxes:
            influx.kill()
        self.pipelines.clear()
        self.influxes.clear()

    def pipeline(self, name: str, influx: PrivateInflux | None = None) -> FaultPipeline:
        p = FaultPipeline(
            self.settings, self.work_dir / name, MACHINES, influx=influx, registry_root=self.registry_root
        )
        self.pipelines.append(p)
        p.start_workers()
        return p

    def finish(self, p: FaultPipeline, **extra: Any) -> dict[str, Any]:
        """Stop the gateways still running, let the pipeline drain, and account for everything."""
        for run in p.runs:
            if run.report is None:
                run.stop()
        p.wait_quiet()
        result = p.account()
        result.update(extra)
        result["ok"] = result["lost"] == 0 and result["duplicates"] == 0 and "incomplete_gateway_runs" not in result
        return result


Scenario = Callable[[FaultBench], dict[str, Any]]
SCENARIOS: dict[str, Scenario] = {}
REDUCED = ("broker_restart", "bad_records", "second_gateway")  # what tests/reliability runs under `make test`


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario under ``name`` (run in registration order)."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


@scenario("baseline")
def _baseline(b: FaultBench) -> dict[str, Any]:
    """No fault: the reference the other scenarios are read against."""
    p = b.pipeline("baseline")
    p.gateway(MACHINES)
    p.wait_flowing()
    time.sleep(8)
    return b.finish(p)


@scenario("broker_restart")
def _broker_restart(b: FaultBench) -> dict[str, Any]:
    """The broker dies and comes back empty (memory storage: every topic recreated, offsets from 0).

    The gateway is held while the pipeline catches up, so the broker holds nothing unconsumed when
    it dies (what a memory-only broker holds unconsumed is lost with it; a replicated Kafka does
    not lose it, and the feature worker would count such chunks in ``chunks_skipped``).
    The gateway spools through the outage; after the restart the topics are created again (the
    operator's `soundwatch services up`) and every new chunk must come out as points.
    """
    p = b.pipeline("broker_restart")
    run = p.gateway(MACHINES)
    p.wait_flowing()
    time.sleep(3)
    run.source.gate.clear()
    p.wait_quiet(quiet_s=3.0)
    p.broker.kill()
    run.source.gate.set()
    down_s = 8.0
    time.sleep(down_s)
    p.broker.start()
    p.ensure_topics()
    time.sleep(12)
    return b.finish(p, broker_down_s=down_s)


@scenario("features_sigkill")
def _features_sigkill(b: FaultBench) -> dict[str, Any]:
    p = b.pipeline("features_sigkill")
    p.gateway(MACHINES)
    p.wait_flowing()
    time.sleep(3)
    p.kill9(p.features)
    time.sleep(2)
    p.features.start()
    time.sleep(8)
    return b.finish(p)


@scenario("scoring_sigkill")
def _scoring_sigkill(b: FaultBench) -> dict[str, Any]:
    p = b.pipeline("scoring_sigkill")
    p.gateway(MACHINES)
    p.wait_flowing()
    time.sleep(3)
    p.kill9(p.scoring)
    time.sleep(2)
    p.scoring.start()
    time.sleep(8)
    return b.finish(p)


@scenario("influx_outage")
def _influx_outage(b: FaultBench) -> dict[str, Any]:
    """InfluxDB (a private influxd) is killed for 8 s; the scoring worker buffers and catches up."""
    influx = b.private_influx("influx_outage")
    p = b.pipeline("influx_outage", influx=influx)
    p.gateway(MACHINES)
    p.wait_flowing()
    time.sleep(2)
    influx.kill()
    time.sleep(8)
    influx.start()
    time.sleep(6)
    return b.finish(p, influx_down_s=8.0)


@scenario("bad_records")
def _bad_records(b: FaultBench) -> dict[str, Any]:
    """Oversized (10 MB) and malformed records on both topics while audio flows: all dead-lettered, no stall."""
    p = b.pipeline("bad_records")
    p.gateway(MACHINES)
    p.wait_flowing()
    t = p.settings.kafka.topics
    key = machine_key("fan", "id_00")
    sample = AudioChunk("fan", "id_00", "gw-faults", 16_000, 0, 0, np.zeros(160, np.int16))
    wrong_rate = AudioChunk("fan", "id_00", "gw-faults", 44_100, 0, 0, sample.samples).encode()
    huge = b"\x00" + bytes(10 * 1024 * 1024)
    audio_bad = [
        (key, huge),
        (key, b""),
        (key, b"garbage"),
        (key, sample.encode()[:30]),
        (key, wrong_rate),
        (b"fan/someone-else", sample.encode()),
    ]
    features_bad = [(key, huge), (key, b""), (key, b"SW\x02\x07not a window")]
    p.inject(t.audio_raw, audio_bad)
    p.inject(t.features, features_bad)
    time.sleep(8)
    result = b.finish(p, injected=len(audio_bad) + len(features_bad))
    result["ok"] = result["ok"] and result["dead_lettered"] == result["injected"]
    return result


@scenario("gateway_fresh_state")
def _gateway_fresh_state(b: FaultBench) -> dict[str, Any]:
    """The gateway is stopped, its state directory and spool wiped, and started again: numbers restart at 0."""
    p = b.pipeline("gateway_fresh_state")
    first = p.gateway(MACHINES)
    p.wait_flowing()
    time.sleep(4)
    first.stop()
    p.wipe_gateway_state()
    p.gateway(MACHINES)
    time.sleep(10)
    return b.finish(p)


@scenario("second_gateway")
def _second_gateway(b: FaultBench) -> dict[str, Any]:
    """A second gateway (same id, its own state) publishes fan/id_00 for 4 s, then stops.

    It started later, so its epoch is newer: it owns fan/id_00 while it runs and the first gateway's
    chunks for that machine are dead-lettered (``conflicting_gateway``); 10 s after the second one's
    last chunk the first takes the machine back, so it never goes dark.
    """
    p = b.pipeline("second_gateway")
    p.gateway(MACHINES)
    p.wait_flowing()
    second = p.gateway(MACHINES[:1], state="b")
    time.sleep(4)
    second.stop()
    time.sleep(16)
    result = b.finish(p)
    result["ok"] = result["ok"] and result["conflicting"] > 0
    return result


def run_bench(
    settings: Settings,
    names: list[str] | None = None,
    work_dir: Path | None = None,
    say: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Run the named scenarios (default: all) one after another; the JSON-able result."""
    unknown = sorted(set(names or []) - set(SCENARIOS))
    if unknown:
        raise typer.BadParameter(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    chosen = [n for n in SCENARIOS if names is None or n in names]
    own_dir = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="soundwatch-faults-")) if work_dir is None else work_dir
    t0 = time.perf_counter()
    bench = FaultBench(settings, work, work / "registry", say)
    plumbing_model(bench.registry_root, "fan", [m.split("/")[1] for m in MACHINES], settings.features)
    results: dict[str, Any] = {}
    try:
        for name in chosen:
            say(f"scenario {name} ...")
            started = time.perf_counter()
            try:
                results[name] = SCENARIOS[name](bench)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            finally:
                bench.close()
            results[name]["seconds"] = round(time.perf_counter() - started, 1)
            say(f"scenario {name}: {results[name]}")
    finally:
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
    reference = results.get("baseline")
    return {
        "scenarios": results,
        "reference": "baseline" if reference else None,
        "all_ok": all(r.get("ok") for r in results.values()),
        "lost_total": sum(r.get("lost", 0) for r in results.values()),
        "host": f"{platform.node()} {platform.machine()} {__import__('os').cpu_count()} cpus",
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }


def bench_faults(
    as_json: bool = typer.Option(False, "--json", help="print only the JSON result on stdout"),
    only: Annotated[list[str] | None, typer.Option("--scenario", help="run only this scenario (repeatable)")] = None,
    keep: Annotated[Path | None, typer.Option("--keep", help="keep work files and worker logs in this folder")] = None,
) -> None:
    """Fault injection on a private stack: lost = windows implied - distinct points, per scenario (must be 0)."""
    settings = get_settings()
    LocalStack(settings).require("redis", "influxdb")
    say = (lambda m: None) if as_json else (lambda m: err_console.print(m))
    result = run_bench(settings, only, keep, say=say)
    typer.echo(json.dumps(result))
    failed = [name for name, r in result["scenarios"].items() if not r.get("ok")]
    if failed:
        err_console.print(
            f"[red]fault scenarios failed: {', '.join(failed)}[/red] (lost data, duplicates or an "
            "error; see their figures above and the worker logs with --keep DIR)"
        )
        raise typer.Exit(ExitCode.ERROR)
