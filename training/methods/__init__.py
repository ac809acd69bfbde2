"""Training methods: which exist and how to run an encoder method.

``ae`` (the DCASE 2020 autoencoder baseline) lives in :mod:`training.train`; the statistic methods
``stats-*`` (no network: per-band statistics + a density, :mod:`training.methods.stats`) fit in
seconds; every other method is an *encoder method* (module :mod:`training.methods.<name>`, function
``fit(job)``) whose artifact is an encoder + ID classifier scored by ``knn`` / ``neglogp``
(see :mod:`training.methods.common`).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.methods.common import EncoderJob
    from training.models import ArcMarginHead, Encoder

ENCODER_METHODS: dict[str, str] = {
    "clp": "machine-ID contrastive learning: SupCon then ArcFace, mel-shifted negatives",
    "geco": "predictive self-attention AE whose predictions are contrastive negatives of the real windows",
    "semi": "AE view and MobileNetV2 view of each window pulled together, with an ID classifier",
    "advneg": "position-sensitive negatives: frequency/time-shifted and patch-swapped windows pushed away",
    "sepviews": "mixture-invariant separation of the normal audio; separated sources as extra views",
}
# Order = auto's preference on ties: the broadest detector (events, dropouts and steady shifts) first.
STATS_METHODS: dict[str, str] = {
    "stats-q25maxmean": "per-band 25% quantile, max and mean + Mahalanobis per machine; seconds to train",
    "stats-max": "per-band max of the log-mel + Mahalanobis per machine (short events); seconds to train",
    "stats-q25max": "per-band 25% quantile and max + Mahalanobis per machine; seconds to train",
    "stats-q25knn": "per-band 25% quantile + k-NN per machine (steady spectrum); seconds to train",
    "stats-meanknn": "per-band mean + k-NN per machine (steady spectral shift); seconds to train",
}
METHODS: tuple[str, ...] = (*ENCODER_METHODS, "ae", *STATS_METHODS)
METHOD_HELP: dict[str, str] = {**ENCODER_METHODS, "ae": "DCASE 2020 dense autoencoder baseline", **STATS_METHODS}


def is_encoder_method(method: str) -> bool:
    return method in ENCODER_METHODS


def is_stats_method(method: str) -> bool:
    return method in STATS_METHODS


def fit_encoder(method: str, job: EncoderJob) -> tuple[Encoder, ArcMarginHead | None]:
    """Run encoder method ``method`` (lazily imported: a method's extra networks load only when used)."""
    if method not in ENCODER_METHODS:
        raise ValueError(f"{method!r} is not an encoder method; valid: {', '.join(ENCODER_METHODS)}")
    module = import_module(f"training.methods.{method}")
    return module.fit(job)
