"""What every *encoder method* shares: its artifact is an encoder + optional ID classifier scored by
``knn`` / ``neglogp``; it trains with its own ``fit(job)`` and fine-tunes as described in
:mod:`training.service.retrain` (``bank`` / ``head`` / ``full``). A method that fine-tunes
differently subclasses :class:`EncoderMethod` and overrides :meth:`EncoderMethod.fine_tune`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from soundwatch.errors import BadInput
from soundwatch.model.device import autocast, grad_scaler, optimizer_step, resolve_device, seed_everything
from soundwatch.model.networks import ArcMarginHead, Encoder
from soundwatch.model.scorer import BANK_LIMIT, WindowScorer, subsample_bank
from soundwatch.settings import RetrainSettings
from training.methods.base import ENCODER_MODES, FineTuned, Trained, TrainedOnce, fine_tune_batches, freeze_batchnorm
from training.methods.common import EncoderJob

log = logging.getLogger(__name__)

FitEncoder = Callable[[EncoderJob], tuple[Encoder, ArcMarginHead | None]]


def score_kinds(has_head: bool, id_classes: dict[str, list[int]], n_classes: int) -> list[str]:
    """The score kinds an encoder artifact chooses from on held-out clips.

    ``neglogp`` sums p(class) over the machine's own classes, so it is 0 for every window of a machine
    that owns every class (one drone flying all four missions): offered only where it can vary.
    """
    informative = has_head and all(len(classes) < n_classes for classes in id_classes.values())
    return ["neglogp", "knn"] if informative else ["knn"]


@dataclass(frozen=True)
class EncoderMethod(TrainedOnce):
    """An encoder method: ``fit`` trains the encoder (+ classifier); the rest is common to all of them."""

    name: str
    help: str
    fit: FitEncoder
    classifies: bool = True
    default_epochs: int = 20  # per stage

    def train(self, job: EncoderJob) -> Trained:
        cfg, device = job.cfg, job.device
        encoder, head = self.fit(job)
        state = {"encoder": {k: v.cpu() for k, v in encoder.state_dict().items()}}
        model_config: dict[str, Any] = {"encoder": encoder.cfg.to_dict()}
        if head is not None:
            state["head"] = {k: v.cpu() for k, v in head.state_dict().items()}
            model_config["head"] = {"n_classes": job.n_classes, "scale": cfg.arc_scale, "margin": cfg.arc_margin}
        scorer = WindowScorer(self.name, "knn", encoder, head, None, job.id_classes, {}, cfg.knn_k, device)
        emb = scorer.embed(job.windows.windows).cpu().numpy()
        fit_ids = np.array(job.windows.machine_ids())
        bank = {mid: subsample_bank(emb[fit_ids == mid], seed=cfg.seed) for mid in sorted(set(fit_ids))}
        scorer.bank = {k: torch.from_numpy(v).to(device) for k, v in bank.items()}
        kinds = score_kinds(head is not None, job.id_classes, job.n_classes)
        return Trained(state, model_config, scorer, kinds, bank, emb)

    def fine_tune(
        self,
        parent: Any,
        windows: np.ndarray,
        machine_ids: Sequence[str],
        cfg: RetrainSettings,
        bank_windows: np.ndarray | None = None,
        bank_ids: Sequence[str] = (),
        bank_new: np.ndarray | None = None,
        *,
        encoder_mode: str = "bank",
        score_kind: str | None = None,
    ) -> FineTuned:
        """``head`` / ``full`` train on ``windows`` and rebuild the kNN bank from ``bank_windows`` (new
        windows + the whole replay pool: a density estimate needs more samples than a gradient step);
        ``bank`` adds the rows of ``bank_windows`` marked ``bank_new`` to the parent's bank."""
        device = resolve_device(cfg.device)
        gen = seed_everything(cfg.seed)
        meta = parent.metadata
        src = parent.scorer
        x_all = torch.from_numpy(np.asarray(windows, dtype=np.float32))
        ids = list(machine_ids)
        losses: list[float] = []
        scaler = grad_scaler(device)
        class_map = list(meta.class_map)
        id_classes = {k: list(v) for k, v in meta.id_classes.items()}
        class_source = meta.class_source
        model_config = copy.deepcopy(meta.model_config)
        bank: dict[str, np.ndarray] = {}

        if encoder_mode not in ENCODER_MODES:
            raise BadInput(f"unknown encoder update {encoder_mode!r}", f"use one of {', '.join(ENCODER_MODES)}")
        encoder = copy.deepcopy(src.encoder).to(device)
        head = copy.deepcopy(src.head).to(device) if src.head is not None else None
        if head is not None and encoder_mode != "bank":
            for mid in sorted(set(ids) - set(id_classes)):  # a machine the model never saw: a new class row
                if class_source != "machine_id":
                    continue  # its windows still shape the encoder's bank below
                with torch.no_grad():
                    row = torch.empty(1, head.weight.shape[1], device=device)
                    nn.init.xavier_uniform_(row)
                    head.weight = nn.Parameter(torch.cat([head.weight.data, row]))
                class_map.append(mid)
                id_classes[mid] = [len(class_map) - 1]
            model_config["head"] = {**model_config["head"], "n_classes": len(class_map)}
            keep = np.array([m in id_classes for m in ids])
            labels = torch.tensor([id_classes[m][0] for m in ids if m in id_classes], dtype=torch.int64)
            x_lab = x_all[torch.from_numpy(keep)]
            if encoder_mode == "head":  # the convolutional trunk and the input statistics stay as they are
                for p in [*encoder.norm.parameters(), *encoder.convs.parameters()]:
                    p.requires_grad_(False)
            trainable = [p for p in [*encoder.parameters(), *head.parameters()] if p.requires_grad]
            opt = torch.optim.Adam(trainable, lr=cfg.lr)
            ce = nn.CrossEntropyLoss()
            for _ in tqdm(
                range(cfg.epochs),
                desc=f"fine-tune ({encoder_mode}, ArcFace)",
                unit="epoch",
                disable=not cfg.progress,
                leave=False,
            ):
                encoder.train()
                freeze_batchnorm(encoder)
                if encoder_mode == "head":
                    encoder.convs.eval()
                head.train()
                total = 0.0
                for idx in fine_tune_batches(len(x_lab), cfg.batch_size, gen):
                    xb, yb = x_lab[idx].to(device), labels[idx].to(device)
                    with autocast(device):
                        loss = ce(head(encoder(xb), yb), yb)
                    total += optimizer_step(opt, scaler, loss) * len(idx)
                losses.append(round(total / max(1, len(x_lab)), 4))
            head.eval()
        encoder.eval()
        state = {"encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}
        if head is not None:
            state["head"] = {k: v.detach().cpu() for k, v in head.state_dict().items()}
        kind = score_kind or ("knn" if encoder_mode == "bank" else parent.score_kind)
        scorer = WindowScorer(parent.method, kind, encoder, head, None, id_classes, {}, meta.knn_k, device)
        if bank_windows is None:
            bank_windows, bank_ids = windows, ids
        id_arr = np.array(list(bank_ids))
        rng = np.random.default_rng(cfg.seed)
        if encoder_mode == "bank":  # same encoder: the parent's bank stays valid and only grows
            new = np.zeros(len(id_arr), dtype=bool) if bank_new is None else np.asarray(bank_new, dtype=bool)
            id_arr = id_arr[new]
            emb = scorer.embed(np.asarray(bank_windows, dtype=np.float32)[new]).cpu().numpy()
            old = {mid: b.detach().float().cpu().numpy() for mid, b in src.bank.items()}
        else:
            emb = scorer.embed(np.asarray(bank_windows, dtype=np.float32)).cpu().numpy()
            old = {}
        for mid in sorted(set(id_arr) | set(old)):
            rows = np.flatnonzero(id_arr == mid)
            prior = old.get(mid, emb[:0])
            n_new = len(rows) if not len(prior) else min(len(rows), max(BANK_LIMIT - len(prior), BANK_LIMIT // 2))
            if n_new < len(rows):  # a full bank: at least half of it is made room for the new audio
                rows = rows[np.sort(rng.choice(len(rows), n_new, replace=False))]
            if len(prior) + n_new > BANK_LIMIT:
                prior = prior[np.sort(rng.choice(len(prior), BANK_LIMIT - n_new, replace=False))]
            bank[mid] = np.concatenate([prior, emb[rows]])
        for mid in sorted(set(src.bank) - set(bank)):  # old embeddings live in the old space: not reusable
            log.warning("machine %s has no windows this round; its kNN score falls back to the union bank", mid)
        scorer.bank = {k: torch.from_numpy(v).to(device) for k, v in bank.items()}
        return FineTuned(
            parent.method,
            scorer.score_kind,
            model_config,
            state,
            class_map,
            id_classes,
            class_source,
            bank,
            meta.knn_k,
            scorer,
            losses,
            encoder_mode,
        )
