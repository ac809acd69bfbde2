"""``semi``: an AE view and a MobileNetV2 view of each window pulled together (seed paper 2, the
contrastive semi-supervised framework of Cai, Dinkel et al., DCASE 2021).

Why two views: an ID classifier alone learns whatever separates the machines (often just pitch)
and may ignore the rest of the spectrum, where faults show up. An autoencoder must keep
everything it needs to rebuild the window. Pulling the classifier's embedding towards the AE's
bottleneck (a contrastive loss over both views) makes the CNN embedding carry that too, while
the ID classes keep it discriminative.

1. co-training: a MobileNetV2-style encoder (:class:`soundwatch.model.networks.Encoder`, ``arch="mobilenetv2"``)
   and a small conv AE whose bottleneck is projected to the encoder's embedding space; SupCon over
   the concatenated projections of both views (positives: same class, in either view; the other
   view of the same window included) plus the AE's reconstruction loss; the CNN view also gets
   mel-shifted negatives like ``clp``;
2. ArcFace ID classifier on the MobileNetV2 embedding (as ``clp``'s stage 2).
The AE is discarded: the artifact is the encoder + ID classifier, scored by ``neglogp`` (the
paper's -log p(ID)) or ``knn``; the median filter the paper found most useful is the product's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from soundwatch.model.device import autocast, grad_scaler, optimizer_step
from soundwatch.model.networks import ArcMarginHead, Encoder, ProjectionHead, supcon_loss
from training.methods.common import (
    EncoderJob,
    Views,
    arcface_stage,
    batches,
    epoch_size,
    position_negatives,
    rounded,
    with_views,
)
from training.methods.encoder import EncoderMethod


def _conv(cin: int, cout: int, transpose: bool = False) -> list[nn.Module]:
    """A stride-2 conv (or transposed conv: exact 2x upsampling) + BN + ReLU."""
    if transpose:
        return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    return [nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class ViewAE(nn.Module):
    """Conv AE on a standardised window ``[B, n_mels, W]``: three stride-2 convs, a dense bottleneck,
    three transposed convs back. Its bottleneck, projected to ``dim`` and L2-normalised, is the AE
    view of the window (a training device only)."""

    def __init__(self, n_mels: int, frames: int, dim: int, bottleneck: int = 64, width: int = 32) -> None:
        super().__init__()
        self.size = (n_mels, frames)
        self.grid = (max(1, -(-n_mels // 8)), max(1, -(-frames // 8)))
        flat = width * self.grid[0] * self.grid[1]
        self.encode = nn.Sequential(
            *_conv(1, 16),
            *_conv(16, width),
            *_conv(width, width),
            nn.AdaptiveAvgPool2d(self.grid),
            nn.Flatten(),
            nn.Linear(flat, bottleneck),
        )
        self.decode = nn.Sequential(
            nn.Linear(bottleneck, flat),
            nn.Unflatten(1, (width, *self.grid)),
            *_conv(width, width, True),
            *_conv(width, 16, True),
            nn.ConvTranspose2d(16, 1, 4, 2, 1),
        )
        self.to_embedding = nn.Sequential(nn.Linear(bottleneck, dim), nn.BatchNorm1d(dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (reconstruction [B, n_mels, W], unit-norm embedding [B, dim])."""
        b = self.encode(x.unsqueeze(1))
        rec = self.decode(b)
        if rec.shape[-2:] != self.size:
            rec = F.interpolate(rec, size=self.size, mode="bilinear", align_corners=False)
        return rec.squeeze(1), F.normalize(self.to_embedding(b).float(), dim=1)


def co_training_stage(
    job: EncoderJob, encoder: Encoder, ae: ViewAE, views: Views, *, epochs: int, lr: float
) -> tuple[list[float], list[float]]:
    """Stage 1: SupCon over [CNN view (+ ``views``); AE view] with one shared projection head, plus
    the AE's MSE on the standardised window. Returns (contrastive, reconstruction) loss per epoch."""
    cfg, device, gen = job.cfg, job.device, job.gen
    x_all, y_all = job.tensors()
    proj = ProjectionHead(encoder.cfg.embedding_dim).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *proj.parameters(), *ae.parameters()], lr=lr)
    scaler = grad_scaler(device)
    con_losses: list[float] = []
    rec_losses: list[float] = []
    for _ in tqdm(
        range(epochs), desc="semi stage 1 (AE + MobileNetV2 views)", unit="epoch", disable=not cfg.progress, leave=False
    ):
        encoder.train()
        ae.train()
        con_total, rec_total = 0.0, 0.0
        for idx in batches(len(x_all), cfg.batch_size, gen):
            x, y = x_all[idx].float(), y_all[idx]
            xb, yb = with_views(x, y, views, gen)
            xb, yb, x, y = xb.to(device), yb.to(device), x.to(device), y.to(device)
            with autocast(device):
                z_cnn = proj(encoder(xb))
                target = encoder.norm(x)
                rec, e_ae = ae(target)
                con = supcon_loss(torch.cat([z_cnn, proj(e_ae)]), torch.cat([yb, y]), cfg.temperature)
                recon = F.mse_loss(rec.float(), target.float())
            optimizer_step(opt, scaler, con + recon)
            con_total += float(con.detach()) * len(idx)
            rec_total += float(recon.detach()) * len(idx)
        con_losses.append(con_total / epoch_size(len(x_all), cfg.batch_size))
        rec_losses.append(rec_total / epoch_size(len(x_all), cfg.batch_size))
    encoder.eval()
    return con_losses, rec_losses


def fit(job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    cfg = job.cfg
    encoder = job.new_encoder(arch="mobilenetv2")
    ae = ViewAE(encoder.cfg.n_mels, encoder.cfg.window_frames, encoder.cfg.embedding_dim).to(job.device)
    epochs = cfg.stage_epochs()
    con, rec = co_training_stage(
        job, encoder, ae, position_negatives(cfg.negative_fraction, job.n_labels), epochs=epochs, lr=cfg.supcon_lr
    )
    job.metrics["supcon_loss"] = rounded(con)
    job.metrics["ae_recon_loss"] = rounded(rec)
    if job.n_classes < 2:
        return encoder, None
    head = arcface_stage(
        job,
        encoder,
        position_negatives(cfg.negative_fraction, job.n_classes),
        n_out=2 * job.n_classes,
        epochs=epochs,
        lr=cfg.arc_lr,
        desc="semi stage 2 (ArcFace)",
    )
    return encoder, head


METHOD = EncoderMethod(
    "semi",
    "AE view and MobileNetV2 view of each window pulled together, with an ID classifier",
    fit,
)
