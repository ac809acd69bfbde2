"""``sepviews``: separation-based views (seed paper 5): a MixIT separator's re-mixed sources of a window
are extra *positives* of that window's class.

1. pre-stage: a small mask network is trained with mixture-invariant training (MixIT, Wisdom et al.
   2020) on the normal training windows themselves: the input is a *mixture of mixtures* (the linear
   mel powers of two random windows added), the network splits it into ``M = 4`` masked sources, and
   the loss is the log-power error of the best of the ``2**M`` assignments of sources to the two
   windows. No clean sources are needed, so it works on unlabeled machine audio;
2. clp-style SupCon, then ArcFace (when there are two or more classes), where each batch gets the
   mel-shifted position negatives of clp *plus* views of some of its windows re-mixed from a subset
   of their separated sources (back in dB): "this window without one of its components is still the
   same machine", which asks the encoder to describe a machine by more than its loudest component.

Separation need not be perfect (the seed paper's point): a view only has to be a plausible partial
re-mix of the window; a separator that splits by frequency region or by time still gives useful
views (on the synthetic set it learns mostly mel-region masks, MixIT loss ~20 % below the trivial
half/half split). Views that would drop most of a window's energy are not drawn (a collapsed source
must not turn a view into silence), and a view's removed bins sit at a floor 30 dB under the band's
mean, never at the -100 dB feature floor. The separator is a training device and is discarded: the artifact is the
encoder (+ ID classifier), scored exactly like clp.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from tqdm import tqdm

from soundwatch.model.device import grad_scaler, optimizer_step
from soundwatch.model.networks import ArcMarginHead, Encoder, Standardize
from training.methods.common import (
    EncoderJob,
    Views,
    arcface_stage,
    batches,
    combine,
    epoch_size,
    norm_sample,
    position_negatives,
    rounded,
    supcon_stage,
)
from training.methods.encoder import EncoderMethod

N_SOURCES = 4
# The separator's pre-stage is short (its views need not be perfect): about SEP_STEPS steps in whole
# epochs, at most the encoder's epochs per stage.
SEP_STEPS = 400
SEP_LR = 1e-3
SEP_BATCH = 16
SNR_CAP_DB = 30.0  # log-error floor per mel band, relative to the band's mean power (MixIT's soft threshold)
VIEW_FRACTION = 0.25  # share of each batch appended again as separated re-mixes (positives)
MIN_KEPT_ENERGY = 0.5  # a view keeps at least this share of its window's power
AMIN = 1e-10  # numerical floor of the power <-> dB conversions (views are clamped at the features' own floor)


def db_to_power(db: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, db.float() / 10.0)


def power_to_db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(power.clamp_min(AMIN))


def assignments(m: int) -> torch.Tensor:
    """All ``2**m`` ways to give each of ``m`` sources to mixture 1 (1.0) or mixture 2 (0.0): [2**m, m]."""
    return torch.tensor(list(itertools.product((0.0, 1.0), repeat=m)))


class MaskNet(nn.Module):
    """Log-mel window (dB) -> ``n_sources`` soft masks summing to one per time-frequency bin.

    Mel bins are the channels of 1-D convolutions over time: every mask value sees the whole
    spectrum of a few frames, so a source can be "this harmonic comb" or "that noise colour"
    (how two stationary machines differ) rather than a local patch.
    """

    def __init__(self, n_mels: int, n_sources: int = N_SOURCES, hidden: int = 256) -> None:
        super().__init__()
        self.n_sources = n_sources
        self.norm = Standardize(n_mels)
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv1d(hidden, hidden, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv1d(hidden, n_sources * n_mels, 1),
        )

    def forward(self, db: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, W] dB -> masks [B, n_sources, n_mels, W]."""
        b, f, t = db.shape
        logits = self.net(self.norm(db)).float().view(b, self.n_sources, f, t)
        return torch.softmax(logits, dim=1)

    def sources(self, power: torch.Tensor) -> torch.Tensor:
        """Linear mel power [B, n_mels, W] -> separated powers [B, n_sources, n_mels, W] (they sum to it)."""
        return self.forward(power_to_db(power)) * power.unsqueeze(1)


def band_floor(power: torch.Tensor) -> torch.Tensor:
    """``SNR_CAP_DB`` below each mel band's mean power over the window: [..., n_mels, 1]."""
    return power.mean(dim=-1, keepdim=True) * 10 ** (-SNR_CAP_DB / 10) + AMIN


def log_error(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean squared error of log10 power per example above the reference's band floor (so near-silent bins
    and the -100 dB feature floor do not dominate the loss, like MixIT's SNR cap)."""
    eps = band_floor(ref)
    return ((torch.log10(est + eps) - torch.log10(ref + eps)) ** 2).mean(dim=(-2, -1))


def mixit_loss(sep: MaskNet, p1: torch.Tensor, p2: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """MixIT: separate ``p1 + p2`` and score the best assignment of its sources to ``p1`` and ``p2``.

    The best of the ``2**M`` assignments is found without gradients, then only it is backpropagated.
    """
    s = sep.sources(p1 + p2)  # [B, M, F, T]
    with torch.no_grad():
        e1 = torch.einsum("am,bmft->baft", table, s)
        e2 = s.sum(1, keepdim=True) - e1
        err = log_error(e1, p1.unsqueeze(1)) + log_error(e2, p2.unsqueeze(1))  # [B, 2**M]
        best = table[err.argmin(dim=1)]  # [B, M]
    e1 = torch.einsum("bm,bmft->bft", best, s)
    e2 = s.sum(1) - e1
    return (log_error(e1, p1) + log_error(e2, p2)).mean()


def train_separator(job: EncoderJob, epochs: int) -> tuple[MaskNet, list[float]]:
    """The MixIT pre-stage on the job's windows: each batch is mixed with a shuffled copy of itself."""
    cfg, device, gen = job.cfg, job.device, job.gen
    x_all, _ = job.tensors()
    sep = MaskNet(x_all.shape[1])
    sep.norm.fit(norm_sample(job.windows.windows, cfg.seed))
    sep.to(device)
    table = assignments(N_SOURCES).to(device)
    opt = torch.optim.Adam(sep.parameters(), lr=SEP_LR)
    scaler = grad_scaler(device)
    losses = []
    for _ in tqdm(range(epochs), desc="sepviews stage 0 (MixIT)", unit="epoch", disable=not cfg.progress, leave=False):
        sep.train()
        total = 0.0
        for idx in batches(len(x_all), SEP_BATCH, gen):
            p = db_to_power(x_all[idx]).to(device)
            # fp32 (no autocast): the loss compares sums of linear powers; the batch is shuffled, so its
            # roll pairs every window with another
            loss = mixit_loss(sep, p, torch.roll(p, 1, dims=0), table)
            total += optimizer_step(opt, scaler, loss) * len(idx)
        losses.append(total / epoch_size(len(x_all), SEP_BATCH))
    sep.eval()
    return sep, losses


@torch.no_grad()
def source_shares(sep: MaskNet, job: EncoderJob, limit: int = 512) -> list[float]:
    """Mean share of a window's power per source, largest first: a collapsed separator shows ~[1, 0, 0, 0]."""
    x = norm_sample(job.windows.windows, job.cfg.seed, limit).to(job.device)
    energy = sep.sources(db_to_power(x)).sum(dim=(2, 3))
    share = (energy / energy.sum(1, keepdim=True)).mean(0)
    return sorted((float(v) for v in share), reverse=True)


def separated_views(sep: MaskNet, fraction: float, device: torch.device, floor_db: float) -> Views:
    """The last ``fraction`` of a batch re-mixed from a random proper subset of its separated sources,
    plus the window's band floor, back in dB (never below the features' ``floor_db``), with its own
    label (a positive). Subsets keeping under ``MIN_KEPT_ENERGY`` of the window's power are never drawn;
    dropping only the weakest one qualifies."""
    table = assignments(N_SOURCES)[1:-1].to(device)  # proper, non-empty subsets

    def views(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(round(fraction * x.shape[0]))
        if n == 0:
            return x[:0], y[:0]
        with torch.no_grad():
            s = sep.sources(db_to_power(x[-n:]).to(device))  # [n, M, F, T]
            energy = s.sum(dim=(2, 3))
            kept = (energy / energy.sum(1, keepdim=True).clamp_min(AMIN)) @ table.T  # [n, subsets]
            ok = (kept >= MIN_KEPT_ENERGY).float().cpu()
            ok[ok.sum(1) == 0] = 1.0  # all-silent window: any subset
            choice = torch.multinomial(ok, 1, generator=gen).squeeze(1)
            remix = torch.einsum("bm,bmft->bft", table[choice.to(device)], s)
            # below the band floor the separator was never asked to be right: without this, bins a
            # source took whole would fall to the -100 dB feature floor, holes no real window has
            remix = remix + band_floor(s.sum(1))
        return power_to_db(remix).clamp_min(floor_db).to(x.device, x.dtype), y[-n:]

    return views


def fit(job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    cfg = job.cfg
    epochs = cfg.stage_epochs()
    per_epoch = max(1, len(job.windows.windows) // SEP_BATCH)
    sep, sep_losses = train_separator(job, max(1, min(epochs, math.ceil(SEP_STEPS / per_epoch))))
    job.metrics["mixit_loss"] = rounded(sep_losses)
    job.metrics["source_shares"] = rounded(source_shares(sep, job))
    positives = separated_views(sep, VIEW_FRACTION, job.device, job.params.floor_db)
    encoder = job.new_encoder()
    views = combine(position_negatives(cfg.negative_fraction, job.n_labels), positives)
    job.metrics["supcon_loss"] = rounded(
        supcon_stage(job, encoder, views, epochs=epochs, lr=cfg.supcon_lr, desc="sepviews stage 1 (SupCon)")
    )
    if job.n_classes < 2:
        return encoder, None
    views = combine(position_negatives(cfg.negative_fraction, job.n_classes), positives)
    head = arcface_stage(
        job, encoder, views, n_out=2 * job.n_classes, epochs=epochs, lr=cfg.arc_lr, desc="sepviews stage 2 (ArcFace)"
    )
    return encoder, head


METHOD = EncoderMethod(
    "sepviews",
    "mixture-invariant separation of the normal audio; separated sources as extra views",
    fit,
)
