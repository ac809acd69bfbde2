"""DCASE-style evaluation of registry models on ``<type>/test`` clips.

A clip's score is computed exactly as the stream does: the artifact's window scorer
(:meth:`LoadedModel.score_windows`), then :func:`soundwatch.model.filters.clip_score` with the artifact's
``median_k`` — so offline AUC predicts online behaviour.

Metrics: per machine ID / section (domains pooled), AUC = ``roc_auc_score(y, score)`` and
pAUC = ``roc_auc_score(y, score, max_fpr=0.1)`` (McClish-standardised, chance = 0.5). Per type:
arithmetic and harmonic means over IDs and ``mauc`` = the worst ID's AUC. ``overall`` = the mean
of the per-type means (every type weighs the same, as in the DCASE 2020 tables). For DCASE 2021+
names, the edition's official numbers too (:mod:`training.dcase`): AUC per section and domain,
the edition's pAUC, the official harmonic-mean score per type and overall, and score / decision
CSVs named as that edition's evaluator reads them. Every type gets the false-alarm rate and recall
of the model's decisions (score > threshold). Unlabelled evaluation clips are scored and written,
never counted in a metric.
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

from soundwatch.errors import BadInput
from soundwatch.model.filters import clip_score
from soundwatch.model.registry import ArtifactError, LoadedModel, ModelRegistry
from training import dcase
from training.datasets import ClipRecord, WindowSet, load_windows, scan_dataset

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
        if registry.metadata(machine_type, version).method == method:
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
    """(AUC, pAUC) of one machine's labelled clips, None when they are all of one label."""
    labelled = [r for r in results if r.record.is_labelled]
    y = [int(r.record.is_anomaly) for r in labelled]
    if len(set(y)) < 2:
        return None
    s = [r.score for r in labelled]
    return auc(y, s), pauc(y, s)


def resolve_edition(records: Sequence[ClipRecord], edition: str) -> dcase.Edition | None:
    """The DCASE edition whose metrics apply: None for DCASE 2020 names, else ``edition`` or detected."""
    new = [r for r in records if r.scheme == "dcase2021"]
    if not new:
        if edition != "auto":
            log.warning("--edition %s ignored: the clips follow DCASE 2020 names (no sections/domains)", edition)
        return None
    if edition != "auto":
        if edition not in dcase.EDITIONS:
            raise BadInput(f"unknown DCASE edition {edition!r}", hint="use one of: auto, " + ", ".join(dcase.EDITIONS))
        return edition  # type: ignore[return-value]
    return dcase.detect_edition((r.path.name for r in new), (r.attributes for r in new))


def scored_clips(results: Sequence[ClipResult]) -> list[dcase.ScoredClip]:
    """Clip results of DCASE 2021+ records as :class:`training.dcase.ScoredClip`."""
    return [
        dcase.ScoredClip(
            r.record.path.name,
            r.record.section or r.record.machine_id,
            r.record.domain,
            None if not r.record.is_labelled else int(r.record.is_anomaly),
            r.score,
            r.decision,
        )
        for r in results
    ]


def type_metrics(
    mtype: str, results: Sequence[ClipResult], edition: dcase.Edition | None
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """(per-ID rows, per-type summary or {}, per-section rows of the edition) of one type's results."""
    by_id = by_machine(results)
    per_id: list[dict[str, Any]] = []
    aucs, paucs = [], []
    for mid in sorted(by_id):
        m = clip_metrics(by_id[mid])
        if m is None:
            if any(r.record.is_labelled for r in by_id[mid]):
                log.warning("%s/%s: test clips of only one label, no AUC", mtype, mid)
            continue
        labelled = [r for r in by_id[mid] if r.record.is_labelled]
        per_id.append(
            {
                "machine_type": mtype,
                "machine_id": mid,
                "auc": m[0],
                "pauc": m[1],
                "n_normal": sum(not r.record.is_anomaly for r in labelled),
                "n_anomaly": sum(r.record.is_anomaly for r in labelled),
            }
        )
        aucs.append(m[0])
        paucs.append(m[1])
    per_section: list[dict[str, Any]] = []
    if edition is not None:
        clips = scored_clips(results)
        for section in sorted({c.section for c in clips}):
            mine = [c for c in clips if c.section == section]
            if all(c.label is None for c in mine):
                continue
            per_section.append({"machine_type": mtype, "section": section, **dcase.section_metrics(mine, edition)})
    summary: dict[str, Any] = {}
    if aucs:
        labelled = [r for r in results if r.record.is_labelled]
        rates = dcase.decision_rates([int(r.record.is_anomaly) for r in labelled], [r.decision for r in labelled])
        summary = {
            "auc_mean": float(np.mean(aucs)),
            "pauc_mean": float(np.mean(paucs)),
            "auc_hmean": float(hmean(np.maximum(aucs, 1e-12))),
            "pauc_hmean": float(hmean(np.maximum(paucs, 1e-12))),
            "mauc": float(np.min(aucs)),
            "official_score": None if edition is None else dcase.official_score(per_section, edition),
            "false_alarm_rate": rates["false_alarm_rate"],
            "recall": rates["recall"],
        }
    return per_id, summary, per_section


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
    edition: str = "auto",
) -> dict[str, Any]:
    """Score every test clip and return the report (see module docstring).

    Unreadable clips are skipped and listed in ``skipped``; a machine type none of whose test clips
    can be read raises BadInput with the files and reasons (a report without it would look complete).
    """
    records = [r for r in scan_dataset(data, machine_type, unlabelled=True) if r.split == "test"]
    if not records:
        raise BadInput(f"no test clips under {data}", hint="expected <type>/test/{normal,anomaly}_*.wav")
    ed = resolve_edition(records, edition)
    per_id: list[dict[str, Any]] = []
    per_type: dict[str, dict[str, Any]] = {}
    per_section: list[dict[str, Any]] = []
    clips: dict[str, dict[str, int]] = {}
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
        type_ed = ed if any(r.record.scheme == "dcase2021" for r in results) else None
        rows, summary, sections = type_metrics(mtype, results, type_ed)
        per_id += rows
        per_section += sections
        if summary:
            per_type[mtype] = summary
        n_unlabelled = sum(not r.record.is_labelled for r in results)
        clips[mtype] = {"labelled": len(results) - n_unlabelled, "unlabelled": n_unlabelled}
        if results_dir is not None:
            write_csvs(results_dir, mtype, results, type_ed)
        if plots_dir is not None:
            write_plots(plots_dir, mtype, model, by_machine([r for r in results if r.record.is_labelled]))
    overall = {
        "auc_mean": float(np.mean([t["auc_mean"] for t in per_type.values()])) if per_type else None,
        "pauc_mean": float(np.mean([t["pauc_mean"] for t in per_type.values()])) if per_type else None,
        "official_score": None if ed is None else dcase.official_score(per_section, ed),
        "edition": ed,
    }
    return {
        "per_id": per_id,
        "per_type": per_type,
        "per_section": per_section,
        "overall": overall,
        "clips": clips,
        "models": models,
        "skipped": [{"path": p, "reason": r} for p, r in skipped],
    }


def write_csvs(out: Path, mtype: str, results: Sequence[ClipResult], edition: dcase.Edition | None) -> None:
    """Score and decision CSVs (``name,value`` rows) named as the evaluator of ``edition`` reads them.

    DCASE 2020 names (``edition`` None): ``anomaly_score_<type>_id_XX.csv`` / ``decision_result_...``;
    2021+: :func:`training.dcase.score_file_names` (per section, and per domain for 2021).
    """
    out.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, str], list[ClipResult]] = {}
    for r in results:
        if edition is None:
            key = (
                f"anomaly_score_{mtype}_{r.record.machine_id}.csv",
                f"decision_result_{mtype}_{r.record.machine_id}.csv",
            )
        else:
            names = dcase.score_file_names(mtype, r.record.section or r.record.machine_id, edition)
            if edition == "2021" and r.record.domain is None:
                raise BadInput(
                    f"{r.record.path.name}: DCASE 2021 score files are per domain, the name has none",
                    hint="pass --edition 2022 (or later) for section_XX_NNNN.wav names",
                )
            key = names[r.record.domain if edition == "2021" else None]
        files.setdefault(key, []).append(r)
    for (score_name, decision_name), rows in files.items():
        rows = sorted(rows, key=lambda r: r.record.path.name)
        with (out / score_name).open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows((r.record.path.name, f"{r.score:.6f}") for r in rows)
        with (out / decision_name).open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows((r.record.path.name, r.decision) for r in rows)


def write_plots(out: Path, mtype: str, model: LoadedModel, by_id: dict[str, list[ClipResult]]) -> None:
    """``roc_<type>.png`` (one curve per ID) and ``hist_<type>.png`` (normal vs anomaly, thresholds)."""
    import matplotlib  # deferred: loads matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib

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
