"""Audio sources for the gateway: file replay, the machine simulator and a live microphone.

A source has a ``sample_rate`` and a ``blocks(stop)`` generator of
:class:`~ingest.producer.Block` (one machine's next ``chunk_samples`` of float32 mono
audio at that rate). Sources pace themselves (real time, ``speed`` x, or as fast as
possible) and return promptly once ``stop`` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Protocol

from ingest.producer import Block


class Source(Protocol):
    sample_rate: int

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]: ...

    def describe(self) -> str: ...


class AudioClock:
    """Audio time of a stream: an anchor (epoch ns) plus samples so far, so chunk times never drift."""

    def __init__(self, sample_rate: int, anchor_ns: int | None = None) -> None:
        self.sample_rate = sample_rate
        self.anchor_ns = time.time_ns() if anchor_ns is None else anchor_ns
        self.samples = 0

    def take(self, n: int) -> int:
        """Start time (ns) of the next ``n`` samples; advances the clock."""
        start = self.anchor_ns + (self.samples * 1_000_000_000) // self.sample_rate
        self.samples += n
        return start


class Pacer:
    """Releases audio at ``speed`` x real time (``speed`` 0 or None: as fast as possible)."""

    def __init__(self, speed: float | None) -> None:
        if speed is not None and speed < 0:
            raise ValueError(f"speed={speed} must be >= 0 (0 = as fast as possible)")
        self.speed = speed or 0.0
        self._t0 = time.monotonic()

    def wait_until(self, audio_seconds: float, stop: threading.Event) -> bool:
        """Sleep until ``audio_seconds`` of audio are due; False if ``stop`` was set meanwhile."""
        if self.speed <= 0:
            return not stop.is_set()
        delay = self._t0 + audio_seconds / self.speed - time.monotonic()
        if delay > 0:
            return not stop.wait(delay)
        return not stop.is_set()


__all__ = ["AudioClock", "Block", "Pacer", "Source"]
