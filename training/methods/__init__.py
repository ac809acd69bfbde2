"""Training methods: which exist, each a module with a ``METHOD`` meeting :class:`training.methods.base.Method`.

Encoder methods (``clp``, ``geco``, ``semi``, ``advneg``, ``sepviews``) train an encoder + ID
classifier scored by ``knn`` / ``neglogp`` (:class:`training.methods.encoder.EncoderMethod`);
``ae`` (:mod:`training.methods.ae`) is the DCASE 2020 autoencoder baseline scored by ``recon``;
the statistic methods ``stats-*`` (:mod:`training.methods.stats`: no network, per-band statistics +
a density per machine) fit in seconds and are scored by ``stats``.
A new method: a module with ``METHOD`` (or ``METHODS``, for variants), one line in :data:`METHOD_TABLE`.
"""

from __future__ import annotations

from training.methods import advneg, ae, clp, geco, semi, sepviews, stats
from training.methods.base import Method

METHOD_TABLE: dict[str, Method] = {
    m.name: m for m in (*(mod.METHOD for mod in (clp, geco, semi, advneg, sepviews, ae)), *stats.METHODS)
}
STATS_METHODS: tuple[str, ...] = tuple(m.name for m in stats.METHODS)  # auto's preference order on ties
METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
METHOD_HELP: dict[str, str] = {name: method.help for name, method in METHOD_TABLE.items()}


def is_stats_method(name: str) -> bool:
    """A statistic method (seconds to train; ``auto`` tries them before the deep ones)."""
    return name in STATS_METHODS


def method_for(name: str) -> Method:
    """The method called ``name``; ValueError naming the valid ones."""
    method = METHOD_TABLE.get(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return method
