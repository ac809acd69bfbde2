"""``soundwatch bench quality``: the reference baselines and every method on one DCASE folder, one JSON.

For each machine type of the folder (a test-only folder first gets :func:`training.bench.honest_split`):
the no-training baselines of :mod:`training.baselines`, then every method of
:data:`training.methods.METHODS` (or ``--methods``) trained on the type's normal training clips
(private registry, CPU unless told) and scored exactly like ``evaluate`` (stream scoring). Each entry:
per type AUC and pAUC (mean over machine IDs / sections, domains pooled, like ``evaluate``'s
``auc_mean`` / ``pauc_mean``), the DCASE official score of the folder's edition (2021+ names; None for
DCASE 2020 names), train seconds; ``overall``: the mean over types of AUC / pAUC, the official score
over every type's sections, the summed train seconds.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from soundwatch.errors import BadInput
from soundwatch.model.registry import ModelRegistry
from soundwatch.params import FeatureParams
from training import dcase
from training.baselines import BASELINES, run_baseline
from training.bench import honest_split
from training.datasets import load_windows, scan_dataset
from training.evaluate import ClipResult, resolve_edition, score_window_set, type_metrics
from training.train import TrainConfig, train_machine_type

log = logging.getLogger(__name__)


def _entry(mtype: str, results: list[ClipResult], edition: dcase.Edition | None, seconds: float) -> dict[str, Any]:
    _rows, summary, sections = type_metrics(mtype, results, edition)
    return {
        "auc": summary.get("auc_mean"),
        "pauc": summary.get("pauc_mean"),
        "official_score": summary.get("official_score"),
        "train_s": round(seconds, 2),
        "_sections": sections,
    }


def quality_bench(
    data: Path,
    methods: Sequence[str],
    *,
    baselines: Sequence[str] = BASELINES,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    params: FeatureParams | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The report (see the module docstring): ``{"data", "edition", "types", "entries": {name: ...}}``."""
    params = params or FeatureParams()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="soundwatch-quality-") as tmp:
        root = Path(tmp)
        records = scan_dataset(data)
        if any(r.split == "train" for r in records):
            data_dir, source = data, str(data)
        else:
            data_dir = honest_split(data, root / "split")
            source = f"{data} (half of each machine's normal clips moved to train/)"
            records = scan_dataset(data_dir)
        test_all = [r for r in records if r.split == "test"]
        if not test_all:
            raise BadInput(f"no labelled test clips under {data}", hint="expected <type>/test/*_{normal,anomaly}_*")
        edition = resolve_edition(test_all, "auto")
        registry = ModelRegistry(root / "registry")
        per: dict[str, dict[str, dict[str, Any]]] = {}
        types = sorted({r.machine_type for r in records})
        for mtype in types:
            train_recs = [r for r in records if r.machine_type == mtype and r.split == "train" and not r.is_anomaly]
            test_recs = [r for r in test_all if r.machine_type == mtype]
            if not train_recs or not test_recs:
                log.warning("%s: no normal training clips or no test clips, left out", mtype)
                continue
            type_ed = edition if any(r.scheme == "dcase2021" for r in test_recs) else None
            train_ws = load_windows(train_recs, params, desc=f"{mtype} train features", progress=progress)
            test_ws = load_windows(test_recs, params, desc=f"{mtype} test features", progress=progress)
            for name in baselines:
                t0 = time.perf_counter()
                results = run_baseline(name, train_ws, test_ws, seed=seed)
                per.setdefault(f"baseline:{name}", {})[mtype] = _entry(
                    mtype, results, type_ed, time.perf_counter() - t0
                )
            mine = [r for r in records if r.machine_type == mtype]
            for method in methods:
                cfg = TrainConfig(method=method, epochs=epochs, seed=seed, device=device, progress=progress)
                result = train_machine_type(mine, params, cfg)
                version = registry.save(result.artifact)
                model = registry.load(mtype, version, device)
                ws = test_ws
                if model.feature_params != params:
                    ws = load_windows(test_recs, model.feature_params, progress=progress)
                per.setdefault(method, {})[mtype] = _entry(mtype, score_window_set(model, ws), type_ed, result.seconds)
    entries = {name: _summarise(by_type, edition) for name, by_type in per.items()}
    return {
        "data": source,
        "edition": edition,
        "types": types,
        "epochs": epochs,
        "seed": seed,
        "entries": entries,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


def _summarise(by_type: dict[str, dict[str, Any]], edition: dcase.Edition | None) -> dict[str, Any]:
    sections = [s for e in by_type.values() for s in e.pop("_sections")]
    aucs = [e["auc"] for e in by_type.values() if e["auc"] is not None]
    paucs = [e["pauc"] for e in by_type.values() if e["pauc"] is not None]
    overall = {
        "auc": float(np.mean(aucs)) if aucs else None,
        "pauc": float(np.mean(paucs)) if paucs else None,
        "official_score": None if edition is None else dcase.official_score(sections, edition),
        "train_s": round(float(sum(e["train_s"] for e in by_type.values())), 2),
    }
    return {"per_type": by_type, "overall": overall}


def markdown(report: dict[str, Any]) -> str:
    """The overall row of every entry as a Markdown table (baselines first)."""

    def f(v: Any) -> str:
        return "–" if v is None else f"{v:.3f}"

    lines = ["| entry | AUC | pAUC | official score | train s |", "|---|---|---|---|---|"]
    for name, e in report["entries"].items():
        o = e["overall"]
        lines.append(f"| {name} | {f(o['auc'])} | {f(o['pauc'])} | {f(o['official_score'])} | {o['train_s']:.1f} |")
    return "\n".join(lines) + "\n"
