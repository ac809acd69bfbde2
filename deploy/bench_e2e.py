"""`soundwatch bench e2e`: chunk produced -> point in InfluxDB latency, and how many machines one
gateway + one feature worker + one scoring worker sustain in real time on this machine.

Each step runs the real pipeline (separate processes) on private topics and a private InfluxDB
database, with the current models of the registry (trained on simulator audio when missing).
Latency percentiles leave out the first 20 s after the first point (consumer-group joins, model
loading, JIT compilation). A step is *sustained* when the latency does not grow during the run
(the last third's median is within 1 s of the first third's) and p99 stays within window
length + 1 s + 2 s of slack.
"""

from __future__ import annotations

import platform
import time
import uuid
from pathlib import Path
from typing import Any

from deploy.demo import ensure_models
from deploy.scenario import ScenarioResult, run_scenario
from deploy.stages import PlantSource
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import ensure_topics
from soundwatch.settings import Settings, load_settings


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


def _sustained(result: ScenarioResult, window_s: float) -> bool:
    series = result.steady_latencies()
    if len(series) < 30:
        return False
    third = len(series) // 3
    early, late = sorted(series[:third])[third // 2], sorted(series[-third:])[third // 2]
    return late <= early + 1.0 and result.p(99) <= window_s + 3.0


def run_step(settings: Settings, n: int, seconds: float, log_dir: Path) -> tuple[ScenarioResult, Settings]:
    tag = uuid.uuid4().hex[:8]
    s = _private(settings, tag)
    ensure_topics(s)
    with InfluxClient(s.influx) as influx:
        influx.create_database()
        try:
            result = run_scenario(
                s, PlantSource(kind="sim", machines=_machines(n)), duration_s=seconds, log_dir=log_dir / f"n{n}"
            )
        finally:
            influx.drop_database()
    return result, s


def run_bench(
    settings: Settings, machines: int, seconds: float, max_machines: int, log_dir: Path, say=lambda m: None
) -> dict[str, Any]:
    ensure_models(settings, PlantSource(kind="sim", machines=_machines(max(machines, 6))), log_dir / "work", epochs=8)
    window_s = settings.features.window_seconds
    t0 = time.perf_counter()
    say(f"step: {machines} machines for {seconds:.0f} s ...")
    main, _ = run_step(settings, machines, seconds, log_dir)
    steps = [
        {
            "machines": machines,
            "latency_p50_s": main.p(50),
            "latency_p99_s": main.p(99),
            "sustained": _sustained(main, window_s),
        }
    ]
    best = machines if steps[0]["sustained"] else 0
    n = machines * 2
    while steps[-1]["sustained"] and n <= max_machines:
        say(f"step: {n} machines for {seconds:.0f} s ...")
        result, _ = run_step(settings, n, seconds, log_dir)
        ok = _sustained(result, window_s)
        steps.append({"machines": n, "latency_p50_s": result.p(50), "latency_p99_s": result.p(99), "sustained": ok})
        if ok:
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
        "steps": steps,
        "host": f"{platform.node()} {platform.machine()} {__import__('os').cpu_count()} cpus",
        "bench_seconds": round(time.perf_counter() - t0, 1),
    }
