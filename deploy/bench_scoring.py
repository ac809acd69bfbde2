"""``soundwatch bench scoring``: how many machines one scoring worker keeps up with, on this machine.

What is timed is everything the worker does per window except the network: decode the
FeatureWindow message, check its feature parameters, run the model (micro-batched),
median filter, threshold, alert state machine, encode the Score message and the InfluxDB
line. Kafka and InfluxDB are left out on purpose — they are measured by their own
benchmarks, and kafka-python consumes ~5k msg/s here, far above the model's rate.

``machines_realtime = windows_per_s * hop_seconds``: a 16 kHz machine produces one window
every ``hop_frames * hop_length / sample_rate`` seconds (1.024 s by default), so that many
machines can be scored as fast as they produce audio. ``batch_speedup`` compares the same
pipeline with batches of ``max_batch`` against one window at a time, in the same run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer

from scoring.cli import THREADS_HELP, set_threads
from scoring.core import ScoringCore
from scoring.models import ModelCache
from scoring.state import StateTable
from soundwatch.choices import Device
from soundwatch.console import err_console
from soundwatch.contracts import FeatureWindow
from soundwatch.errors import BadInput
from soundwatch.influx.schema import score_point
from soundwatch.model.device import resolve_device
from soundwatch.model.registry import ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.settings import Settings, get_settings
from soundwatch.simulator import render_clip, write_dcase_dataset
from training.datasets import scan_dataset

log = logging.getLogger(__name__)

BENCH_REGISTRY = Path("var/bench/registry")  # where a small model is trained when no registry has one
BENCH_TYPE = "fan"


def _ensure_model(settings: Settings, registry: Path | None, machine_type: str | None, device: str) -> tuple[Path, str]:
    """A registry root and machine type with a model: the given/default registry, else train a small one."""
    for root in [registry] if registry is not None else [settings.registry_root, BENCH_REGISTRY]:
        types = ModelRegistry(root).machine_types()
        if machine_type is not None and machine_type in types:
            return root, machine_type
        if machine_type is None and types:
            return root, types[0]
        if registry is not None:
            raise BadInput(
                f"no model{' for ' + machine_type if machine_type else ''} in registry {root}",
                "train one with `soundwatch train`, or leave out --registry",
            )
    return BENCH_REGISTRY, _train_small(settings, machine_type or BENCH_TYPE, device)


def _train_small(settings: Settings, machine_type: str, device: str) -> str:
    """Train the default clp architecture briefly on synthetic audio (inference cost does not depend on epochs)."""
    from training.train import TrainConfig, train_machine_type  # deferred: loads scipy, sklearn

    err_console.print(
        f"no model in {settings.registry_root}: training a small {machine_type} clp model on "
        f"synthetic audio into {BENCH_REGISTRY} (once)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_dcase_dataset(
            tmp,
            [machine_type],
            ids_per_type=2,
            n_train=6,
            n_test_normal=0,
            n_test_anomaly=0,
            seconds=6.0,
            sample_rate=settings.features.sample_rate,
        )
        records = scan_dataset(tmp, machine_type)
        cfg = TrainConfig(method="clp", epochs=2, device=device, median_k=settings.scoring.median_k)
        result = train_machine_type(records, settings.features, cfg)
    version = ModelRegistry(BENCH_REGISTRY).save(result.artifact)
    err_console.print(f"trained {machine_type}/{version} in {result.seconds:.0f} s")
    return machine_type


def _window_pool(machine_type: str, machine_ids: list[str], params: FeatureParams, n: int) -> np.ndarray:
    """Real log-mel windows of synthetic machine audio (the features package's own windowing)."""
    from soundwatch.audio.windows import offline_windows  # deferred: loads numba, scipy

    ids = machine_ids or ["id_00"]
    per_id = -(-n // len(ids))  # windows needed from each machine's clip
    seconds = min(10.0, params.window_seconds + per_id * params.hop_seconds + 0.5)
    out = []
    for i, mid in enumerate(ids):
        audio = render_clip(machine_type, mid, seconds, params.sample_rate, seed=0, instance=1000 + i)
        windows, _ = offline_windows(audio, params=params)
        out.append(windows)
    pool = np.concatenate(out).astype(np.float32)
    return pool[np.arange(n) % len(pool)]


def _messages(machine_type: str, n: int, n_machines: int, params: FeatureParams, pool: np.ndarray) -> list[bytes]:
    hop_ns = int(params.hop_seconds * 1e9)
    msgs = []
    for i in range(n):
        m, j = i % n_machines, i // n_machines
        start = 1_700_000_000_000_000_000 + j * hop_ns
        msgs.append(
            FeatureWindow(
                machine_type=machine_type,
                machine_id=f"m{m:04d}",
                gateway_id="bench",
                segment=0,
                start_frame=j * params.hop_frames,
                start_ns=start,
                end_ns=start + int(params.window_seconds * 1e9),
                origin_ns=start,
                last_sequence=j,
                feature_params=params.canonical_json(),
                values=pool[i],
            ).encode()
        )
    return msgs


def _run(core: ScoringCore, msgs: list[bytes], batch: int) -> tuple[float, float, int]:
    """Seconds for the whole pipeline, seconds inside the model, windows scored."""
    started = time.perf_counter()
    inference = 0.0
    scored = 0
    for i in range(0, len(msgs), batch):
        items = [(FeatureWindow.decode(m), None) for m in msgs[i : i + batch]]
        result = core.process(items)
        inference += result.inference_s
        for s in result.scored:
            sc = s.score
            sc.encode()
            score_point(
                machine_type=sc.machine_type,
                machine_id=sc.machine_id,
                model_version=sc.model_version,
                end_ns=sc.timestamp_ns,
                score=sc.score,
                score_median=sc.score_median,
                threshold=sc.threshold,
                anomalous=sc.anomalous,
            ).to_line()
        scored += len(result.scored)
        if result.rejected:
            raise BadInput(f"bench windows were rejected: {result.rejected[0].error}")
    return time.perf_counter() - started, inference, scored


def run_bench(
    settings: Settings,
    *,
    registry: Path | None,
    machine_type: str | None,
    n_windows: int,
    n_machines: int,
    max_batch: int,
    device: str,
) -> dict[str, Any]:
    dev = str(resolve_device(device))
    root, mtype = _ensure_model(settings, registry, machine_type, dev)
    reg = ModelRegistry(root)

    def fresh_core() -> ScoringCore:
        cache = ModelCache(reg, dev)
        sc = settings.scoring
        states = StateTable(None, alert_after=sc.alert_after, resolve_after=sc.resolve_after)
        return ScoringCore(cache, states, max_batch=max_batch, default_k=settings.scoring.median_k)

    core = fresh_core()
    model = core.models.get(mtype)
    if model is None:
        raise BadInput(f"cannot load the {mtype} model from {root}: {core.models.why_missing(mtype)}")
    params = model.feature_params
    err_console.print(
        f"bench: {mtype}/{model.version} ({getattr(model, 'method', '?')}) on {dev}, "
        f"{n_windows} windows from {n_machines} machines, batch {max_batch}"
    )
    pool = _window_pool(mtype, list(getattr(model, "machine_ids", [])), params, min(n_windows, 256))
    msgs = _messages(mtype, n_windows, n_machines, params, pool[np.arange(n_windows) % len(pool)])
    _run(core, msgs[:max_batch], max_batch)  # warm-up: first-call allocations, cuDNN autotuning
    core = fresh_core()
    batched_s, batched_inf, scored = _run(core, msgs, max_batch)
    n_single = min(n_windows, max(128, n_windows // 8))
    single_core = fresh_core()
    _run(single_core, msgs[:8], 1)
    single_s, _, single_scored = _run(single_core, msgs[:n_single], 1)
    rate = scored / batched_s
    single_rate = single_scored / single_s
    return {
        "windows_per_s": round(rate, 1),
        "machines_realtime": round(rate * params.hop_seconds, 1),
        "batch_speedup": round(rate / single_rate, 2),
        "single_windows_per_s": round(single_rate, 1),
        "device": dev,
        "model": f"{mtype}/{model.version}",
        "method": getattr(model, "method", "unknown"),
        "score_kind": getattr(model, "score_kind", "unknown"),
        "max_batch": max_batch,
        "windows": scored,
        "machines": n_machines,
        "hop_seconds": params.hop_seconds,
        "inference_share": round(batched_inf / batched_s, 3),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def bench(
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    registry: Path | None = typer.Option(
        None,
        "--registry",
        help="registry with the model to benchmark "
        "(default: settings registry_root; a small synthetic model is "
        "trained when it is empty)",
    ),
    machine_type: str | None = typer.Option(None, "--machine-type", help="model to use (default: first type)"),
    windows: int = typer.Option(2048, "--windows", min=64, help="windows scored in the batched run"),
    machines: int = typer.Option(64, "--machines", min=1, help="distinct machines the windows come from"),
    max_batch: int | None = typer.Option(None, "--max-batch", min=1, help="micro-batch size (default: settings)"),
    device: Device = typer.Option(Device.AUTO, "--device", help="where the model runs"),
    threads: int = typer.Option(1, "--threads", min=0, help=THREADS_HELP),
) -> None:
    """Windows/s one scoring worker sustains (decode -> model -> median -> alerts -> points), batched vs single."""
    set_threads(threads)

    settings = get_settings()
    result = run_bench(
        settings,
        registry=registry,
        machine_type=machine_type,
        n_windows=windows,
        n_machines=machines,
        max_batch=max_batch or settings.scoring.max_batch,
        device=Device(device).value,
    )
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>22}: {value}")
