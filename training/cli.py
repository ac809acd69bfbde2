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
from soundwatch.model.device import resolve_device
from soundwatch.model.registry import ModelRegistry
from soundwatch.settings import get_settings
from training.auto import DEFAULT_BUDGET_S, parse_methods, train_auto
from training.baselines import BASELINES
from training.bench import methods_bench, write_basic_benchmark
from training.bench_quality import markdown as quality_markdown
from training.bench_quality import quality_bench
from training.compare import compare as run_compare
from training.compare import markdown
from training.datasets import scan_dataset
from training.dcase import EDITIONS
from training.evaluate import evaluate as run_evaluate
from training.methods import METHOD_HELP, METHODS
from training.synthetic_hard import write_hard_dataset
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
Edition = Enum("Edition", {e: e for e in ("auto", *EDITIONS)}, type=str)  # type: ignore[misc]
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
    edition: Annotated[
        Edition,
        typer.Option(
            "--edition",
            help="DCASE 2021+ metrics and CSV names of this edition's official evaluator (auto: from the file names)",
        ),
    ] = Edition("auto"),
) -> None:
    """AUC / pAUC (max_fpr 0.1) per machine ID on <type>/test clips, scored exactly like the stream.

    DCASE 2021+ names also get the edition's official numbers: AUC per section and domain, pAUC,
    the official harmonic-mean score, and the score / decision CSVs that edition's evaluator reads.
    Unlabelled evaluation clips (section_XX_NNNN.wav) are scored and written, never in a metric.
    """
    method_name = None if method is None else Method(method).value
    device_name = Device(device).value
    t0 = time.perf_counter()
    if compare:
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
        edition=Edition(edition).value,
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
            + ("" if m["official_score"] is None else f"  official {m['official_score']:.3f}")
            + f"  false alarms {_pct(m['false_alarm_rate'])}  recall {_pct(m['recall'])}"
        )
        for row in (r for r in report["per_id"] if r["machine_type"] == mtype):
            typer.echo(f"    {row['machine_id']:12s} AUC {row['auc']:.3f}  pAUC {row['pauc']:.3f}")
        for sec in (r for r in report["per_section"] if r["machine_type"] == mtype):
            cells = "  ".join(f"{k} {_num(v)}" for k, v in sec.items() if k not in ("machine_type", "section"))
            typer.echo(f"    {sec['section']:12s} {cells}")
    o = report["overall"]
    if o["auc_mean"] is not None:
        official = (
            "" if o["official_score"] is None else f"  official score (DCASE {o['edition']}) {o['official_score']:.3f}"
        )
        typer.echo(f"overall      AUC {o['auc_mean']:.3f}  pAUC {o['pauc_mean']:.3f}{official}")
    for mtype, n in report["clips"].items():
        if n["unlabelled"]:
            typer.echo(f"{mtype}: {n['unlabelled']} unlabelled clips scored (in the CSVs, in no metric)")


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


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
    report = methods_bench(data, out, parse_methods(methods), epochs=epochs)
    typer.echo(json.dumps(report) if as_json else markdown(report))
    err_console.print(f"{report['data']}: {report['seconds']} s; see {out}/compare.md, compare.json, compare.png")


def bench_quality(
    data: Annotated[
        Path,
        typer.Option(
            "--data", exists=True, file_okay=False, help="DCASE folder (test-only folders get an honest split)"
        ),
    ],
    methods: Annotated[
        str | None, typer.Option("--methods", help="comma-separated (default: all methods; none: baselines only)")
    ] = None,
    baselines: Annotated[
        str | None, typer.Option("--baselines", help="comma-separated (default: max_1nn,mean_1nn,untrained_knn)")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="per stage (default: each method's)")] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed of training and of the untrained encoder")] = 0,
    device: DeviceOpt = Device.CPU,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")] = False,
) -> None:
    """No-training baselines and every method on one DCASE folder: AUC, pAUC, official score, train s."""
    chosen = BASELINES if baselines is None else tuple(b.strip() for b in baselines.split(",") if b.strip())
    unknown = [b for b in chosen if b not in BASELINES]
    if unknown:
        raise typer.BadParameter(
            f"unknown baselines {unknown}; valid: {', '.join(BASELINES)}", param_hint="--baselines"
        )
    device_name = Device(device).value
    resolve_device(device_name)
    report = quality_bench(
        data,
        () if methods == "none" else parse_methods(methods) if methods else METHODS,
        baselines=chosen,
        epochs=epochs,
        seed=seed,
        device=device_name,
    )
    typer.echo(json.dumps(report) if as_json else quality_markdown(report))
    err_console.print(f"{report['data']}: {report['seconds']} s")


class SynthPreset(str, Enum):
    BASIC = "basic"
    HARD_V1 = "hard-v1"


def synth(
    out: Annotated[Path, typer.Option("--out", help="folder to write the DCASE-layout data set into")],
    preset: Annotated[
        SynthPreset,
        typer.Option(
            "--preset",
            help="basic: the easy set of `bench methods` (fan, pump; DCASE 2020 names); hard-v1: quiet, short and "
            "small faults under a source/target domain shift (DCASE 2022+ names; training/synthetic_hard.py)",
        ),
    ] = SynthPreset.HARD_V1,
    seed: Annotated[int, typer.Option("--seed", help="the same seed writes the same bytes")] = 0,
) -> None:
    """Write a seeded, versioned synthetic benchmark (wav, 16 kHz, DCASE layout) for train / evaluate / bench."""
    if out.exists() and any(out.iterdir()):
        raise typer.BadParameter(f"{out} is not empty; pass a new or empty folder", param_hint="--out")
    if SynthPreset(preset) is SynthPreset.BASIC:
        files = write_basic_benchmark(out, seed)
    else:
        files = write_hard_dataset(out, SynthPreset(preset).value, seed).files
    err_console.print(f"{SynthPreset(preset).value} (seed {seed}): {files} clips written to {out}")
