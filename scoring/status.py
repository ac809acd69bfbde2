"""Which machines the scoring group knows, when each last sent audio, and the staleness signal built on it.

Why it needs its own store: a machine that stops sending produces no window, so nothing in the
data path would ever mention it again. The worker therefore remembers every machine it has
scored, with the partition its windows come from and the wall-clock time its newest window was
received, in Redis (one hash per consumer group, next to the filter/alert state of
:mod:`scoring.state`), and every ``scoring.status_interval_s`` writes one ``machine_status``
point per known machine of the partitions it currently owns — after a restart or a rebalance
too, since the list lives in Redis.

Decisions:

* "received" counts scored windows only: a window that is dead-lettered (no model, other feature
  parameters) does not refresh a machine, so a machine nobody can score turns stale instead of
  looking normal;
* a window not newer than the machine's newest (a replay after a crash) does not refresh it;
* the partition is the one the machine's newest window was read from — exact whatever the
  upstream routing (the feature worker sends the windows of ``audio.raw`` partition ``p`` to
  ``features.logmel`` partition ``p % n``, which equals kafka-python's murmur2 partition of the
  machine key only when both topics have the same partition count). Every machine has exactly
  one partition, so exactly one worker of the group reports it.

Redis down: the worker keeps reporting what it has in memory and saves again later (best effort,
logged), like the scoring state.

Decommissioned machines: a machine silent for ``scoring.forget_after_s`` (default 7 days) is dropped
from the known set (a log line says so), and ``soundwatch machines forget TYPE ID`` drops one at once.
Either leaves a tombstone (hash ``...:forgotten``, machine -> when) so that every worker of the group
drops its in-memory copy at its next refresh; a machine heard again afterwards is known again.
Tombstones are removed after another ``forget_after_s``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from soundwatch.influx.schema import Point, machine_status_point

log = logging.getLogger(__name__)

NS = 1_000_000_000


@dataclass(frozen=True)
class LastAudio:
    """A machine's newest scored window: the partition it came from, its end time, when it was received."""

    partition: int
    end_ns: int
    received_ns: int  # wall clock

    def to_json(self) -> str:
        return json.dumps({"p": self.partition, "e": self.end_ns, "r": self.received_ns}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> LastAudio:
        data = json.loads(text)
        return cls(int(data["p"]), int(data["e"]), int(data["r"]))


class KnownMachines:
    """Every machine the group has scored (Redis hash ``{prefix}:scoring:{group}:machines``, key ``type/id``)."""

    def __init__(self, client, prefix: str, group_id: str) -> None:  # client: redis.Redis (or None: memory only)
        self._client = client
        self.key = f"{prefix}:scoring:{group_id}:machines"
        self.forgotten_key = f"{prefix}:scoring:{group_id}:forgotten"
        self.state_key = f"{prefix}:scoring:{group_id}:state"  # scoring.state.StateStore's hash
        self._machines: dict[str, LastAudio] = {}
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._machines)

    def get(self, machine: str) -> LastAudio | None:
        return self._machines.get(machine)

    def observe(self, machine: str, partition: int, end_ns: int, received_ns: int) -> None:
        """A window of ``machine`` was scored; only a window newer than its newest refreshes it."""
        last = self._machines.get(machine)
        if last is not None and end_ns <= last.end_ns:
            return
        self._machines[machine] = LastAudio(partition, end_ns, received_ns)
        self._dirty.add(machine)

    def save_dirty(self) -> bool:
        if not self._dirty:
            return True
        if self._client is None:
            self._dirty.clear()
            return True
        try:
            self._client.hset(self.key, mapping={m: self._machines[m].to_json() for m in self._dirty})
        except Exception as exc:  # redis raises several connection error types; all mean "try again later"
            log.warning("cannot save the last-audio times of %d machine(s) to Redis: %s", len(self._dirty), exc)
            return False
        self._dirty.clear()
        return True

    def refresh(self) -> bool:
        """Merge what the whole group knows (other workers, earlier runs): the newer window wins."""
        if self._client is None:
            return True
        try:
            stored = self._client.hgetall(self.key)
            forgotten = self._client.hgetall(self.forgotten_key)
        except Exception as exc:
            log.warning(
                "cannot read the known machines from Redis (%s); reporting the %d known here", exc, len(self._machines)
            )
            return False
        for raw_key, raw in forgotten.items():
            machine = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            mine = self._machines.get(machine)
            if mine is not None and machine not in self._dirty and mine.received_ns <= int(raw):
                del self._machines[machine]  # forgotten by another worker or `soundwatch machines forget`
        for raw_key, raw in stored.items():
            machine = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            try:
                seen = LastAudio.from_json(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable last-audio record of %s: %s", machine, exc)
                continue
            mine = self._machines.get(machine)
            if mine is None or seen.end_ns > mine.end_ns:
                self._machines[machine] = seen
                self._dirty.discard(machine)
        return True

    def machines(self) -> dict[str, LastAudio]:
        """Every known machine, sorted."""
        return dict(sorted(self._machines.items()))

    def forget(self, machine: str, now_ns: int) -> bool:
        """Drop ``machine`` from the group's known set and its scoring state; True if it was known.

        Raises the Redis client's error when Redis cannot be reached (the caller says what to do).
        """
        known = machine in self._machines
        self._machines.pop(machine, None)
        self._dirty.discard(machine)
        if self._client is None:
            return known
        pipe = self._client.pipeline()
        pipe.hdel(self.key, machine)
        pipe.hdel(self.state_key, machine)
        pipe.hset(self.forgotten_key, machine, str(now_ns))
        removed = pipe.execute()[0]
        return known or bool(removed)

    def prune(self, now_ns: int, forget_after_s: float) -> list[str]:
        """Forget the machines without audio for ``forget_after_s`` (decommissioned); return them."""
        limit_ns = int(forget_after_s * NS)
        silent = sorted(m for m, seen in self._machines.items() if now_ns - seen.received_ns > limit_ns)
        for machine in silent:
            try:
                self.forget(machine, now_ns)
            except Exception as exc:  # Redis away: forgotten here, tried again by the next worker that prunes
                log.warning("cannot forget %s in Redis: %s", machine, exc)
            log.info(
                "machine %s sent no audio for more than %.0f s (scoring.forget_after_s): forgotten",
                machine,
                forget_after_s,
            )
        if self._client is not None:
            try:
                tombstones = self._client.hgetall(self.forgotten_key)
                old = [k for k, v in tombstones.items() if now_ns - int(v) > limit_ns]
                if old:
                    self._client.hdel(self.forgotten_key, *old)
            except Exception as exc:
                log.debug("cannot clean the forgotten-machine tombstones: %s", exc)
        return silent

    def on_partitions(self, partitions: Collection[int]) -> dict[str, LastAudio]:
        """The known machines whose newest window came from one of ``partitions``."""
        return {m: seen for m, seen in sorted(self._machines.items()) if seen.partition in partitions}


def status_points(
    machines: dict[str, LastAudio], *, now_ns: int, stale_after_s: float, alerting: Callable[[str], bool]
) -> list[Point]:
    """One ``machine_status`` point per machine at ``now_ns``: seconds since audio, stale, alerting."""
    points = []
    for machine, seen in machines.items():
        machine_type, _, machine_id = machine.partition("/")
        since_s = max(0.0, (now_ns - seen.received_ns) / NS)
        points.append(
            machine_status_point(
                machine_type=machine_type,
                machine_id=machine_id,
                seconds_since_audio=since_s,
                alerting=alerting(machine),
                stale=since_s > stale_after_s,
                time_ns=now_ns,
            )
        )
    return points
