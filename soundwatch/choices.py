"""Closed sets of values that several commands take as options.

Typer shows an Enum option's values in ``--help`` and turns any other value into a usage error
(exit 2) that lists them, before a command runs.
"""

from __future__ import annotations

from enum import Enum


class Device(str, Enum):
    """Where torch runs: ``auto`` = CUDA when torch sees a GPU, else CPU."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


DEVICE_CHOICES: tuple[str, ...] = tuple(d.value for d in Device)
