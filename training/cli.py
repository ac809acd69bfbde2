"""``soundwatch train`` and ``soundwatch evaluate`` (plain functions; the root CLI registers them).

Errors are raised as :class:`soundwatch.errors.SoundwatchError` subclasses; the root CLI turns
them into one message and a named exit code. Progress bars and messages go to stderr, so
``evaluate --json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from soundwatch.choices import Device
from soundwatch.console import err_console
from soundwatch.errors import ServiceUnavailable
from soundwatch.settings import get_settings
from training.auto import DEFAULT_BUDGET_S
from training.datasets import scan_dataset
from training.device import resolve_device
from training.methods import METHOD_HELP, METHODS
from training.registry import ModelRegistry
from training.train import TrainConfig, train_machine_type

DataOpt = Annotated[
    Path, typer.Option("--data", help="DCASE-layout folder: <type>/{train,test}/*.wav", exists=True, file_okay=False)
]
RegistryOpt = Annotated[
    Path | None, typer.Option("--registry", help="model registry root (default: settings registry_root)")
]
TypeOpt = Annotated[str | None, typer.Option("--machine-type", help="only this machine type (default: all found)")]
# The choices are the registered methods (training.methods), so --help and the usage error list them.
Method = Enum("Method", {m: m for m in METHODS}, type=str)  # type: ignore[misc]
TrainMethod = Enum("TrainMethod", {m: m for m in (*METHODS, "auto")}, type=str)  # type: ignore[misc]
MethodOpt = Annotated[
    TrainMethod,
    typer.Option(
        "--method",
        help="; ".join(f"{k}: {v}" for k, v in METHOD_HELP.items())
        + "; auto (default): statistic methods first, then deep ones within --time-budget, keep the best on "
        "held-out normal data",
    ),
]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto (GPU when present), cpu or cuda")]


def _registry(root: Path | None) -> ModelRegistry:
    return ModelRegistry.from_settings(get_settings(), root)


def train(
    data: DataOpt,
    registry: RegistryOpt = None,
    machine_type: TypeOpt = None,
    method: MethodOpt = TrainMethod("auto"),
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", min=1, help="encoder methods: epochs per stage (default 20); ae: epochs (default 50)"),
    ] = None,
    device: DeviceOpt = Device.AUTO,
    seed: Annotated[int, typer.Option("--seed", help="random seed (training is deterministic on CPU)")] = 0,
    methods: Annotated[
        str | None, typer.Option("--methods", help="with --method auto: comma-separated candidates (default: all)")
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option("--time-budget", min=0.1, help="with --method auto: minutes per machine type (default 5)"),
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            "--validation",
            exists=True,
            file_okay=False,
            help="with --method auto: labelled clips (<type>/test/{normal,anomaly}_*) that decide instead "
            "of the held-out normal criterion; never use your test set here",
        ),
    ] = None,
) -> None:
    """Train one model per machine type on <type>/train/normal_* clips and save it in the registry.

    The new version becomes current in Redis (workers hot-reload) when Redis is reachable.
    `--method auto` (the default) trains the statistic methods, then the deep ones that fit the time
    budget, and keeps, per type, the one that validates best on held-out normal clips (or on
    --validation clips); a deep method must beat the statistic ones by 0.03.
    """
    method_name, device_name = TrainMethod(method).value, Device(device).value
    if method_name == "auto" and time_budget is None:
        time_budget = DEFAULT_BUDGET_S / 60.0
    resolve_device(device_name)
    reg = _registry(registry)
    settings = get_settings()
    records = scan_dataset(data, machine_type)
    types = sorted({r.machine_type for r in records})
    for mtype in types:
        mine = [r for r in records if r.machine_type == mtype]
        if not any(r.split == "train" and r.label == "normal" for r in mine):
            err_console.print(f"[yellow]skip {mtype}: no train/normal_* clips[/yellow]")
            continue
        parent = reg.latest_version(mtype)
        cfg = TrainConfig(
            method=method_name, epochs=epochs, seed=seed, device=device_name, median_k=settings.scoring.median_k
        )
        err_console.print(f"training {mtype} ({method_name}, {len(mine)} clips) ...")
        if method_name == "auto":
            from training.auto import parse_methods, train_auto

            val = scan_dataset(validation, mtype) if validation is not None else []
            auto = train_auto(
                mine,
                settings.features,
                cfg,
                methods=parse_methods(methods),
                time_budget_s=None if time_budget is None else 60.0 * time_budget,
                validation=val,
                parent_version=parent,
            )
            _print_auto_table(mtype, auto.criterion, auto.table())
            artifacts = auto.artifacts_in_save_order()
            result_seconds = sum(c.result.seconds for c in auto.candidates if c.result is not None)
        else:
            result = train_machine_type(mine, settings.features, cfg, parent_version=parent)
            artifacts = [result.artifact]
            result_seconds = result.seconds
            for path, reason in result.skipped:
                err_console.print(f"[yellow]skipped {path}: {reason}[/yellow]")
        for art in artifacts:
            version = reg.save(art)
            sel = art.metrics.get("score_selection", {})
            crit = {k: round(v["mean"], 3) for k, v in sel.get("candidates", {}).items()}
            err_console.print(
                f"[green]{mtype} {version}[/green] ({art.method}) saved in {reg.root / mtype / version} "
                f"(score={art.score_kind}, criterion={crit})"
            )
        err_console.print(f"{mtype}: trained in {result_seconds:.1f} s")
        try:
            reg.set_current(mtype, version)
            err_console.print(f"{mtype}: current version is now {version} ({artifacts[-1].method}; reload published)")
        except ServiceUnavailable as exc:
            err_console.print(f"[yellow]{mtype}: not set current — {exc.message}[/yellow]")


def _print_auto_table(mtype: str, criterion: str, rows: list[dict]) -> None:
    err_console.print(f"{mtype}: method selection by {criterion}")
    for r in rows:
        mark = "*" if r["chosen"] else " "
        crit = "–" if r["criterion"] is None else f"{r['criterion']:.4f}"
        secs = "–" if r["train_s"] is None else f"{r['train_s']:.1f} s"
        err_console.print(f"  {mark} {r['method']:16s} {crit:>7s}  {secs:>9s}  {r['note']}")


def evaluate(
    data: DataOpt,
    registry: RegistryOpt = None,
    machine_type: TypeOpt = None,
    method: Annotated[Method | None, typer.Option("--method", help="evaluate the newest model of this method")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
    plots: Annotated[
        Path | None, typer.Option("--plots", help="write ROC curves and score histograms (PNG) here")
    ] = None,
    results: Annotated[
        Path | None, typer.Option("--results", help="DCASE score/decision CSVs (default: --plots or var/evaluate)")
    ] = None,
    device: DeviceOpt = Device.AUTO,
    compare: Annotated[
        bool, typer.Option("--compare", help="every method's newest model side by side: compare.md/.json/.png")
    ] = False,
) -> None:
    """AUC / pAUC (max_fpr 0.1) per machine ID on <type>/test clips, scored exactly like the stream."""
    from training.evaluate import evaluate as run_evaluate

    method_name = None if method is None else Method(method).value
    device_name = Device(device).value
    t0 = time.perf_counter()
    if compare:
        from training.compare import compare as run_compare
        from training.compare import markdown

        out_dir = results or plots or Path("var/evaluate")
        table = run_compare(data, _registry(registry), machine_type=machine_type, out_dir=out_dir, device=device_name)
        table["seconds"] = round(time.perf_counter() - t0, 2)
        typer.echo(json.dumps(table) if as_json else markdown(table))
        err_console.print(f"comparison written to {out_dir}/compare.md, compare.json, compare.png")
        return
    report = run_evaluate(
        data,
        _registry(registry),
        machine_type=machine_type,
        method=method_name,
        results_dir=results or plots or Path("var/evaluate"),
        plots_dir=plots,
        device=device_name,
    )
    report["seconds"] = round(time.perf_counter() - t0, 2)
    for item in report["skipped"]:
        err_console.print(f"[yellow]skipped {item['path']}: {item['reason']}[/yellow]")
    if as_json:
        typer.echo(json.dumps(report))
        return
    for mtype, m in report["per_type"].items():
        model = report["models"][mtype]
        typer.echo(
            f"{mtype:12s} {model['method']}/{model['score']} {model['version']}: "
            f"AUC {m['auc_mean']:.3f}  pAUC {m['pauc_mean']:.3f}  worst-ID AUC {m['mauc']:.3f}"
        )
        for row in (r for r in report["per_id"] if r["machine_type"] == mtype):
            typer.echo(f"    {row['machine_id']:12s} AUC {row['auc']:.3f}  pAUC {row['pauc']:.3f}")
    o = report["overall"]
    if o["auc_mean"] is not None:
        typer.echo(f"overall      AUC {o['auc_mean']:.3f}  pAUC {o['pauc_mean']:.3f}")


def bench_methods(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            exists=True,
            file_okay=False,
            help="DCASE folder (default: the synthetic benchmark; test-only folders get an honest split)",
        ),
    ] = None,
    methods: Annotated[str | None, typer.Option("--methods", help="comma-separated (default: all)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="per stage (default: each method's)")] = None,
    out: Annotated[Path, typer.Option("--out", help="where compare.md/.json/.png go")] = Path("var/bench-methods"),
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """Train every method on the same data and compare them (AUC, pAUC, mAUC, train time, inference cost)."""
    from training.auto import parse_methods
    from training.bench import methods_bench
    from training.compare import markdown

    report = methods_bench(data, out, parse_methods(methods), epochs=epochs)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    err_console.print(f"{report['data']}: {report['seconds']} s; see {out}/compare.md, compare.json, compare.png")
