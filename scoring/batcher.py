"""Micro-batching across machines. Pure: the clock is passed in.

Inference cost is dominated by per-call overhead for small inputs, so the worker
collects windows from *all* machines it owns until either ``max_batch`` windows
are waiting or the oldest has waited ``max_wait_ms`` — bounding the latency a
batch adds — and then runs one forward pass per machine type (a model is per
type). Arrival order is kept inside each group, so a machine's windows reach
its median filter in stream order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Batch(Generic[T]):
    """A drained batch: ``items`` in arrival order and their groups (by key, arrival order kept)."""

    items: list[T]
    groups: dict[Hashable, list[T]]

    def __len__(self) -> int:
        return len(self.items)


class MicroBatcher(Generic[T]):
    """Collect items; ``due(now)`` says when to flush; ``drain()`` returns the batch grouped by ``key``."""

    def __init__(self, key: Callable[[T], Hashable], max_batch: int, max_wait_ms: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._key = key
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._items: list[T] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def room(self) -> int:
        """How many items fit before the batch is full (the worker polls at most this many)."""
        return max(0, self.max_batch - len(self._items))

    def add(self, item: T, now: float) -> None:
        if self._first_at is None:
            self._first_at = now
        self._items.append(item)

    def time_left(self, now: float) -> float:
        """Seconds until the oldest waiting item's deadline (``max_wait`` when empty, 0 when due)."""
        if self._first_at is None:
            return self.max_wait_s
        return max(0.0, self._first_at + self.max_wait_s - now)

    def due(self, now: float) -> bool:
        if not self._items:
            return False
        return len(self._items) >= self.max_batch or self.time_left(now) <= 0.0

    def drain(self) -> Batch[T]:
        items, self._items, self._first_at = self._items, [], None
        groups: dict[Hashable, list[T]] = {}
        for item in items:
            groups.setdefault(self._key(item), []).append(item)
        return Batch(items, groups)


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    """Consecutive slices of at most ``size`` items (bounds one forward pass's memory)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
