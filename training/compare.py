"""``soundwatch evaluate --compare``: every method's newest model of each type, side by side.

For each machine type in the test data and each method that has a model of that type in the
registry, the newest model of that method is evaluated exactly like ``evaluate`` does (stream
scoring: window scores, median filter, clip statistic) and one row is written: AUC and pAUC (mean
over IDs), mAUC (the worst ID's AUC), training time (from the artifact) and inference cost per window
(CPU seconds of the model on the test windows, measured here on one thread; the log-mel features are
computed once per type and not counted: they are the same for every method). The table goes to
``compare.md`` and ``compare.json`` and, as a picture, ``compare.png`` (AUC per type and method).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import hmean

from soundwatch.errors import BadInput
from soundwatch.model.registry import ModelRegistry
from training.datasets import WindowSet, load_windows, scan_dataset
from training.evaluate import ClipResult, by_machine, clip_metrics, score_window_set

COLUMNS = ("machine_type", "method", "score", "version", "auc", "pauc", "mauc", "train_s", "infer_ms_per_window")


def newest_per_method(registry: ModelRegistry, machine_type: str, device: str = "cpu") -> dict[str, Any]:
    """``{method: LoadedModel}`` with the newest version of each method of ``machine_type``."""
    newest: dict[str, str] = {}
    for version in reversed(registry.versions(machine_type)):
        newest.setdefault(registry.metadata(machine_type, version).method, version)
    return {method: registry.load(machine_type, version, device) for method, version in newest.items()}


def compare(
    data: Path,
    registry: ModelRegistry,
    *,
    machine_type: str | None = None,
    out_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """The comparison report (rows as in :data:`COLUMNS`, plus per-method means over types)."""
    records = [r for r in scan_dataset(data, machine_type) if r.split == "test"]
    if not records:
        raise BadInput(f"no test clips under {data}", hint="expected <type>/test/{normal,anomaly}_*.wav")
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # inference cost per window on one core, comparable across methods
    try:
        for mtype in sorted({r.machine_type for r in records}):
            models = newest_per_method(registry, mtype, device)
            if not models:
                continue
            mine = [r for r in records if r.machine_type == mtype]
            windows: dict[str, WindowSet] = {}  # per feature parameters (the same for all methods by default)
            for method, model in sorted(models.items()):
                key = model.feature_params.canonical_json()
                if key not in windows:
                    windows[key] = load_windows(
                        mine, model.feature_params, desc=f"{mtype} test features", progress=progress
                    )
                ws = windows[key]
                t0 = time.process_time()
                results = score_window_set(model, ws)
                cpu = time.process_time() - t0
                rows.append(_row(mtype, method, model, results, cpu, len(ws.windows)))
    finally:
        torch.set_num_threads(threads)
    if not rows:
        raise BadInput(
            f"no models in {registry.root} for the types under {data}",
            hint="train some first: `soundwatch train --data DIR --method M` for each method",
        )
    report = {"rows": rows, "per_method": _per_method(rows)}
    if out_dir is not None:
        write_outputs(report, out_dir)
    return report


def _row(
    mtype: str, method: str, model: Any, results: list[ClipResult], cpu_s: float, n_windows: int
) -> dict[str, Any]:
    per_id = [m for m in (clip_metrics(v) for v in by_machine(results).values()) if m is not None]
    aucs = [a for a, _ in per_id]
    return {
        "machine_type": mtype,
        "method": method,
        "score": model.score_kind,
        "version": model.version,
        "auc": float(np.mean(aucs)) if aucs else None,
        "pauc": float(np.mean([p for _, p in per_id])) if per_id else None,
        "auc_hmean": float(hmean(np.maximum(aucs, 1e-12))) if aucs else None,
        "mauc": float(np.min(aucs)) if aucs else None,
        "train_s": model.metadata.metrics.get("train_seconds"),
        "infer_ms_per_window": round(1000.0 * cpu_s / max(1, n_windows), 3),
        "n_ids": len(per_id),
    }


def _per_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method and r["auc"] is not None]
        if not mine:
            continue
        out[method] = {
            "types": len(mine),
            "auc": float(np.mean([r["auc"] for r in mine])),
            "pauc": float(np.mean([r["pauc"] for r in mine])),
            "mauc": float(np.mean([r["mauc"] for r in mine])),
            "train_s": float(np.sum([r["train_s"] or 0.0 for r in mine])),
            "infer_ms_per_window": float(np.mean([r["infer_ms_per_window"] for r in mine])),
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (per type and method, then the per-method means)."""

    def f(v: Any, nd: int = 3) -> str:
        return "–" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)

    lines = [
        "| type | method | score | IDs | AUC | pAUC | mAUC | train s | infer ms/window |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['machine_type']} | {r['method']} | {r['score']} | {r['n_ids']} | {f(r['auc'])} | "
            f"{f(r['pauc'])} | {f(r['mauc'])} | {f(r['train_s'], 1)} | "
            f"{f(r['infer_ms_per_window'], 2)} |"
        )
    lines += [
        "",
        "| method (mean over types) | AUC | pAUC | mAUC | train s (sum) | infer ms/window |",
        "|---|---|---|---|---|---|",
    ]
    for method, m in report["per_method"].items():
        lines.append(
            f"| {method} | {f(m['auc'])} | {f(m['pauc'])} | {f(m['mauc'])} | {f(m['train_s'], 1)} | "
            f"{f(m['infer_ms_per_window'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out_dir: Path) -> None:
    """``compare.md``, ``compare.json`` and ``compare.png`` (grouped bars: AUC per type, one bar per method)."""
    import matplotlib  # deferred: loads matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(markdown(report))
    (out_dir / "compare.json").write_text(json.dumps(report, indent=2))
    types = sorted({r["machine_type"] for r in report["rows"]})
    methods = sorted({r["method"] for r in report["rows"]})
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(types) * max(1, len(methods)) / 3), 3.6))
    for i, method in enumerate(methods):
        vals = [
            next((r["auc"] or 0.0 for r in report["rows"] if r["machine_type"] == t and r["method"] == method), 0.0)
            for t in types
        ]
        ax.bar(np.arange(len(types)) + i * width - 0.4 + width / 2, vals, width, label=method)
    ax.axhline(0.5, color="k", ls=":", lw=0.8)
    ax.set(
        xticks=np.arange(len(types)),
        xticklabels=types,
        ylim=(0, 1),
        ylabel="AUC (mean over IDs)",
        title="methods compared on the same test clips",
    )
    ax.legend(fontsize=7, ncol=min(len(methods), 6))
    fig.tight_layout()
    fig.savefig(out_dir / "compare.png", dpi=100)
    plt.close(fig)
