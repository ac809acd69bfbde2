"""Device, precision and seeding: the ONE place that decides where tensors live and in what dtype.

Why one helper: training, evaluation and the scoring worker must agree on what ``auto`` means and
how mixed precision is used, and tests must be able to force the CPU.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from soundwatch.choices import DEVICE_CHOICES
from soundwatch.errors import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is a ConfigError."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {spec!r} requested but torch sees no CUDA GPU (torch {torch.__version__})",
                hint="use --device cpu (or auto), or install a CUDA build of torch on a GPU machine",
            )
        return torch.device(spec)
    if spec == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"unknown device {spec!r}", hint=f"valid devices: {', '.join(DEVICE_CHOICES)}")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device``: bf16 on a CUDA GPU that supports it, else None (fp32).

    Never fp16: log-mel dB values and the kNN/softmax scores overflow its range; bf16 keeps fp32's.
    """
    if device.type != "cuda" or not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device) -> Iterator[None]:
    """The one place autocast is entered: bf16 on CUDA where supported, else a no-op (fp32)."""
    dtype = amp_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type="cuda", dtype=dtype):
        yield


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler, active only for fp16 — which :func:`amp_dtype` never picks, so it is a pass-through;
    kept so a training step reads the same whatever the precision policy."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device) == torch.float16)


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor) -> float:
    """One (possibly loss-scaled) optimisation step; returns the loss as a float."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; returns a CPU generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
