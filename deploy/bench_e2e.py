"""`soundwatch bench e2e`: chunk produced -> point in InfluxDB latency, and how many machines one
gateway + one feature worker + one scoring worker sustain in real time on this machine.

Each step runs the real pipeline (separate processes) on private topics and a private InfluxDB
database, with the current models of the registry (trained on simulator audio when missing).
Latency percentiles leave out the first 20 s after the first point (consumer-group joins, model
loading, JIT compilation). A step is *sustained* when the latency does not grow during the run
(the last third's median is within 1 s of the first third's), p99 stays within window
length + 1 s + 2 s of slack, and at least 90 % of the windows the machines make in real time reached
InfluxDB (``realtime_share``: the simulated gateway itself may fall behind real time). The gateway
repeats each machine's first ``GATEWAY_LOOP_S`` seconds of simulator audio, rendered before it starts:
synthesis cost it more CPU than sending, and a microphone gateway does not synthesise. Above 64
machines, latency and ``realtime_share`` are timed on a sample of about 64 machines (every k-th id):
polling InfluxDB for every point made the bench itself one of the largest CPU users on the node.

Every step also reports what it cost (:mod:`deploy.resources`, over the same steady part): CPU-seconds
per machine-hour and peak resident memory of each process (gateway, feature and scoring workers, and
the broker and InfluxDB when ``soundwatch services up`` runs them here: shared services also carry
whatever else uses them), and the consumer lag of the feature and scoring groups. A step's topics
are deleted after it: the local broker keeps them in memory (~32 kB/s of audio and as much of
features and windower state per machine).
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from pathlib import Path
from typing import Any

from deploy.demo import ensure_models
from deploy.scenario import ScenarioResult, run_scenario
from deploy.stages import PlantSource
from features.app import changelog_topic
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import ensure_topics, make_admin
from soundwatch.settings import Settings, load_settings

log = logging.getLogger(__name__)

GATEWAY_LOOP_S = 8.0  # seconds of simulator audio per machine, rendered once and repeated (see above)


def _private(settings: Settings, tag: str) -> Settings:
    topics = {n: f"bench{tag}.{n}" for n in ("audio_raw", "features", "alerts", "scores", "deadletter")}
    return load_settings(
        **{
            **settings.model_dump(),
            "kafka": {**settings.kafka.model_dump(), "topics": {**topics, "partitions": 4}},
            "influx": {**settings.influx.model_dump(), "database": f"bench_{tag}"},
            "scoring": {**settings.scoring.model_dump(), "group_id": f"bench-{tag}", "metrics_port": 0},
            "stream": {
                **settings.stream.model_dump(),
                "app_id": f"bench-features-{tag}",
                "data_dir": Path(settings.stream.data_dir) / f"bench-{tag}",
            },
        }
    )


def _machines(n: int) -> str:
    types = ["fan", "pump"]
    return ",".join(f"{types[i % 2]}/id_{2 * (i // 2):02d}" for i in range(n))


REALTIME_SHARE_MIN = 0.9


def realtime_share(result: ScenarioResult, machines: int, hop_s: float) -> float:
    """Points that reached InfluxDB after the warm-up over the windows ``machines`` machines make in that
    time (one per ``hop_s``): below 1 when a stage, the gateway included, does not keep up with real time.

    Latency alone cannot tell: it is counted from when the gateway *made* each chunk, so a gateway that
    renders its audio slower than real time leaves the latency low while the plant's audio falls behind.
    """
    machines = result.timed_machines or machines  # the sample whose points were timed, on a large plant
    if not result.latency_by_time or machines <= 0:
        return 0.0
    start = result.latency_by_time[0][0] + result.warmup_s
    span = result.latency_by_time[-1][0] - start
    if span <= 0:
        return 0.0
    return len(result.steady_latencies()) / (machines * span / hop_s)


def _sustained(result: ScenarioResult, window_s: float, share: float = 1.0) -> bool:
    series = result.steady_latencies()
    if len(series) < 30 or share < REALTIME_SHARE_MIN:
        return False
    third = len(series) // 3
    early, late = sorted(series[:third])[third // 2], sorted(series[-third:])[third // 2]
    return late <= early + 1.0 and result.p(99) <= window_s + 3.0


def run_step(
    settings: Settings, n: int, seconds: float, log_dir: Path, machines: str | None = None, profile: bool = False
) -> tuple[ScenarioResult, Settings]:
    """One step on private topics and database (both removed afterwards); ``machines`` overrides the
    default fan/pump list of ``n``; ``profile``: py-spy samples of each process in ``log_dir/n<N>/profile``."""
    tag = uuid.uuid4().hex[:8]
    s = _private(settings, tag)
    ensure_topics(s)
    source = PlantSource(kind="sim", machines=machines or _machines(n), sim_loop_s=GATEWAY_LOOP_S)
    with InfluxClient(s.influx) as influx:
        influx.create_database()
        try:
            result = run_scenario(
                s,
                source,
                duration_s=seconds,
                log_dir=log_dir / f"n{n}",
                measure_resources=True,
                profile_dir=log_dir / f"n{n}" / "profile" if profile else None,
            )
        finally:
            influx.drop_database()
            _delete_topics(s)
    return result, s


def _delete_topics(s: Settings) -> None:
    """The step's topics (the broker holds them in memory); best effort: a leftover only costs memory."""
    t = s.kafka.topics
    names = [t.audio_raw, t.features, t.alerts, t.scores, t.deadletter, changelog_topic(s)]
    try:
        admin = make_admin(s)
    except Exception as exc:  # a broker that went away: nothing to free
        log.warning("cannot delete the bench topics %s: %s", names, exc)
        return
    try:
        present = [n for n in names if n in set(admin.list_topics())]
        if present:
            admin.delete_topics(present)
    except Exception as exc:
        log.warning("cannot delete the bench topics %s: %s", names, exc)
    finally:
        admin.close()


def step_record(n: int, result: ScenarioResult, window_s: float, hop_s: float) -> dict[str, Any]:
    """One step of the JSON: latency, the share of real time delivered, sustained or not, and what it cost
    (see the module docstring)."""
    share = realtime_share(result, n, hop_s)
    return {
        "machines": n,
        "latency_p50_s": round(result.p(50), 3),
        "latency_p99_s": round(result.p(99), 3),
        "realtime_share": round(share, 3),
        "sustained": _sustained(result, window_s, share),
        "points_after_warmup": len(result.steady_latencies()),
        **(result.resources or {}),
    }


def run_bench(
    settings: Settings,
    machines: int,
    seconds: float,
    max_machines: int,
    log_dir: Path,
    say=lambda m: None,
    profile: bool = False,
) -> dict[str, Any]:
    ensure_models(settings, PlantSource(kind="sim", machines=_machines(max(machines, 6))), log_dir / "work", epochs=8)
    window_s = settings.features.window_seconds
    t0 = time.perf_counter()
    say(f"step: {machines} machines for {seconds:.0f} s ...")
    main, _ = run_step(settings, machines, seconds, log_dir, profile=profile)
    hop_s = settings.features.hop_seconds
    steps = [step_record(machines, main, window_s, hop_s)]
    best = machines if steps[0]["sustained"] else 0
    n = machines * 2
    while steps[-1]["sustained"] and n <= max_machines:
        say(f"step: {n} machines for {seconds:.0f} s ...")
        result, _ = run_step(settings, n, seconds, log_dir, profile=profile)
        steps.append(step_record(n, result, window_s, hop_s))
        if steps[-1]["sustained"]:
            best = n
        n *= 2
    return {
        "machines": machines,
        "latency_p50_s": round(main.p(50), 3),
        "latency_p99_s": round(main.p(99), 3),
        "window_s": round(window_s, 3),
        "target_p99_s": round(window_s + 1.0, 3),
        "points": len(main.point_latencies_s),
        "points_after_warmup": len(main.steady_latencies()),
        "warmup_excluded_s": main.warmup_s,
        "machines_realtime": best,
        "machines_realtime_note": f"largest N tried (doubling up to {max_machines}) with latency not growing",
        "cpu_s_per_machine_hour": steps[0].get("cpu_s_per_machine_hour", {}),
        "rss_mb": steps[0].get("rss_mb", {}),
        "consumer_lag": steps[0].get("consumer_lag", {}),
        "steps": steps,
        "host": f"{platform.node()} {platform.machine()} {__import__('os').cpu_count()} cpus",
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
