"""What every encoder method shares: its input, the encoder it starts from, batching, and the two
training stages (SupCon, ArcFace) that methods compose with their own extra *views*.

A method is a function ``fit(job: EncoderJob) -> (Encoder, ArcMarginHead | None)``. Whatever a method
uses while training (predictors, separators, a second network), the artifact keeps only the encoder
and the ID classifier, so every method is scored, calibrated, served and fine-tuned the same way
(:class:`soundwatch.model.scorer.WindowScorer`, scores ``knn`` / ``neglogp``).

A *view function* ``views(x, y, gen) -> (x_extra, y_extra)`` returns extra samples for a batch with
their labels: a label in ``[0, n_labels)`` makes a positive of that class (another view of the same
machine); a label ``>= n_labels`` makes a negative class (a sound the encoder must tell apart from
every real machine). Labels ``n_labels + c`` mean "the negative counterpart of class ``c``"; methods
with several kinds of negatives offset them further (``k * n_labels + c``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from soundwatch.model.device import autocast, grad_scaler, optimizer_step
from soundwatch.model.networks import ArcMarginHead, Encoder, EncoderConfig, ProjectionHead, supcon_loss
from soundwatch.params import FeatureParams
from training.datasets import WindowSet

if TYPE_CHECKING:
    from training.train import TrainConfig

Views = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EncoderJob:
    """Everything an encoder method gets. ``labels[i]`` is the class of window ``i`` (machine ID,
    attribute string, or, when ``n_classes == 0``, its clip: instance discrimination)."""

    windows: WindowSet
    labels: np.ndarray
    n_classes: int
    cfg: TrainConfig
    device: torch.device
    gen: torch.Generator
    metrics: dict[str, Any]
    params: FeatureParams = field(default_factory=FeatureParams)  # the windows' feature definition
    id_classes: dict[str, list[int]] = field(default_factory=dict)  # machine ID -> its classes (when classified)

    @property
    def n_labels(self) -> int:
        """Real labels (classes, or clips when there are no classes)."""
        return int(self.labels.max()) + 1

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.asarray(self.windows.windows)), torch.from_numpy(self.labels)

    def new_encoder(self, **overrides: Any) -> Encoder:
        """An encoder sized for these windows, input statistics fitted, on the device."""
        ws = self.windows.windows
        cfg = EncoderConfig(
            **{
                **self.cfg.encoder.to_dict(),
                "n_mels": ws.shape[1],
                "window_frames": ws.shape[2],
                "channels": self.cfg.encoder.channels,
                **overrides,
            }
        )
        encoder = Encoder(cfg)
        encoder.norm.fit(norm_sample(ws, self.cfg.seed))
        return encoder.to(self.device)


def norm_sample(windows: np.ndarray, seed: int, limit: int = 20_000) -> torch.Tensor:
    """A random subset of windows (all machines, not the first files) for the input statistics."""
    idx = np.arange(len(windows))
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), size=limit, replace=False))
    return torch.from_numpy(np.asarray(windows[idx], dtype=np.float32))


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a short last batch is dropped unless it is the only one."""
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size) if i + batch_size <= n or i == 0]


def epoch_size(n: int, batch_size: int) -> int:
    """Windows one epoch of :func:`batches` visits (the divisor of a per-window mean epoch loss)."""
    return n if n <= batch_size else (n // batch_size) * batch_size


def shift_mel(w: torch.Tensor, s: int) -> torch.Tensor:
    """Shift a [n_mels, W] window by ``s`` mel bins, repeating the edge bin into the gap."""
    out = torch.roll(w, s, dims=0)
    if s > 0:
        out[:s] = w[:1]
    elif s < 0:
        out[s:] = w[-1:]
    return out


def position_negatives(fraction: float, n_labels: int) -> Views:
    """Frequency-shifted copies of part of a batch as *extra classes* (label + ``n_labels``).

    Why: CNNs are nearly shift-invariant, but on a spectrogram a pattern's mel position is its
    physics (a resonance that moved is a fault). Teaching the encoder that a window shifted by
    4-12 mel bins is *another* machine (seed paper 4, "adversarial negatives") makes the
    embedding sensitive to where energy sits, which ID classes alone (often separable by pitch)
    do not require. Held-out selection uses a 2-bin shift, a magnitude training never sees.
    """

    def views(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(round(fraction * x.shape[0]))
        if n == 0:
            return x[:0], y[:0]
        shifts = torch.randint(4, 13, (n,), generator=gen) * (torch.randint(0, 2, (n,), generator=gen) * 2 - 1)
        neg = torch.stack([shift_mel(w, int(s)) for w, s in zip(x[:n], shifts, strict=True)])
        return neg, y[:n] + n_labels

    return views


def combine(*fns: Views) -> Views:
    """All the views of several view functions, concatenated."""

    def views(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [fn(x, y, gen) for fn in fns]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    return views


def with_views(
    x: torch.Tensor, y: torch.Tensor, views: Views, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    xe, ye = views(x, y, gen)
    return torch.cat([x, xe.to(x.dtype)]), torch.cat([y, ye.to(y.dtype)])


def supcon_stage(
    job: EncoderJob,
    encoder: Encoder,
    views: Views,
    *,
    epochs: int,
    lr: float,
    desc: str = "SupCon",
    extra_params: list[nn.Parameter] | None = None,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> list[float]:
    """Supervised contrastive training of ``encoder`` (+ a projection head) on the job's windows plus
    ``views``; positives share a label. ``extra_loss(x, y)`` (e.g. a predictor's own loss, with
    ``extra_params``) is added to each batch's loss. Returns the mean loss per epoch."""
    cfg, device, gen = job.cfg, job.device, job.gen
    x_all, y_all = job.tensors()
    proj = ProjectionHead(encoder.cfg.embedding_dim).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *proj.parameters(), *(extra_params or [])], lr=lr)
    scaler = grad_scaler(device)
    losses = []
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not cfg.progress, leave=False):
        encoder.train()
        total = 0.0
        for idx in batches(len(x_all), cfg.batch_size, gen):
            x, y = x_all[idx].float(), y_all[idx]
            xb, yb = with_views(x, y, views, gen)
            xb, yb = xb.to(device), yb.to(device)
            with autocast(device):
                loss = supcon_loss(proj(encoder(xb)), yb, cfg.temperature)
                if extra_loss is not None:
                    loss = loss + extra_loss(x.to(device), y.to(device))
            total += optimizer_step(opt, scaler, loss) * len(idx)
        losses.append(total / epoch_size(len(x_all), cfg.batch_size))
    encoder.eval()
    return losses


def arcface_stage(
    job: EncoderJob, encoder: Encoder, views: Views, *, n_out: int, epochs: int, lr: float, desc: str = "ArcFace"
) -> ArcMarginHead:
    """ArcFace fine-tuning of ``encoder`` with an ID classifier over ``n_out`` labels (real classes and
    the negative classes ``views`` makes). Returns the classifier restricted to the job's *real* classes
    (the negative classes were a training device: p(ID) at inference is a softmax over machines, and
    one row per class keeps fine-tuning simple); records ``arcface_loss`` (per epoch) and
    ``train_id_accuracy`` (last epoch) in the job's metrics."""
    cfg, device, gen = job.cfg, job.device, job.gen
    x_all, y_all = job.tensors()
    dim = encoder.cfg.embedding_dim
    head = ArcMarginHead(dim, n_out, cfg.arc_scale, cfg.arc_margin).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=lr)
    scaler = grad_scaler(device)
    ce = nn.CrossEntropyLoss()
    losses: list[float] = []
    accuracy = 0.0
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not cfg.progress, leave=False):
        encoder.train()
        total, correct = 0.0, 0
        for idx in batches(len(x_all), cfg.batch_size, gen):
            xb, yb = with_views(x_all[idx].float(), y_all[idx], views, gen)
            xb, yb = xb.to(device), yb.to(device)
            with autocast(device):
                emb = encoder(xb)
                loss = ce(head(emb, yb), yb)
            total += optimizer_step(opt, scaler, loss) * len(idx)
            correct += int((head(emb.detach()).argmax(1) == yb)[: len(idx)].sum())
        losses.append(total / epoch_size(len(x_all), cfg.batch_size))
        accuracy = correct / epoch_size(len(x_all), cfg.batch_size)
    encoder.eval()
    real = ArcMarginHead(dim, job.n_classes, cfg.arc_scale, cfg.arc_margin).to(device)
    with torch.no_grad():
        real.weight.copy_(head.weight[: job.n_classes])
    real.eval()
    job.metrics["arcface_loss"] = rounded(losses)
    job.metrics["train_id_accuracy"] = round(accuracy, 4)
    return real


def rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]
