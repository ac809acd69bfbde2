"""Training methods: which exist and how to run an encoder method.

``ae`` (the DCASE 2020 autoencoder baseline) lives in :mod:`training.train`; every other method is an
*encoder method* (module :mod:`training.methods.<name>`, function ``fit(job)``) whose artifact is an
encoder + ID classifier scored by ``knn`` / ``neglogp`` (see :mod:`training.methods.common`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soundwatch.model.networks import ArcMarginHead, Encoder
    from training.methods.common import EncoderJob

ENCODER_METHODS: dict[str, str] = {
    "clp": "machine-ID contrastive learning: SupCon then ArcFace, mel-shifted negatives (default)",
    "geco": "predictive self-attention AE whose predictions are contrastive negatives of the real windows",
    "semi": "AE view and MobileNetV2 view of each window pulled together, with an ID classifier",
    "advneg": "position-sensitive negatives: frequency/time-shifted and patch-swapped windows pushed away",
    "sepviews": "mixture-invariant separation of the normal audio; separated sources as extra views",
}
METHODS: tuple[str, ...] = (*ENCODER_METHODS, "ae")
METHOD_HELP: dict[str, str] = {**ENCODER_METHODS, "ae": "DCASE 2020 dense autoencoder baseline"}


def is_encoder_method(method: str) -> bool:
    return method in ENCODER_METHODS


def fit_encoder(method: str, job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    """Run encoder method ``method`` (lazily imported: a method's extra networks load only when used)."""
    if method not in ENCODER_METHODS:
        raise ValueError(f"{method!r} is not an encoder method; valid: {', '.join(ENCODER_METHODS)}")
    module = import_module(f"training.methods.{method}")
    return module.fit(job)
