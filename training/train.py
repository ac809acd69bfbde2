"""Training, read top to bottom: records -> windows -> model -> score choice -> thresholds -> artifact.

``train_machine_type`` trains ONE machine type with one method (:mod:`training.methods`):

encoder methods (``clp`` and the other seed methods)
  1. the method trains an encoder (+ an ID classifier when the type has two or more classes, see
     :func:`choose_classes`; else instance discrimination) — :mod:`training.methods.clp` etc.;
  2. embedding bank of the training windows per machine for the kNN density;
  3. score kind chosen between ``neglogp`` and ``knn`` on held-out normal clips only
     (:mod:`training.calibration`).
ae
  The DCASE 2020 dense AE on 5-frame contexts of the same windows (MSE, Adam 1e-3).
statistic methods (``stats-*``)
  Per-band statistics of the windows + a density per machine (:mod:`training.methods.stats`);
  no epochs, seconds per type.

All: the stream's pooling — median filter length and window->clip aggregation — chosen on the
pseudo-anomaly criterion of :mod:`training.selection`; per-machine thresholds on held-out normal
clips (:func:`training.calibration.stream_threshold`), metrics, one artifact via the registry.
Held-out clips: 15 % of each machine's training clips, split by recording (at least one when it has two or more).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from soundwatch.errors import BadInput
from soundwatch.model.device import resolve_device, seed_everything
from soundwatch.model.filters import causal_median
from soundwatch.model.networks import EncoderConfig
from soundwatch.model.registry import Artifact
from soundwatch.model.scorer import WindowScorer, subsample_bank
from soundwatch.params import FeatureParams
from training.calibration import (
    choose_score_kind,
    filtered_scores,
    pseudo_anomaly_auc,
    stream_threshold,
)
from training.datasets import ClipRecord, WindowSet, load_windows, summarize
from training.methods import METHODS, method_for
from training.methods.common import EncoderJob
from training.selection import PseudoSet, choose_pooling, criterion, score_set, split_holdout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    method: str = "clp"
    epochs: int | None = None  # encoder methods: per stage (default 20); ae: total (default 50)
    batch_size: int = 128
    supcon_lr: float = 1e-3
    arc_lr: float = 5e-4
    ae_lr: float = 1e-3
    temperature: float = 0.1
    arc_scale: float = 30.0
    arc_margin: float = 0.7
    holdout_fraction: float = 0.15
    median_k: int = 5  # used as is when choose_pooling is False
    choose_pooling: bool = True  # median_k and clip aggregation from the pseudo-anomaly criterion
    knn_k: int = 5
    negative_fraction: float = 0.25  # share of each batch appended as mel-shifted negative classes
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def stage_epochs(self) -> int:
        if self.epochs is not None:
            return max(1, self.epochs)
        return method_for(self.method).default_epochs


@dataclass
class TrainResult:
    artifact: Artifact
    seconds: float
    skipped: list[tuple[str, str]]


# -- data preparation ---------------------------------------------------------------------------
def leave_one_clip_out_knn(
    scorer: WindowScorer, fit: WindowSet, emb: np.ndarray, median_k: int, seed: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Median-filtered kNN scores of every fit clip against its machine's bank without that clip's windows."""
    full_bank = scorer.bank
    fit_ids = np.array(fit.machine_ids())
    values: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    try:
        for c, record in enumerate(fit.records):
            rows = fit.clip == c
            others = (fit_ids == record.machine_id) & ~rows
            if not rows.any() or not others.any():
                continue
            bank = torch.from_numpy(subsample_bank(emb[others], seed=seed)).to(device)
            scorer.bank = {**full_bank, record.machine_id: bank}
            raw = scorer.score(fit.windows[rows], [record.machine_id] * int(rows.sum()), "knn")
            values.append(causal_median(raw, median_k))
            ids.append(np.full(int(rows.sum()), record.machine_id))
    finally:
        scorer.bank = full_bank
    if not values:
        return np.empty(0), np.empty(0, dtype=object)
    return np.concatenate(values), np.concatenate(ids)


def choose_classes(records: Sequence[ClipRecord]) -> tuple[str, list[str], Callable[[ClipRecord], str]]:
    """Class labels for the ID classifier: ``(source, class names, record -> class)``.

    Machine IDs when a type has two or more; else section+domain+attribute strings when they
    give two or more classes; else ``("none", [], ...)``: density only — stage 1 then uses
    instance discrimination (positives = windows of the same clip) so the encoder still learns
    what stays constant within a recording.
    """
    ids = sorted({r.machine_id for r in records})
    if len(ids) >= 2:
        return "machine_id", ids, lambda r: r.machine_id

    def attr(r: ClipRecord) -> str:
        return "|".join(x for x in (r.machine_id, r.domain or "", r.attributes) if x)

    attrs = sorted({attr(r) for r in records})
    if len(attrs) >= 2:
        return "attributes", attrs, attr
    return "none", [], lambda r: ""


# -- the whole thing ------------------------------------------------------------------------------
def train_machine_type(
    records: Sequence[ClipRecord],
    params: FeatureParams,
    cfg: TrainConfig,
    *,
    parent_version: str | None = None,
) -> TrainResult:
    """Train one machine type on its *normal training* records and return the artifact."""
    t0 = time.perf_counter()
    if cfg.method not in METHODS:
        raise BadInput(f"unknown method {cfg.method!r}", hint=f"valid methods: {', '.join(METHODS)}")
    types = {r.machine_type for r in records}
    if len(types) != 1:
        raise BadInput(f"train_machine_type needs records of one machine type, got {sorted(types)}")
    mtype = types.pop()
    train = [r for r in records if r.split == "train" and r.label == "normal"]
    if not train:
        raise BadInput(
            f"no normal training clips for machine type {mtype!r} (need <type>/train/normal_*.wav)",
            hint="add a train/ folder of normal recordings; test/ clips are never used for training",
        )
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    fit_recs, hold_recs = split_holdout(train, cfg.holdout_fraction, cfg.seed)
    fit = load_windows(fit_recs, params, desc=f"{mtype} features (fit)", progress=cfg.progress)
    hold = load_windows(hold_recs, params, desc=f"{mtype} features (held out)", progress=cfg.progress)
    if len(fit.records) == 0:
        raise BadInput(
            f"every training clip of {mtype!r} was unusable", hint="; ".join(s.reason for s in fit.skipped[:3])
        )
    if len(fit.windows) < 2:
        raise BadInput(
            f"{mtype!r} has {len(fit.windows)} usable training window(s); training needs at least 2",
            hint=f"add normal training clips of at least {params.window_seconds:.1f} s",
        )
    metrics: dict[str, Any] = {}
    machine_ids = sorted({r.machine_id for r in fit.records} | {r.machine_id for r in hold.records})

    method = method_for(cfg.method)
    id_classes: dict[str, list[int]] = {}
    class_source, class_names = "none", []
    labels = fit.clip.astype(np.int64)  # instance discrimination (and ae, which has no classifier)
    if method.classifies:
        class_source, class_names, class_of = choose_classes(fit.records)
        if class_source != "none":
            index = {c: i for i, c in enumerate(class_names)}
            labels = np.array([index[class_of(fit.records[c])] for c in fit.clip], dtype=np.int64)
            for r in fit.records:
                id_classes.setdefault(r.machine_id, [])
                if index[class_of(r)] not in id_classes[r.machine_id]:
                    id_classes[r.machine_id].append(index[class_of(r)])
    job = EncoderJob(fit, labels, len(class_names), cfg, device, gen, metrics, params, id_classes)
    trained = method.train(job)
    state, model_config, scorer, kinds = trained.state, trained.model_config, trained.scorer, trained.kinds
    bank, emb = trained.bank, trained.embeddings

    # Choose the score on held-out normal clips only (fit clips when nothing could be held out).
    calib = hold if len(hold.records) else fit
    metrics["calibration_source"] = "held-out normal clips" if len(hold.records) else "training clips (none held out)"
    calib_clips = [calib.clip_windows(i) for i in range(len(calib.records))]
    calib_ids = [r.machine_id for r in calib.records]
    criteria = {
        kind: pseudo_anomaly_auc(
            lambda w, m, kind=kind: scorer.score(w, m, kind), calib_clips, calib_ids, cfg.median_k, cfg.seed
        )
        for kind in kinds
    }
    score_kind = choose_score_kind(criteria)
    scorer.score_kind = score_kind
    metrics["score_selection"] = {
        "criterion": "mean pseudo-anomaly clip AUC on held-out normal clips",
        "candidates": criteria,
        "chosen": score_kind,
    }

    # The stream's pooling (median filter, clip aggregation) on pseudo-anomalies of the held-out clips.
    median_k, aggregation = cfg.median_k, "mean"
    scored = score_set(scorer.score, PseudoSet.make(list(zip(calib_ids, calib_clips, strict=True)), params, cfg.seed))
    if cfg.choose_pooling:
        median_k, aggregation, pooling_table = choose_pooling(scored)
        metrics["pooling_selection"] = {"candidates": pooling_table, "chosen": f"k{median_k}-{aggregation}"}
    metrics["selection"] = {
        "criterion": "mean over pseudo-anomaly kinds (short, steady) of the clip AUC on held-out normal clips",
        **criterion(scored, median_k, aggregation),
    }

    # Thresholds on the median-filtered held-out window scores, per machine.
    win_scores = scorer.score(calib.windows, calib.machine_ids())
    filtered = filtered_scores(win_scores, calib.clip, median_k)
    calib_win_ids = np.array(calib.machine_ids())
    if score_kind == "knn" and emb is not None and len(hold.records):
        # A threshold from a machine's one or two held-out clips is at the mercy of one odd recording.
        # kNN scores of *fit* clips are honest held-out scores too when the clip's own windows are left
        # out of the bank (leave-one-clip-out), so every normal clip can inform the threshold.
        loco, loco_ids = leave_one_clip_out_knn(scorer, fit, emb, median_k, cfg.seed, device)
        filtered = np.concatenate([filtered, loco])
        calib_win_ids = np.concatenate([calib_win_ids, loco_ids])
        metrics["calibration_source"] = "held-out normal clips + leave-one-clip-out kNN scores of the fit clips"
    # Methods that fit in seconds (statistic methods) score every training clip by a model fitted without
    # it (contiguous folds per machine); the served model is then refitted on all clips below.
    crossed, crossed_ids = method.cross_fitted_scores(
        np.concatenate([fit.windows, hold.windows]),
        np.concatenate([fit.clip, hold.clip + len(fit.records)]),
        [r.machine_id for r in fit.records + hold.records],
        median_k,
        cfg.seed,
    )
    if crossed.size:
        filtered = np.concatenate([filtered, crossed])
        calib_win_ids = np.concatenate([calib_win_ids, crossed_ids])
        metrics["calibration_source"] = "held-out normal clips + cross-fitted scores of every training clip"
    thresholds: dict[str, float] = {}
    for mid in machine_ids:
        vals = filtered[calib_win_ids == mid]
        if vals.size == 0:  # machine with a single clip used for fitting: use its training windows
            own = fit.windows[np.array(fit.machine_ids()) == mid]
            own_scores = scorer.score(own, [mid] * len(own))
            vals = filtered_scores(own_scores, np.zeros(len(own), dtype=np.int64), median_k)
        thresholds[mid], _ = stream_threshold(vals)
    default_threshold, rule = stream_threshold(filtered)
    metrics["heldout_normal_score"] = {"mean": float(filtered.mean()), "std": float(filtered.std())}

    # Where a refit takes seconds, the served model uses every training clip (few-shot: the held-out clips
    # are a third of the data of a machine with 3 clips). The thresholds stay those of the held-out clips
    # scored by the fit-only model, which are higher than the refitted model's scores of normal audio.
    refitted = (
        method.refit(np.concatenate([fit.windows, hold.windows]), fit.machine_ids() + hold.machine_ids(), cfg.seed)
        if len(hold.records)
        else None
    )
    if refitted is not None:
        state, model_config = refitted.state, refitted.model_config
        metrics["refit_on_all_training_clips"] = True
    seconds = time.perf_counter() - t0
    metrics["train_seconds"] = round(seconds, 2)
    metrics["device"] = str(device)
    all_recs = fit.records + hold.records
    data_summary = {
        **summarize(all_recs),
        "fit_clips": len(fit.records),
        "heldout_clips": len(hold.records),
        "fit_windows": int(len(fit.windows)),
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in fit.skipped + hold.skipped],
        "data_cutoff": datetime.fromtimestamp(max(r.path.stat().st_mtime for r in all_recs), UTC).isoformat(),
        "trained_at": datetime.now(UTC).isoformat(),
        "seed": cfg.seed,
        "epochs": cfg.stage_epochs(),
    }
    artifact = Artifact(
        machine_type=mtype,
        method=cfg.method,
        score_kind=score_kind,
        feature_params=params,
        median_k=median_k,
        aggregation=aggregation,
        model_config=model_config,
        state=state,
        class_map=class_names,
        id_classes=id_classes,
        thresholds=thresholds,
        default_threshold=default_threshold,
        threshold_rule=rule,
        knn_k=cfg.knn_k,
        bank=bank,
        data_summary=data_summary,
        metrics=metrics,
        parent_version=parent_version,
        class_source=class_source,
    )
    skipped = [(str(s.path), s.reason) for s in fit.skipped + hold.skipped]
    if not math.isfinite(default_threshold):
        raise BadInput(f"calibration of {mtype!r} produced a non-finite threshold", hint="check the training audio")
    return TrainResult(artifact, seconds, skipped)
