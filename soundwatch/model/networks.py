"""Small networks on log-mel windows ``[B, n_mels, W]``.

* :class:`Encoder` — the ``clp`` encoder: 4 conv blocks, pooled over *time only* (frequency
  position carries meaning on a spectrogram, so it is kept until the final linear layer), then a
  linear projection to an L2-normalised embedding. ~8 M multiply-adds per 128x64 window
  (channels 8-16-32-64), so a 2-core CPU scores hundreds of windows per second.
  ``arch="mobilenetv2"`` swaps the trunk for MobileNetV2-style inverted residual blocks (the
  ``semi`` method's CNN view, seed paper 2) at a similar cost; pooling and projection are shared.
* :class:`ArcMarginHead` — additive angular margin (ArcFace) classifier over machine IDs.
* :class:`FrameAE` — the DCASE 2020 baseline: a dense autoencoder on 5-frame x n_mels contexts.

Every network is rebuilt from a small config dict saved in the artifact (nanoGPT style), and
input normalisation statistics are buffers, so the artifact alone reproduces inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class EncoderConfig:
    n_mels: int = 128
    window_frames: int = 64
    channels: tuple[int, ...] = (8, 16, 32, 64)
    embedding_dim: int = 128
    arch: str = "cnn"  # trunk: "cnn" (conv blocks) or "mobilenetv2" (inverted residuals)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> EncoderConfig:
        return cls(**{**d, "channels": tuple(d["channels"])})  # type: ignore[arg-type]


class Standardize(nn.Module):
    """Per-mel-bin (or scalar) standardisation with statistics fitted on training windows."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels, 1))
        self.register_buffer("std", torch.ones(n_mels, 1))

    @torch.no_grad()
    def fit(self, windows: torch.Tensor, per_bin: bool = True) -> None:
        """``windows``: [N, n_mels, W] in dB."""
        x = windows.float()
        if per_bin:
            mean = x.mean(dim=(0, 2)).unsqueeze(1)
            std = x.std(dim=(0, 2)).unsqueeze(1)
        else:
            mean = x.mean().expand_as(self.mean)
            std = x.std().expand_as(self.std)
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return [*layers, nn.ReLU6()] if act else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise (carries the stride), linear 1x1 projection;
    an identity shortcut when the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            *_conv_bn(cin, mid, 1), *_conv_bn(mid, mid, 3, stride, groups=mid), *_conv_bn(mid, cout, 1, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _mobilenetv2_trunk(channels: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 stem conv, then per further width an expanding block (x4) and a residual one (x2).

    Downsamples by ``2 ** (len(channels) - 1)`` like the cnn trunk (the last stage keeps stride 1),
    so the frequency resolution reaching the projection is the same; ~7 M multiply-adds per 128x64
    window with channels 8-16-32-64 (the cnn trunk: ~8 M).
    """
    n = len(channels)
    layers: list[nn.Module] = [*_conv_bn(1, channels[0], 3, stride=2 if n > 1 else 1)]
    for i in range(1, n):
        layers += [
            InvertedResidual(channels[i - 1], channels[i], 2 if i < n - 1 else 1, expansion=4),
            InvertedResidual(channels[i], channels[i], 1, expansion=2),
        ]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Log-mel window -> unit-norm embedding."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = Standardize(cfg.n_mels)
        chans = (1, *cfg.channels)
        n = len(cfg.channels)
        if cfg.arch == "cnn":
            self.convs = nn.Sequential(*[_block(chans[i], chans[i + 1], pool=i < n - 1) for i in range(n)])
            freq_out = cfg.n_mels // 2 ** (n - 1)
        elif cfg.arch == "mobilenetv2":
            self.convs = _mobilenetv2_trunk(cfg.channels)
            freq_out = cfg.n_mels
            for _ in range(n - 1):  # stride-2 convs with padding 1 round up
                freq_out = (freq_out + 1) // 2
        else:
            raise ValueError(f"unknown encoder arch {cfg.arch!r}; valid: cnn, mobilenetv2")
        self.proj = nn.Sequential(
            nn.Dropout(0.1),
            nn.Linear(cfg.channels[-1] * freq_out, cfg.embedding_dim),
            nn.BatchNorm1d(cfg.embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(self.norm(x).unsqueeze(1))  # [B, C, F', T']
        h = h.mean(dim=3).flatten(1)  # pool over time only
        return F.normalize(self.proj(h).float(), dim=1)


class ProjectionHead(nn.Module):
    """SupCon projection MLP (used in stage 1 only, discarded afterwards)."""

    def __init__(self, dim: int, out: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, out))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(e).float(), dim=1)


class ArcMarginHead(nn.Module):
    """ArcFace: logits ``s*cos(theta + m)`` for the target class, ``s*cos(theta)`` for others.

    At inference (no labels) it returns plain ``s*cos(theta)`` logits, whose softmax gives
    ``p(class | window)`` for the -log p(ID) score.
    """

    def __init__(self, dim: int, n_classes: int, scale: float = 30.0, margin: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        self.margin = margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        cos = cos.clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return self.scale * cos
        theta = torch.acos(cos)
        target = torch.cos(theta + self.margin)
        # keep the target logit monotonic once theta + m passes pi (standard "easy margin" fix)
        target = torch.where(theta + self.margin < math.pi, target, cos - self.margin * math.sin(self.margin))
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return self.scale * torch.where(onehot, target, cos)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): positives share a label.

    Anchors without any positive in the batch are left out of the mean.
    """
    n = z.shape[0]
    sim = (z @ z.T) / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(1)
    keep = n_pos > 0
    if not bool(keep.any()):
        return z.sum() * 0.0
    mean_log_prob_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)[keep] / n_pos[keep]
    return -mean_log_prob_pos.mean()


@dataclass(frozen=True)
class AEConfig:
    n_mels: int = 128
    context: int = 5
    hidden: int = 128
    bottleneck: int = 8

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> AEConfig:
        return cls(**d)  # type: ignore[arg-type]


class FrameAE(nn.Module):
    """DCASE 2020 Task 2 baseline AE (640-128-128-128-8-128-128-128-640, BN + ReLU, MSE).

    Operates on a window by slicing it into all ``context``-frame contexts; the window score is
    the mean squared reconstruction error over them (in standardised dB units).
    """

    def __init__(self, cfg: AEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm = Standardize(cfg.n_mels)
        d, h, b = cfg.n_mels * cfg.context, cfg.hidden, cfg.bottleneck

        def layer(i: int, o: int) -> list[nn.Module]:
            return [nn.Linear(i, o), nn.BatchNorm1d(o), nn.ReLU()]

        self.net = nn.Sequential(
            *layer(d, h),
            *layer(h, h),
            *layer(h, h),
            *layer(h, b),
            *layer(b, h),
            *layer(h, h),
            *layer(h, h),
            nn.Linear(h, d),
        )

    def contexts(self, windows: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, W] -> [B, W-context+1, context*n_mels] (frame-major like the baseline)."""
        x = self.norm(windows)  # [B, M, W]
        ctx = x.unfold(2, self.cfg.context, 1)  # [B, M, T, c]
        return ctx.permute(0, 2, 3, 1).flatten(2)  # [B, T, c*M]

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.net(flat)

    def window_errors(self, windows: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per window, [B]."""
        ctx = self.contexts(windows)
        b, t, d = ctx.shape
        rec = self.net(ctx.reshape(b * t, d)).float().reshape(b, t, d)
        return ((rec - ctx.float()) ** 2).mean(dim=(1, 2))
