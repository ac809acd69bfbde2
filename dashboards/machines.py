"""Which machines the dashboards and alert rules are built for.

The builders take a plain list of :class:`Machine` so they do not depend on where the list came
from. Two sources are provided: the model registry (the machines a model was trained for) and
InfluxDB (the machines that have written scores), plus a parser for ``type/id`` strings given on
the command line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from soundwatch.errors import BadInput
from soundwatch.influx import schema as ix
from soundwatch.influx.client import InfluxClient, quote_ident
from soundwatch.settings import InfluxSettings

# The same rule soundwatch.contracts applies to machine names: safe in InfluxQL string literals,
# Grafana label values and file names without any escaping.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


class Machine(NamedTuple):
    """One monitored machine: its type (the model it shares) and its id within the type."""

    machine_type: str
    machine_id: str

    @property
    def key(self) -> str:
        """``type/id``: unique plant-wide (ids repeat across types, e.g. ``id_00``)."""
        return f"{self.machine_type}/{self.machine_id}"


def check_machines(machines: Iterable[Machine | tuple[str, str]]) -> list[Machine]:
    """Validate, de-duplicate and sort machines; raise :class:`BadInput` naming a bad one.

    Names end up inside InfluxQL string literals and alert labels, so they must match the
    contract's id pattern (no quotes, spaces or slashes).
    """
    out: set[Machine] = set()
    for item in machines:
        m = Machine(*item)
        for name, value in (("machine_type", m.machine_type), ("machine_id", m.machine_id)):
            if not isinstance(value, str) or not _ID.match(value):
                raise BadInput(
                    f"{name}={value!r} of machine {item!r} is not a valid machine name",
                    "use 1-128 letters, digits, '_', '.', '-' starting with a letter or digit",
                )
        out.add(m)
    return sorted(out)


def parse_machines(text: str) -> list[Machine]:
    """Parse ``"fan/id_00,pump/id_02"`` (comma or whitespace separated) into machines."""
    items = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    pairs: list[tuple[str, str]] = []
    for item in items:
        if item.count("/") != 1:
            raise BadInput(f"machine {item!r} is not of the form TYPE/ID", "e.g. --machines fan/id_00,pump/id_02")
        machine_type, machine_id = item.split("/")
        pairs.append((machine_type, machine_id))
    return check_machines(pairs)


def machines_from_registry(root: Path) -> list[Machine]:
    """Machines known to the model registry at ``root``: every type's model and its machine ids.

    Reads each type's verified metadata (the current version in Redis, or the newest on disk); no
    weights are loaded.
    """
    # deferred on purpose: the registry imports torch, which no other dashboards command needs
    from soundwatch.model.registry import ModelRegistry  # deferred: loads torch

    registry = ModelRegistry(root)
    pairs: list[tuple[str, str]] = []
    for machine_type in registry.machine_types():
        meta = registry.metadata(machine_type, registry.resolve_version(machine_type))
        pairs.extend((machine_type, mid) for mid in meta.machine_ids)
    return check_machines(pairs)


def machines_from_influx(settings: InfluxSettings) -> list[Machine]:
    """Machines that have written ``asd_score`` points (``SHOW SERIES``, an index lookup: cheap)."""
    pairs: list[tuple[str, str]] = []
    with InfluxClient(settings) as client:
        series_list = client.query(f"SHOW SERIES FROM {quote_ident(ix.SCORE_MEASUREMENT)}")
    for series in series_list:
        for (key,) in series.values:
            tags = dict(part.split("=", 1) for part in key.split(",")[1:] if "=" in part)
            if ix.MACHINE_TYPE in tags and ix.MACHINE_ID in tags:
                pairs.append((tags[ix.MACHINE_TYPE], tags[ix.MACHINE_ID]))
    return check_machines(pairs)
