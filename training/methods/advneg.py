"""``advneg``: position-sensitive, cheaply adversarial negatives (seed paper 4).

A CNN with time pooling barely cares *where* a pattern sits, yet on a spectrogram position is physics.
``clp`` teaches one such sensitivity (mel shifts); ``advneg`` adds kinds of perturbation that
each turn a normal window into a plausible *wrong machine*, each kind with its own negative classes
(label ``k * n_labels + c`` for kind ``k`` of class ``c``), pushed away from class ``c`` by SupCon and by
the ArcFace stage. Kinds, and why each is a "wrong machine" and not normal variation:

1. ``freq``: the whole window shifted 4-12 mel bins. Harmonics and resonances sit at frequencies
   fixed by speed and structure; a machine whose every component moved is another machine (or a
   shifted resonance, a fault). Normal speed drift moves partials by far less.
2. ``desync``: the bins above a random split rolled in time against those below, so events that
   co-occur across bands (amplitude modulation of all harmonics, an impact and the resonance it
   excites) no longer line up. One mechanism drives both bands on a real machine; two
   unsynchronised ones are not that machine. Kept only where the original *has* cross-band co-
   modulation and the roll breaks it: for a stationary texture a band roll changes nothing a
   time-pooling encoder can see, and calling it a negative would teach noise. (A plain circular time
   roll of the whole window is never used: it is the same sound at another moment.)
3. ``swap``: two rectangular patches at mel positions at least a patch height apart swapped (half of
   the time full-width, i.e. two mel bands swapped). Energy is transplanted to where this machine has
   none and its own slot falls silent: a spectral envelope no normal clip has, and when the patches
   are short, an intermittent component (like a rub or an excited resonance). Patches at the same
   frequency are not used: on a stationary sound they are a no-op.

"Adversarial" in the cheap sense: per window and kind, ``CANDIDATES`` perturbations are drawn and the
one whose embedding (current encoder, eval mode, no gradient) is *closest* to the original's is kept
(the hardest negative), among candidates that change the encoder's input enough to be a real
difference. The artifact is the plain encoder + ID head, scored like ``clp``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from soundwatch.model.device import autocast
from soundwatch.model.networks import ArcMarginHead, Encoder
from training.methods.common import EncoderJob, Views, arcface_stage, rounded, shift_mel, supcon_stage
from training.methods.encoder import EncoderMethod

KINDS: tuple[str, ...] = ("freq", "desync", "swap")
CANDIDATES = 3  # perturbations drawn per window and kind; the hardest valid one is kept
MIN_CHANGE = 0.05  # mean squared change of the standardised input below which a candidate is "no change"
MIN_COMOD = 0.3  # cross-band envelope correlation a window needs for a desync to break something
MIN_BREAK = 0.3  # ... and the drop in that correlation a desync candidate must cause

Perturb = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _rand(lo: int, hi: int, gen: torch.Generator) -> int:
    """A uniform integer in ``[lo, hi]``."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def freq_shift(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    s = _rand(4, 12, gen) * (1 if _rand(0, 1, gen) else -1)
    return shift_mel(w, s)


def desync(w: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, int, int]:
    """Bins ``>= split`` rolled ``s`` frames in time against the rest; returns (window, split, s)."""
    n_mels, frames = w.shape
    split = _rand(n_mels // 8, n_mels - n_mels // 8, gen)
    s = _rand(max(1, frames // 4), max(1, 3 * frames // 4), gen)
    out = w.clone()
    out[split:] = torch.roll(w[split:], s, dims=1)
    return out, split, s


def swap(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Two patches (h mel bins x wd frames) at least h bins apart in frequency swapped."""
    n_mels, frames = w.shape
    h = _rand(4, max(4, min(16, n_mels // 4)), gen)
    wd = frames if _rand(0, 1, gen) else _rand(max(1, frames // 4), max(1, frames // 2), gen)
    f1 = _rand(0, n_mels - 2 * h, gen)
    f2 = _rand(f1 + h, n_mels - h, gen)
    t1, t2 = _rand(0, frames - wd, gen), _rand(0, frames - wd, gen)
    out = w.clone()
    out[f1 : f1 + h, t1 : t1 + wd] = w[f2 : f2 + h, t2 : t2 + wd]
    out[f2 : f2 + h, t2 : t2 + wd] = w[f1 : f1 + h, t1 : t1 + wd]
    return out


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-8))


def candidates(
    kind: str,
    w: torch.Tensor,
    z: torch.Tensor,
    standardize: Callable[[torch.Tensor], torch.Tensor],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``CANDIDATES`` perturbations of window ``w`` (standardised: ``z``) and whether each is a valid
    negative (see the module docstring for the rules)."""
    outs, ok = [], []
    for _ in range(CANDIDATES):
        if kind == "desync":
            c, split, s = desync(w, gen)
            e_lo, e_hi = z[:split].mean(0), z[split:].mean(0)
            before = _corr(e_lo, e_hi)
            valid = before >= MIN_COMOD and before - _corr(e_lo, torch.roll(e_hi, s)) >= MIN_BREAK
        else:
            c = freq_shift(w, gen) if kind == "freq" else swap(w, gen)
            valid = float(((standardize(c) - z) ** 2).mean()) >= MIN_CHANGE
        outs.append(c)
        ok.append(valid)
    return torch.stack(outs), torch.tensor(ok)


def hard_negatives(encoder: Encoder, fraction: float, n_labels: int, stats: dict[str, list[float]]) -> Views:
    """View function: for a ``fraction`` of the batch per kind, the hardest valid negative (label
    ``(k + 1) * n_labels + y``). ``stats[kind]`` collects the share of windows that got one."""

    def standardize(x: torch.Tensor) -> torch.Tensor:
        return (x - encoder.norm.mean.cpu()) / encoder.norm.std.cpu()

    def views(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(round(fraction * x.shape[0]))
        if n == 0:
            return x[:0], y[:0]
        xs, ys = [], []
        for k, kind in enumerate(KINDS, start=1):
            pick = torch.randperm(x.shape[0], generator=gen)[:n]
            z = standardize(x[pick])
            cands, valid = zip(
                *(candidates(kind, x[i], z[j], standardize, gen) for j, i in enumerate(pick.tolist())), strict=True
            )
            cand, ok = torch.stack(cands), torch.stack(valid)  # [n, C, M, W], [n, C]
            stats.setdefault(kind, []).append(float(ok.any(1).float().mean()))
            keep = ok.any(1)
            if not bool(keep.any()):
                continue
            cand, ok, orig = cand[keep], ok[keep], x[pick][keep]
            sim = _similarity(encoder, orig, cand).masked_fill(~ok, float("-inf"))
            xs.append(cand[torch.arange(len(cand)), sim.argmax(1)])
            ys.append(y[pick][keep] + k * n_labels)
        if not xs:
            return x[:0], y[:0]
        return torch.cat(xs), torch.cat(ys)

    return views


@torch.no_grad()
def _similarity(encoder: Encoder, orig: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [n, C] of each candidate's embedding to its original's, in eval mode (so
    batch-norm statistics are neither used from nor written by this probe)."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    n, c = cand.shape[:2]
    with autocast(device):
        e = encoder(torch.cat([orig, cand.flatten(0, 1)]).to(device)).float()
    encoder.train(was_training)
    return (e[n:].view(n, c, -1) @ e[:n].unsqueeze(2)).squeeze(2).cpu()


def fit(job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    cfg = job.cfg
    encoder = job.new_encoder()
    epochs = cfg.stage_epochs()
    stats: dict[str, list[float]] = {}
    views = hard_negatives(encoder, cfg.negative_fraction, job.n_labels, stats)
    job.metrics["supcon_loss"] = rounded(
        supcon_stage(job, encoder, views, epochs=epochs, lr=cfg.supcon_lr, desc="advneg stage 1 (SupCon)")
    )
    if job.n_classes >= 2:
        head = arcface_stage(
            job,
            encoder,
            hard_negatives(encoder, cfg.negative_fraction, job.n_classes, stats),
            n_out=(len(KINDS) + 1) * job.n_classes,
            epochs=epochs,
            lr=cfg.arc_lr,
            desc="advneg stage 2 (ArcFace)",
        )
    else:
        head = None
    job.metrics["advneg_valid_share"] = {k: round(sum(v) / len(v), 4) for k, v in stats.items() if v}
    return encoder, head


METHOD = EncoderMethod(
    "advneg",
    "position-sensitive negatives: frequency/time-shifted and patch-swapped windows pushed away",
    fit,
)
