"""DCASE-style evaluation of registry models on ``<type>/test`` clips.

A clip's score is computed exactly as the stream does: the artifact's window scorer
(:meth:`LoadedModel.score_windows`), then :func:`scoring.filters.clip_score` with the artifact's
``median_k`` — so offline AUC predicts online behaviour.

Metrics (the official DCASE evaluator): per machine ID, AUC = ``roc_auc_score(y, score)`` and
pAUC = ``roc_auc_score(y, score, max_fpr=0.1)`` (McClish-standardised, chance = 0.5). Per type:
arithmetic and harmonic means over IDs and ``mauc`` = the worst ID's AUC. ``overall`` = the mean
of the per-type means (every type weighs the same, as in the DCASE 2020 tables).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from scoring.filters import clip_score
from soundwatch.errors import BadInput
from training.datasets import ClipRecord, WindowSet, load_windows, scan_dataset
from training.registry import ArtifactError, LoadedModel, ModelRegistry

log = logging.getLogger(__name__)
MAX_FPR = 0.1


def auc(y: Sequence[int], scores: Sequence[float]) -> float:
    return float(roc_auc_score(np.asarray(y), np.asarray(scores)))


def pauc(y: Sequence[int], scores: Sequence[float], max_fpr: float = MAX_FPR) -> float:
    """Standardised partial AUC for FPR <= ``max_fpr``, exactly the DCASE evaluator's call."""
    return float(roc_auc_score(np.asarray(y), np.asarray(scores), max_fpr=max_fpr))


@dataclass
class ClipResult:
    record: ClipRecord
    score: float
    threshold: float

    @property
    def decision(self) -> int:
        return int(self.score > self.threshold)


def pick_model(registry: ModelRegistry, machine_type: str, method: str | None, device: str) -> LoadedModel:
    """The current/newest model of ``machine_type``; with ``method``, the newest of that method."""
    model = registry.load(machine_type, None, device)
    if method is None or model.method == method:
        return model
    for version in reversed(registry.versions(machine_type)):
        if registry.metadata(machine_type, version)["method"] == method:
            return registry.load(machine_type, version, device)
    raise ArtifactError(
        f"no {method!r} model for machine type {machine_type!r} under {registry.root}",
        hint=f"train one with `soundwatch train --machine-type {machine_type} --method {method}`",
    )


def score_clips(
    model: LoadedModel, records: Sequence[ClipRecord], progress: bool = True
) -> tuple[list[ClipResult], list[tuple[str, str]]]:
    """Clip scores of ``records`` (bad files skipped and returned as (path, reason))."""
    ws = load_windows(records, model.feature_params, desc=f"{model.machine_type} test features", progress=progress)
    return score_window_set(model, ws), [(str(s.path), s.reason) for s in ws.skipped]


def score_window_set(model: LoadedModel, ws: WindowSet) -> list[ClipResult]:
    """Clip scores of already computed windows, exactly as the stream scores them."""
    window_scores = model.score_windows(ws.windows, ws.machine_ids()) if len(ws.windows) else np.zeros(0)
    out = []
    for i, rec in enumerate(ws.records):
        s = clip_score(window_scores[ws.clip == i], model.median_k, model.aggregation)
        out.append(ClipResult(rec, s, model.threshold_for(rec.machine_id)))
    return out


def _unreadable_listing(skipped: Sequence[tuple[str, str]], limit: int = 20) -> str:
    """``path: reason`` lines for an error message (the first ``limit``, then how many more)."""
    lines = [f"  {path}: {reason}" for path, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)


def by_machine(results: Sequence[ClipResult]) -> dict[str, list[ClipResult]]:
    """Clip results grouped by machine ID (metrics are per machine, as in the DCASE evaluator)."""
    out: dict[str, list[ClipResult]] = {}
    for r in results:
        out.setdefault(r.record.machine_id, []).append(r)
    return out


def clip_metrics(results: Sequence[ClipResult]) -> tuple[float, float] | None:
    """(AUC, pAUC) of one machine's clips, None when they are all of one label."""
    y = [int(r.record.is_anomaly) for r in results]
    if len(set(y)) < 2:
        return None
    s = [r.score for r in results]
    return auc(y, s), pauc(y, s)


def evaluate(
    data: Path,
    registry: ModelRegistry,
    *,
    machine_type: str | None = None,
    method: str | None = None,
    results_dir: Path | None = None,
    plots_dir: Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Score every labelled test clip and return the report (see module docstring).

    Unreadable clips are skipped and listed in ``skipped``; a machine type none of whose test clips
    can be read raises BadInput with the files and reasons (a report without it would look complete).
    """
    records = [r for r in scan_dataset(data, machine_type) if r.split == "test"]
    if not records:
        raise BadInput(f"no test clips under {data}", hint="expected <type>/test/{normal,anomaly}_*.wav")
    per_id: list[dict[str, Any]] = []
    per_type: dict[str, dict[str, float]] = {}
    models: dict[str, dict[str, str]] = {}
    skipped: list[tuple[str, str]] = []
    types = sorted({r.machine_type for r in records})
    for mtype in tqdm(types, desc="evaluate", unit="type", disable=not progress or len(types) < 2):
        model = pick_model(registry, mtype, method, device)
        models[mtype] = {"version": model.version, "method": model.method, "score": model.score_kind}
        results, bad = score_clips(model, [r for r in records if r.machine_type == mtype], progress)
        skipped += bad
        if not results:
            raise BadInput(
                f"no test clip of {mtype!r} under {data} could be read:\n" + _unreadable_listing(bad),
                hint="fix or remove these files, or leave the type out with --machine-type",
            )
        by_id = by_machine(results)
        aucs, paucs = [], []
        for mid in sorted(by_id):
            m = clip_metrics(by_id[mid])
            if m is None:
                log.warning("%s/%s: test clips of only one label, no AUC", mtype, mid)
                continue
            per_id.append(
                {
                    "machine_type": mtype,
                    "machine_id": mid,
                    "auc": m[0],
                    "pauc": m[1],
                    "n_normal": sum(not r.record.is_anomaly for r in by_id[mid]),
                    "n_anomaly": sum(r.record.is_anomaly for r in by_id[mid]),
                }
            )
            aucs.append(m[0])
            paucs.append(m[1])
        if aucs:
            per_type[mtype] = {
                "auc_mean": float(np.mean(aucs)),
                "pauc_mean": float(np.mean(paucs)),
                "auc_hmean": float(hmean(np.maximum(aucs, 1e-12))),
                "pauc_hmean": float(hmean(np.maximum(paucs, 1e-12))),
                "mauc": float(np.min(aucs)),
            }
        if results_dir is not None:
            write_csvs(results_dir, mtype, by_id)
        if plots_dir is not None:
            write_plots(plots_dir, mtype, model, by_id)
    overall = {
        "auc_mean": float(np.mean([t["auc_mean"] for t in per_type.values()])) if per_type else None,
        "pauc_mean": float(np.mean([t["pauc_mean"] for t in per_type.values()])) if per_type else None,
    }
    return {
        "per_id": per_id,
        "per_type": per_type,
        "overall": overall,
        "models": models,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }


def write_csvs(out: Path, mtype: str, by_id: dict[str, list[ClipResult]]) -> None:
    """DCASE submission files: ``anomaly_score_<type>_<id>.csv`` and ``decision_result_<type>_<id>.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    for mid, results in by_id.items():
        with (out / f"anomaly_score_{mtype}_{mid}.csv").open("w", newline="") as f:
            csv.writer(f).writerows((r.record.path.name, f"{r.score:.6f}") for r in results)
        with (out / f"decision_result_{mtype}_{mid}.csv").open("w", newline="") as f:
            csv.writer(f).writerows((r.record.path.name, r.decision) for r in results)


def write_plots(out: Path, mtype: str, model: LoadedModel, by_id: dict[str, list[ClipResult]]) -> None:
    """``roc_<type>.png`` (one curve per ID) and ``hist_<type>.png`` (normal vs anomaly, thresholds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    for mid, results in sorted(by_id.items()):
        y = [int(r.record.is_anomaly) for r in results]
        if len(set(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, [r.score for r in results])
        ax.plot(fpr, tpr, label=f"{mid} (AUC {auc(y, [r.score for r in results]):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.axvline(MAX_FPR, color="grey", lw=0.8, ls="--")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"{mtype} — {model.method}/{model.score_kind} {model.version}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"roc_{mtype}.png", dpi=100)
    plt.close(fig)

    ids = sorted(by_id)
    fig, axes = plt.subplots(len(ids), 1, figsize=(6, 2.2 * len(ids)), squeeze=False)
    for ax, mid in zip(axes[:, 0], ids, strict=True):
        normal = [r.score for r in by_id[mid] if not r.record.is_anomaly]
        anomalous = [r.score for r in by_id[mid] if r.record.is_anomaly]
        ax.hist(normal, bins=20, alpha=0.6, label="normal")
        ax.hist(anomalous, bins=20, alpha=0.6, label="anomaly")
        ax.axvline(model.threshold_for(mid), color="k", ls="--", lw=1, label="threshold")
        ax.set_title(f"{mtype}/{mid} clip scores", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"hist_{mtype}.png", dpi=100)
    plt.close(fig)
