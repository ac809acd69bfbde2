"""Training methods: which exist, each a module with a ``METHOD`` meeting :class:`training.methods.base.Method`.

Encoder methods (``clp``, ``geco``, ``semi``, ``advneg``, ``sepviews``) train an encoder + ID
classifier scored by ``knn`` / ``neglogp`` (:class:`training.methods.encoder.EncoderMethod`);
``ae`` (:mod:`training.methods.ae`) is the DCASE 2020 autoencoder baseline scored by ``recon``.
A new method: a module with ``METHOD``, one line in :data:`METHOD_TABLE`.
"""

from __future__ import annotations

from training.methods import advneg, ae, clp, geco, semi, sepviews
from training.methods.base import Method

METHOD_TABLE: dict[str, Method] = {m.METHOD.name: m.METHOD for m in (clp, geco, semi, advneg, sepviews, ae)}
METHODS: tuple[str, ...] = tuple(METHOD_TABLE)
METHOD_HELP: dict[str, str] = {name: method.help for name, method in METHOD_TABLE.items()}


def method_for(name: str) -> Method:
    """The method called ``name``; ValueError naming the valid ones."""
    method = METHOD_TABLE.get(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return method
