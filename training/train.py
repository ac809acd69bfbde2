"""Training, read top to bottom: records -> windows -> model -> score choice -> thresholds -> artifact.

``train_machine_type`` trains ONE machine type with method ``clp`` (default) or ``ae``:

clp
  1. stage 1, supervised contrastive (SupCon, temperature 0.1) on the encoder + a projection
     head; positives = windows of the same class (machine ID; see :func:`choose_classes`);
  2. stage 2, ArcFace fine-tuning of the encoder with an ID classifier (s=30, m=0.7);
     in both stages a quarter of each batch is appended again, shifted by 4-12 mel bins, as
     extra "shifted machine" classes (:func:`with_position_negatives`);
  3. embedding bank of the training windows per machine for the kNN density;
  4. score kind chosen between ``neglogp`` and ``knn`` on held-out normal clips only
     (:mod:`training.calibration`).
ae
  The DCASE 2020 dense AE on 5-frame contexts of the same windows (MSE, Adam 1e-3).

Both: per-machine thresholds on held-out normal clips, metrics, one artifact via the registry.
Held-out clips: 15 % of each machine's training clips (at least one when it has two or more).
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
from torch import nn
from tqdm import tqdm

from scoring.filters import causal_median
from soundwatch.errors import BadInput
from soundwatch.params import FeatureParams
from training.calibration import (
    choose_score_kind,
    filtered_scores,
    fit_threshold,
    pseudo_anomaly_auc,
)
from training.datasets import ClipRecord, WindowSet, load_windows, summarize
from training.device import autocast, grad_scaler, optimizer_step, resolve_device, seed_everything
from training.models import AEConfig, ArcMarginHead, Encoder, EncoderConfig, FrameAE, ProjectionHead, supcon_loss
from training.registry import Artifact
from training.scorer import WindowScorer, subsample_bank

log = logging.getLogger(__name__)

METHODS = ("clp", "ae")


@dataclass(frozen=True)
class TrainConfig:
    method: str = "clp"
    epochs: int | None = None  # clp: per stage (default 20); ae: total (default 50)
    batch_size: int = 128
    supcon_lr: float = 1e-3
    arc_lr: float = 5e-4
    ae_lr: float = 1e-3
    temperature: float = 0.1
    arc_scale: float = 30.0
    arc_margin: float = 0.7
    holdout_fraction: float = 0.15
    median_k: int = 5
    knn_k: int = 5
    negative_fraction: float = 0.25  # share of each batch appended as mel-shifted negative classes
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def stage_epochs(self) -> int:
        if self.epochs is not None:
            return max(1, self.epochs)
        return 20 if self.method == "clp" else 50


@dataclass
class TrainResult:
    artifact: Artifact
    seconds: float
    skipped: list[tuple[str, str]]


# -- data preparation ---------------------------------------------------------------------------
def leave_one_clip_out_knn(scorer: WindowScorer, fit: WindowSet, emb: np.ndarray, median_k: int, seed: int,
                           device: torch.device) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
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


def split_holdout(
    records: Sequence[ClipRecord], fraction: float, seed: int
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """(fit, holdout) per machine: ``round(fraction*n)`` clips (>= 1 when n >= 2) held out."""
    rng = np.random.default_rng(seed)
    fit: list[ClipRecord] = []
    hold: list[ClipRecord] = []
    for mid in sorted({r.machine_id for r in records}):
        mine = sorted((r for r in records if r.machine_id == mid), key=lambda r: str(r.path))
        n_hold = max(1, round(fraction * len(mine))) if len(mine) >= 2 else 0
        order = rng.permutation(len(mine))
        hold += [mine[i] for i in sorted(order[:n_hold])]
        fit += [mine[i] for i in sorted(order[n_hold:])]
    return fit, hold


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


def with_position_negatives(x: torch.Tensor, y: torch.Tensor, n_labels: int, fraction: float,
                            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Append frequency-shifted copies of part of a batch as *extra classes* (label + ``n_labels``).

    Why: CNNs are nearly shift-invariant, but on a spectrogram a pattern's mel position is its
    physics (a resonance that moved is a fault). Teaching the encoder that a window shifted by
    4-12 mel bins is *another* machine (seed paper 4, "adversarial negatives") makes the
    embedding sensitive to where energy sits, which ID classes alone (often separable by pitch)
    do not require. Held-out selection uses a 2-bin shift, a magnitude training never sees.
    """
    n = int(round(fraction * x.shape[0]))
    if n == 0:
        return x, y
    src = x[:n]
    shifts = torch.randint(4, 13, (n,), generator=gen) * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
    neg = torch.stack([_shift_mel(w, int(s)) for w, s in zip(src, shifts, strict=True)])
    return torch.cat([x, neg.to(x.device)]), torch.cat([y, y[:n] + n_labels])


def _shift_mel(w: torch.Tensor, s: int) -> torch.Tensor:
    """Shift a [n_mels, W] window by ``s`` mel bins, repeating the edge bin into the gap."""
    out = torch.roll(w, s, dims=0)
    if s > 0:
        out[:s] = w[:1]
    elif s < 0:
        out[s:] = w[-1:]
    return out


def _norm_sample(windows: np.ndarray, seed: int, limit: int = 20_000) -> torch.Tensor:
    """A random subset of windows (all machines, not the first files) for the input statistics."""
    idx = np.arange(len(windows))
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), size=limit, replace=False))
    return torch.from_numpy(np.asarray(windows[idx], dtype=np.float32))


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size) if i + batch_size <= n or i == 0]


# -- clp -------------------------------------------------------------------------------------------
def _train_clp(ws: WindowSet, labels: np.ndarray, n_classes: int, cfg: TrainConfig, device: torch.device,
               gen: torch.Generator, metrics: dict[str, Any]) -> tuple[Encoder, ArcMarginHead | None]:  # fmt: skip
    p_enc = EncoderConfig(**{**cfg.encoder.to_dict(), "n_mels": ws.windows.shape[1],
                             "window_frames": ws.windows.shape[2], "channels": cfg.encoder.channels})  # fmt: skip
    encoder = Encoder(p_enc)
    encoder.norm.fit(_norm_sample(ws.windows, cfg.seed))
    encoder.to(device)
    x_all = torch.from_numpy(np.asarray(ws.windows))
    y_all = torch.from_numpy(labels)
    epochs = cfg.stage_epochs()
    scaler = grad_scaler(device)
    n_labels = int(labels.max()) + 1  # real classes (or clips); shifted copies get label + n_labels

    # Stage 1: SupCon, positives = same class (or same clip when there are no classes).
    proj = ProjectionHead(p_enc.embedding_dim).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *proj.parameters()], lr=cfg.supcon_lr)
    losses = []
    for _ in tqdm(range(epochs), desc="clp stage 1 (SupCon)", unit="epoch", disable=not cfg.progress, leave=False):
        encoder.train()
        total = 0.0
        for idx in _batches(len(x_all), cfg.batch_size, gen):
            xb, yb = with_position_negatives(x_all[idx].float(), y_all[idx], n_labels, cfg.negative_fraction, gen)
            xb, yb = xb.to(device), yb.to(device)
            with autocast(device):
                loss = supcon_loss(proj(encoder(xb)), yb, cfg.temperature)
            total += optimizer_step(opt, scaler, loss) * len(idx)
        losses.append(total / len(x_all))
    metrics["supcon_loss"] = [round(v, 4) for v in losses]
    if n_classes < 2:
        encoder.eval()
        return encoder, None

    # Stage 2: ArcFace ID classifier, fine-tuning the encoder.
    head = ArcMarginHead(p_enc.embedding_dim, 2 * n_classes, cfg.arc_scale, cfg.arc_margin).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=cfg.arc_lr)
    ce = nn.CrossEntropyLoss()
    losses, accs = [], []
    for _ in tqdm(range(epochs), desc="clp stage 2 (ArcFace)", unit="epoch", disable=not cfg.progress, leave=False):
        encoder.train()
        total, correct = 0.0, 0
        for idx in _batches(len(x_all), cfg.batch_size, gen):
            xb, yb = with_position_negatives(x_all[idx].float(), y_all[idx], n_classes, cfg.negative_fraction, gen)
            xb, yb = xb.to(device), yb.to(device)
            with autocast(device):
                emb = encoder(xb)
                loss = ce(head(emb, yb), yb)
            total += optimizer_step(opt, scaler, loss) * len(idx)
            correct += int((head(emb.detach()).argmax(1) == yb)[: len(idx)].sum())
        losses.append(total / len(x_all))
        accs.append(correct / len(x_all))
    metrics["arcface_loss"] = [round(v, 4) for v in losses]
    metrics["train_id_accuracy"] = round(accs[-1], 4)
    encoder.eval()
    # The shifted-machine classes were a training device only: the saved classifier holds the
    # real classes, so p(ID) at inference is a softmax over machines (and the head's layout,
    # one row per class_map entry, stays simple for fine-tuning).
    real = ArcMarginHead(p_enc.embedding_dim, n_classes, cfg.arc_scale, cfg.arc_margin).to(device)
    with torch.no_grad():
        real.weight.copy_(head.weight[:n_classes])
    real.eval()
    return encoder, real


# -- ae --------------------------------------------------------------------------------------------
def _train_ae(ws: WindowSet, cfg: TrainConfig, device: torch.device, gen: torch.Generator,
              metrics: dict[str, Any]) -> FrameAE:  # fmt: skip
    ae = FrameAE(AEConfig(n_mels=ws.windows.shape[1]))
    # One scalar mean/std: keeps the baseline's equal weighting of all mel bins in the MSE.
    ae.norm.fit(_norm_sample(ws.windows, cfg.seed), per_bin=False)
    ae.to(device)
    x_all = torch.from_numpy(np.asarray(ws.windows))
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.ae_lr)
    scaler = grad_scaler(device)
    losses = []
    # Windows overlap by half, so each epoch sees every context about twice; batches of 8
    # windows = 480 contexts, close to the baseline's batch of 512 frames.
    for _ in tqdm(range(cfg.stage_epochs()), desc="ae", unit="epoch", disable=not cfg.progress, leave=False):
        ae.train()
        total = 0.0
        for idx in _batches(len(x_all), 8, gen):
            with autocast(device):
                loss = ae.window_errors(x_all[idx].float().to(device)).mean()
            total += optimizer_step(opt, scaler, loss) * len(idx)
        losses.append(total / len(x_all))
    metrics["ae_loss"] = [round(v, 4) for v in losses]
    ae.eval()
    return ae


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
        raise BadInput(f"every training clip of {mtype!r} was unusable",
                       hint="; ".join(s.reason for s in fit.skipped[:3]))  # fmt: skip
    if len(fit.windows) < 2:
        raise BadInput(f"{mtype!r} has {len(fit.windows)} usable training window(s); training needs at least 2",
                       hint=f"add normal training clips of at least {params.window_seconds:.1f} s")  # fmt: skip
    metrics: dict[str, Any] = {}
    machine_ids = sorted({r.machine_id for r in fit.records} | {r.machine_id for r in hold.records})

    state: dict[str, dict[str, torch.Tensor]]
    bank: dict[str, np.ndarray] = {}
    id_classes: dict[str, list[int]] = {}
    class_source, class_names = "none", []
    if cfg.method == "clp":
        class_source, class_names, class_of = choose_classes(fit.records)
        if class_source == "none":
            labels = fit.clip.astype(np.int64)  # instance discrimination
        else:
            index = {c: i for i, c in enumerate(class_names)}
            labels = np.array([index[class_of(fit.records[c])] for c in fit.clip], dtype=np.int64)
            for r in fit.records:
                id_classes.setdefault(r.machine_id, [])
                if index[class_of(r)] not in id_classes[r.machine_id]:
                    id_classes[r.machine_id].append(index[class_of(r)])
        encoder, head = _train_clp(fit, labels, len(class_names), cfg, device, gen, metrics)
        state = {"encoder": {k: v.cpu() for k, v in encoder.state_dict().items()}}
        model_config: dict[str, Any] = {"encoder": encoder.cfg.to_dict()}
        if head is not None:
            state["head"] = {k: v.cpu() for k, v in head.state_dict().items()}
            model_config["head"] = {"n_classes": len(class_names), "scale": cfg.arc_scale, "margin": cfg.arc_margin}
        scorer = WindowScorer("clp", "knn", encoder, head, None, id_classes, {}, cfg.knn_k, device)
        emb = scorer.embed(fit.windows).cpu().numpy()
        fit_ids = np.array(fit.machine_ids())
        for mid in sorted(set(fit_ids)):
            bank[mid] = subsample_bank(emb[fit_ids == mid], seed=cfg.seed)
        scorer.bank = {k: torch.from_numpy(v).to(device) for k, v in bank.items()}
        kinds = ["neglogp", "knn"] if head is not None else ["knn"]
    else:
        ae = _train_ae(fit, cfg, device, gen, metrics)
        state = {"ae": {k: v.cpu() for k, v in ae.state_dict().items()}}
        model_config = {"ae": ae.cfg.to_dict()}
        scorer = WindowScorer("ae", "recon", None, None, ae, {}, {}, cfg.knn_k, device)
        kinds = ["recon"]

    # Choose the score on held-out normal clips only (fit clips when nothing could be held out).
    calib = hold if len(hold.records) else fit
    metrics["calibration_source"] = "held-out normal clips" if len(hold.records) else "training clips (none held out)"
    calib_clips = [calib.clip_windows(i) for i in range(len(calib.records))]
    calib_ids = [r.machine_id for r in calib.records]
    criteria = {
        kind: pseudo_anomaly_auc(lambda w, m, kind=kind: scorer.score(w, m, kind), calib_clips, calib_ids,
                                 cfg.median_k, cfg.seed)  # fmt: skip
        for kind in kinds
    }
    score_kind = choose_score_kind(criteria)
    scorer.score_kind = score_kind
    metrics["score_selection"] = {"criterion": "mean pseudo-anomaly clip AUC on held-out normal clips",
                                  "candidates": criteria, "chosen": score_kind}  # fmt: skip

    # Thresholds on the median-filtered held-out window scores, per machine.
    win_scores = scorer.score(calib.windows, calib.machine_ids())
    filtered = filtered_scores(win_scores, calib.clip, cfg.median_k)
    calib_win_ids = np.array(calib.machine_ids())
    if score_kind == "knn" and len(hold.records):
        # A threshold from a machine's one or two held-out clips is at the mercy of one odd recording.
        # kNN scores of *fit* clips are honest held-out scores too when the clip's own windows are left
        # out of the bank (leave-one-clip-out), so every normal clip can inform the threshold.
        loco, loco_ids = leave_one_clip_out_knn(scorer, fit, emb, cfg.median_k, cfg.seed, device)
        filtered = np.concatenate([filtered, loco])
        calib_win_ids = np.concatenate([calib_win_ids, loco_ids])
        metrics["calibration_source"] = "held-out normal clips + leave-one-clip-out kNN scores of the fit clips"
    thresholds: dict[str, float] = {}
    for mid in machine_ids:
        vals = filtered[calib_win_ids == mid]
        if vals.size == 0:  # machine with a single clip used for fitting: use its training windows
            own = fit.windows[np.array(fit.machine_ids()) == mid]
            own_scores = scorer.score(own, [mid] * len(own))
            vals = filtered_scores(own_scores, np.zeros(len(own), dtype=np.int64), cfg.median_k)
        thresholds[mid], _ = fit_threshold(vals)
    default_threshold, rule = fit_threshold(filtered)
    metrics["heldout_normal_score"] = {"mean": float(filtered.mean()), "std": float(filtered.std())}

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
        machine_type=mtype, method=cfg.method, score_kind=score_kind, feature_params=params,
        median_k=cfg.median_k, model_config=model_config, state=state, class_map=class_names,
        id_classes=id_classes, thresholds=thresholds, default_threshold=default_threshold,
        threshold_rule=rule, knn_k=cfg.knn_k, bank=bank, data_summary=data_summary, metrics=metrics,
        parent_version=parent_version, class_source=class_source,
    )  # fmt: skip
    skipped = [(str(s.path), s.reason) for s in fit.skipped + hold.skipped]
    if not math.isfinite(default_threshold):
        raise BadInput(f"calibration of {mtype!r} produced a non-finite threshold", hint="check the training audio")
    return TrainResult(artifact, seconds, skipped)
