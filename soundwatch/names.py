"""Names that become registry paths and Redis keys: machine types and model versions.

Each has one strict pattern, checked wherever such a name comes in from outside the process — CLI
arguments, a Redis value, a reload message, an artifact's metadata. A name that passes is a single
path component: it contains no separator, is never ``.``/``..`` and never starts with a dot, so it
cannot point out of the model registry. (The machine-type rule is the message contracts' identifier
rule, :mod:`soundwatch.contracts`.)
"""

from __future__ import annotations

import re

from soundwatch.errors import BadInput

MACHINE_TYPE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
VERSION_PATTERN = re.compile(r"v[0-9]{4,9}")  # [0-9], not \d: \d also matches non-ASCII digits


class InvalidName(BadInput):
    """A machine type or model version that is not a plain name (e.g. ``../x``)."""


def is_machine_type(value: object) -> bool:
    return isinstance(value, str) and MACHINE_TYPE_PATTERN.fullmatch(value) is not None


def is_version(value: object) -> bool:
    return isinstance(value, str) and VERSION_PATTERN.fullmatch(value) is not None


def check_machine_type(value: object, source: str = "machine type") -> str:
    """``value`` if it is a valid machine type, else :class:`InvalidName` naming ``source``."""
    if not is_machine_type(value):
        raise InvalidName(
            f"{source} {value!r} is not a machine type name",
            "a machine type is 1-128 letters, digits, '_', '.', '-' starting with a letter or digit, e.g. fan",
        )
    return value  # type: ignore[return-value]  # checked above


def check_version(value: object, source: str = "model version") -> str:
    """``value`` if it is a valid model version (``v0001``, ``v0002``, ...), else :class:`InvalidName`."""
    if not is_version(value):
        raise InvalidName(
            f"{source} {value!r} is not a version name",
            "versions are 'v' and 4-9 digits, e.g. v0003; see `soundwatch models list`",
        )
    return value  # type: ignore[return-value]
