"""``geco``: generative + contrastive (seed paper 3, GeCo).

A small Predictive AutoEncoder with self-attention (:class:`FramePredictor`) learns to predict every
frame of a window from the frames before it. Its predictions are *almost* the machine's sound: they
keep the stationary spectrum but lose what the past does not determine (ticks, bursts, fine
modulation). GeCo's idea is to make the encoder tell the two apart within each machine: a real
window with a random block of frames replaced by their predictions, of class ``c``, becomes the
negative class ``n_labels + c``, so the embedding must encode the fine structure a real normal
window has and a locally generated "normal-looking" one lacks, which is where many faults live.

1. a short pre-stage fits the predictor alone (its negatives are then meaningful from the start);
   metrics ``predictor_loss`` (pre-stage then joint epochs, MSE in standardised dB units);
2. SupCon on real windows + predicted negatives + ``clp``'s mel-shifted negatives
   (:func:`geco_negatives`: predictions keep the spectrum, so they alone leave the embedding blind
   to where energy sits), the predictor's MSE trained jointly (``extra_loss``): as it improves, its
   negatives get harder (a built-in curriculum); ``supcon_loss`` is the contrastive part alone;
3. ArcFace over the real classes plus one "shifted" and one "predicted" class per class (frozen
   predictor); ``generated_separation`` then says how well the encoder rejects predicted windows.
The predictor is a training device only: the artifact keeps the encoder and ID classifier, like ``clp``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from soundwatch.model.device import autocast, grad_scaler, optimizer_step
from soundwatch.model.networks import ArcMarginHead, Encoder, Standardize
from training.methods.common import (
    EncoderJob,
    Views,
    arcface_stage,
    batches,
    combine,
    norm_sample,
    position_negatives,
    rounded,
    supcon_stage,
)
from training.methods.encoder import EncoderMethod

#: The predictor reaches its plateau (about the window's mean spectrum: frame-level detail is not
#: predictable from the past) within ~50 Adam steps on the synthetic test windows (measured; real DCASE data not tried).
MIN_PRETRAIN_STEPS = 50


class FramePredictor(nn.Module):
    """Causal Transformer over the frames of a window: output ``t`` sees only frames ``< t``.

    The input is shifted right by one frame (a learned start token in front) under a causal mask,
    so no layer can leak a frame into its own prediction. Works in standardised dB units.
    """

    def __init__(self, n_mels: int, window_frames: int, d_model: int = 64, layers: int = 1, heads: int = 4) -> None:
        super().__init__()
        self.norm = Standardize(n_mels)
        self.inp = nn.Linear(n_mels, d_model)
        self.start = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(0.02 * torch.randn(1, window_frames, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d_model, n_mels)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(window_frames))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [B, M, W] dB -> (prediction, target), both [B, M, W] standardised."""
        z = self.norm(x).transpose(1, 2)  # [B, W, M]
        w = z.shape[1]
        h = torch.cat([self.start.expand(z.shape[0], 1, -1), self.inp(z[:, :-1])], dim=1) + self.pos[:, :w]
        h = self.body(h, mask=self.mask[:w, :w], is_causal=True)
        return self.out(h).transpose(1, 2), z.transpose(1, 2)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        pred, target = self(x)
        return F.mse_loss(pred.float(), target.float())

    @torch.no_grad()
    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted windows back in dB, so the encoder sees them like real input."""
        pred, _ = self(x)
        return pred.float() * self.norm.std + self.norm.mean


def predicted_negatives(
    predictor: FramePredictor, fraction: float, n_labels: int, spliced: bool = True, kind: int = 1
) -> Views:
    """Predictions of part of a batch as negative classes (label ``kind * n_labels + c``), detached:
    the encoder learns to reject them, the predictor learns only from its own MSE (stabler).

    ``spliced``: only a random block of 8 to W/2 frames is replaced by its prediction (the rest stays
    real), a harder negative than a fully generated window, which any encoder tells apart by texture.
    """

    def views(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(1, int(round(fraction * x.shape[0])))
        device = next(predictor.parameters()).device
        real = x[:n].float().to(device)
        fake = predictor.generate(real)
        if spliced:
            w = real.shape[2]
            shortest = min(8, w)
            length = torch.randint(shortest, max(shortest, w // 2) + 1, (n, 1), generator=gen)
            start = (torch.rand(n, 1, generator=gen) * (w - length + 1)).long()
            t = torch.arange(w)[None, :]
            block = ((t >= start) & (t < start + length)).to(device)[:, None, :]
            fake = torch.where(block, fake, real)
        return fake.to(x.device), y[:n] + kind * n_labels

    return views


def geco_negatives(predictor: FramePredictor, fraction: float, n_labels: int) -> Views:
    """Both kinds of negative classes of a batch: mel-shifted copies (label ``n_labels + c``, as in
    ``clp``) and predicted ones (label ``2 * n_labels + c``).

    Why both: a predicted window keeps the stationary spectrum, so rejecting it teaches the encoder
    fine temporal structure only; with few classes that differ little in spectrum (real-uav: four
    flight missions of one drone) nothing else asks the embedding to see *where energy sits*, and it
    became blind to faults that change the whole spectrum (broken propellers: kNN AUC 0.79). The
    mel-shifted negatives keep that sensitivity, the predicted ones add GeCo's.
    """
    return combine(position_negatives(fraction, n_labels), predicted_negatives(predictor, fraction, n_labels, kind=2))


def pretrain_predictor(job: EncoderJob, predictor: FramePredictor, epochs: int, lr: float) -> list[float]:
    """Predictor alone, so the first contrastive negatives are already machine-like: ``epochs``,
    but at least :data:`MIN_PRETRAIN_STEPS` steps (a small machine type has one batch per epoch)."""
    cfg, device = job.cfg, job.device
    x_all, _ = job.tensors()
    per_epoch = len(batches(len(x_all), cfg.batch_size, job.gen))
    epochs = max(epochs, math.ceil(MIN_PRETRAIN_STEPS / per_epoch))
    opt = torch.optim.Adam(predictor.parameters(), lr=lr)
    scaler = grad_scaler(device)
    losses = []
    for _ in tqdm(range(epochs), desc="geco stage 0 (predictor)", unit="epoch", disable=not cfg.progress, leave=False):
        total, seen = 0.0, 0
        for idx in batches(len(x_all), cfg.batch_size, job.gen):
            with autocast(device):
                loss = predictor.loss(x_all[idx].float().to(device))
            total += optimizer_step(opt, scaler, loss) * len(idx)
            seen += len(idx)
        losses.append(total / seen)
    return losses


def new_predictor(job: EncoderJob) -> FramePredictor:
    ws = job.windows.windows
    predictor = FramePredictor(ws.shape[1], ws.shape[2])
    predictor.norm.fit(norm_sample(ws, job.cfg.seed))
    return predictor.to(job.device)


@torch.no_grad()
def generated_separation(job: EncoderJob, encoder: Encoder, negatives: Views, limit: int = 512) -> float:
    """How well the trained encoder tells predicted from real windows (the GeCo task): the AUC with
    which cosine distance to the own class's mean real embedding ranks the ``negatives`` (made from
    up to ``limit`` training windows) above the real windows. A diagnostic in the metrics: 0.5 =
    blind, e.g. a predictor that leaks the frame it predicts."""
    x_all, y_all = job.tensors()
    idx = torch.randperm(len(x_all), generator=job.gen)[:limit]
    x, y = x_all[idx].float(), y_all[idx]
    fake, _ = negatives(x, y, job.gen)
    encoder.eval()
    real, fake = encoder(x.to(job.device)), encoder(fake.to(job.device))
    y = y.to(job.device)
    centres = torch.zeros(job.n_labels, real.shape[1], device=job.device).index_add_(0, y, real)
    centres = F.normalize(centres, dim=1)[y]
    d_real, d_fake = 1 - (real * centres).sum(1), 1 - (fake * centres[: len(fake)]).sum(1)
    diff = d_fake[:, None] - d_real[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def joint_stage(
    job: EncoderJob, encoder: Encoder, predictor: FramePredictor, views: Views, epochs: int
) -> tuple[list[float], list[float]]:
    """SupCon with predicted negatives, the predictor's MSE trained in the same steps; returns the
    SupCon part per epoch (on clp's scale) and the predictor's MSE per epoch, rounded."""
    mse: list[tuple[float, int]] = []  # (batch MSE, batch size)

    def extra_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = predictor.loss(x)
        mse.append((float(loss.detach()), x.shape[0]))
        return loss

    total = supcon_stage(
        job,
        encoder,
        views,
        epochs=epochs,
        lr=job.cfg.supcon_lr,
        desc="geco stage 1 (SupCon)",
        extra_params=list(predictor.parameters()),
        extra_loss=extra_loss,
    )
    per_epoch = len(mse) // epochs
    epoch_mse = [mse[e * per_epoch : (e + 1) * per_epoch] for e in range(epochs)]
    # supcon_stage's epoch loss is the per-window mean over the windows visited: take the MSE part out
    supcon = [t - sum(v * b for v, b in em) / sum(b for _, b in em) for t, em in zip(total, epoch_mse, strict=True)]
    return rounded(supcon), rounded([sum(v * b for v, b in em) / sum(b for _, b in em) for em in epoch_mse])


def fit(job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    cfg = job.cfg
    epochs = cfg.stage_epochs()
    encoder = job.new_encoder()
    predictor = new_predictor(job)
    job.metrics["predictor_loss"] = rounded(pretrain_predictor(job, predictor, max(1, epochs // 2), cfg.supcon_lr))
    views = geco_negatives(predictor, cfg.negative_fraction, job.n_labels)
    job.metrics["supcon_loss"], joint_mse = joint_stage(job, encoder, predictor, views, epochs)
    job.metrics["predictor_loss"] += joint_mse
    predicted = predicted_negatives(predictor, cfg.negative_fraction, job.n_labels)  # for the diagnostic
    if job.n_classes < 2:
        job.metrics["generated_separation"] = round(generated_separation(job, encoder, predicted), 4)
        return encoder, None
    predictor.eval()
    negatives = geco_negatives(predictor, cfg.negative_fraction, job.n_classes)
    head = arcface_stage(
        job, encoder, negatives, n_out=3 * job.n_classes, epochs=epochs, lr=cfg.arc_lr, desc="geco stage 2 (ArcFace)"
    )
    job.metrics["generated_separation"] = round(generated_separation(job, encoder, predicted), 4)
    return encoder, head


METHOD = EncoderMethod(
    "geco",
    "predictive self-attention AE whose predictions are contrastive negatives of the real windows",
    fit,
)
