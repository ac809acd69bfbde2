"""``ae``: the DCASE 2020 Task 2 baseline — a dense autoencoder on 5-frame contexts of the windows
(MSE, Adam), scored by reconstruction error (``recon``). It has no ID classifier and no bank;
fine-tuning continues the reconstruction objective on the new normal audio.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from soundwatch.model.device import autocast, grad_scaler, optimizer_step, resolve_device, seed_everything
from soundwatch.model.networks import AEConfig, FrameAE
from soundwatch.model.scorer import WindowScorer
from soundwatch.settings import RetrainSettings
from training.methods.base import FineTuned, Trained, TrainedOnce, fine_tune_batches, freeze_batchnorm
from training.methods.common import EncoderJob, batches, epoch_size, norm_sample


class AEMethod(TrainedOnce):
    name = "ae"
    help = "DCASE 2020 dense autoencoder baseline"
    classifies = False
    default_epochs = 50  # in total

    def train(self, job: EncoderJob) -> Trained:
        cfg, device, ws = job.cfg, job.device, job.windows
        ae = FrameAE(AEConfig(n_mels=ws.windows.shape[1]))
        # One scalar mean/std: keeps the baseline's equal weighting of all mel bins in the MSE.
        ae.norm.fit(norm_sample(ws.windows, cfg.seed), per_bin=False)
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
            for idx in batches(len(x_all), 8, job.gen):
                with autocast(device):
                    loss = ae.window_errors(x_all[idx].float().to(device)).mean()
                total += optimizer_step(opt, scaler, loss) * len(idx)
            losses.append(total / epoch_size(len(x_all), 8))
        job.metrics["ae_loss"] = [round(v, 4) for v in losses]
        ae.eval()
        state = {"ae": {k: v.cpu() for k, v in ae.state_dict().items()}}
        scorer = WindowScorer("ae", "recon", None, None, ae, {}, {}, cfg.knn_k, device)
        return Trained(state, {"ae": ae.cfg.to_dict()}, scorer, ["recon"])

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
        """Continue the reconstruction objective (``encoder_mode``, ``score_kind`` and the bank do not apply)."""
        device = resolve_device(cfg.device)
        gen = seed_everything(cfg.seed)
        meta = parent.metadata
        x_all = torch.from_numpy(np.asarray(windows, dtype=np.float32))
        losses: list[float] = []
        scaler = grad_scaler(device)
        ae = copy.deepcopy(parent.scorer.ae).to(device)
        opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
        for _ in tqdm(range(cfg.epochs), desc="fine-tune (AE)", unit="epoch", disable=not cfg.progress, leave=False):
            ae.train()
            freeze_batchnorm(ae)
            total = 0.0
            for idx in fine_tune_batches(len(x_all), 8, gen):
                with autocast(device):
                    loss = ae.window_errors(x_all[idx].to(device)).mean()
                total += optimizer_step(opt, scaler, loss) * len(idx)
            losses.append(round(total / max(1, len(x_all)), 4))
        ae.eval()
        state = {"ae": {k: v.detach().cpu() for k, v in ae.state_dict().items()}}
        scorer = WindowScorer("ae", "recon", None, None, ae, {}, {}, meta.knn_k, device)
        return FineTuned(
            parent.method,
            scorer.score_kind,
            copy.deepcopy(meta.model_config),
            state,
            list(meta.class_map),
            {k: list(v) for k, v in meta.id_classes.items()},
            meta.class_source,
            {},
            meta.knn_k,
            scorer,
            losses,
        )


METHOD = AEMethod()
