"""Per-machine sequence numbers that survive gateway restarts and crashes.

Downstream stages read a jump in a machine's ``sequence`` as a gap in its audio, and a
repeated number as a duplicate. So a restarted gateway must continue where it left off
and a crashed one must never hand out a number twice.

How: numbers are *reserved in blocks*. Before the store hands out number ``n`` for a
machine, a high-water mark ``> n`` has been written and fsync'd to
``<state_dir>/sequences.json``. A restart after a crash resumes from the marks, so it
skips at most one block per machine (a visible gap, never a reuse). A clean
:meth:`SequenceStore.close` records the exact next numbers, so a graceful restart
continues without any gap.

Machines first seen in a run would each need an fsync before their first chunk (a
gateway with 1000 machines: 1000 fsyncs in its first second). Instead the file holds a
``floor``: machines it does not list start at the floor, and at start-up the store durably
raises the floor by one block, which reserves ``[floor, floor + block)`` for every new
machine at once. A crash therefore starts new-to-the-file machines above anything the
crashed run handed out; a clean close lists every machine and puts the floor back.

One gateway process owns a state directory at a time (an ``flock`` on ``lock``);
a second one gets a :class:`~soundwatch.errors.ConfigError` naming the directory.

Epoch: every start also picks a new ``epoch`` (wall-clock ns, and always above the one in
the file), written with the first fsync and carried by every chunk. ``(gateway_id, epoch)``
names one run of the gateway, whose numbers are consecutive; the feature stage lets the
newest epoch own a machine, so a gateway whose state was wiped (numbers restart at 0) or a
replacement gateway is never mistaken for a replay (see :mod:`features.windower`).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from soundwatch.errors import BadInput, ConfigError

_FILE = "sequences.json"
_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SequenceStore:
    """Hands out ``0, 1, 2, ...`` per machine key, durably, across process restarts.

    ``block`` is how many numbers are reserved per fsync: larger means fewer disk
    writes and a larger gap after a crash. Not thread-safe: one gateway loop calls it.
    """

    def __init__(self, state_dir: Path, block: int = 1000) -> None:
        if block < 1:
            raise ValueError(f"block={block} must be >= 1")
        self.state_dir = Path(state_dir)
        self.block = block
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.state_dir / "lock", "a+")  # noqa: SIM115 - held for the store's lifetime
        try:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_fh.close()
            raise ConfigError(
                f"another gateway is already using the state directory {self.state_dir}",
                "stop it, or give this gateway its own SOUNDWATCH_INGEST__STATE_DIR and gateway id",
            ) from exc
        self._path = self.state_dir / _FILE
        try:
            self._next: dict[str, int] = self._load()
        except BaseException:
            self._lock_fh.close()  # releases the flock
            raise
        self._reserved: dict[str, int] = dict(self._next)  # durable high-water marks
        self.epoch = max(time.time_ns(), self._last_epoch + 1)  # this run's; later runs get larger ones
        self._closed = False
        # reserve one block for every machine this run meets for the first time (one fsync)
        self._persist(self._reserved, self._floor + self.block)

    def _load(self) -> dict[str, int]:
        self._floor = 0
        self._last_epoch = 0
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text())
            if data.get("version") != _VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            marks = {str(k): int(v) for k, v in data["next"].items()}
            self._floor = int(data.get("floor", 0))
            self._last_epoch = int(data.get("epoch", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BadInput(
                f"the sequence state file {self._path} is unreadable ({exc})",
                "restore it from a backup; deleting it restarts every machine at sequence 0, which "
                "downstream stages will read as a restart of the stream",
            ) from exc
        if self._floor < 0 or any(v < 0 for v in marks.values()):
            raise BadInput(f"the sequence state file {self._path} holds negative numbers", "restore it")
        return marks

    def _persist(self, marks: dict[str, int], floor: int) -> None:
        payload = json.dumps(
            {"version": _VERSION, "floor": floor, "next": marks, "epoch": self.epoch}, sort_keys=True
        ).encode()
        write_atomic(self._path, payload)

    def next(self, key: str) -> int:
        """The next number for ``key``; reserves (and fsyncs) a new block when the current one is used up."""
        if self._closed:
            raise RuntimeError("SequenceStore is closed")
        n = self._next.get(key, self._floor)
        # a machine new to the file is covered by the floor's block, others by their own mark
        if n >= self._reserved.get(key, self._floor + self.block):
            marks = {**self._reserved, key: n + self.block}
            self._persist(marks, self._floor + self.block)
            self._reserved = marks
        self._next[key] = n + 1
        return n

    def peek(self, key: str) -> int:
        """The number :meth:`next` would return for ``key``, without taking it."""
        return self._next.get(key, self._floor)

    def close(self) -> None:
        """Record the exact next numbers (no gap on a clean restart) and release the directory."""
        if self._closed:
            return
        self._persist(dict(self._next), self._floor)
        self._closed = True
        fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
        self._lock_fh.close()

    def __enter__(self) -> SequenceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
