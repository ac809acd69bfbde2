"""Per-machine scoring state (median filter + alert machine) and its persistence across restarts.

Why the state needs care: the worker commits Kafka offsets only after a batch's
points are in InfluxDB, so after a crash it *replays* the uncommitted windows.
For a replayed point to overwrite its earlier copy with the same values, the
median of window ``i`` must again be the median of windows ``i-k+1 .. i`` — not
of whatever the filter saw last.

How it is kept consistent:

* each machine keeps its last ``k - 1 + replay_margin`` raw scores keyed by the
  window's ``end_ns``. A window whose ``end_ns`` is not newer than the last one
  seen is a replay: the scores from it onwards are dropped and the
  :class:`~soundwatch.model.filters.StreamingMedian` is refilled from the ones before it,
  so the replayed median equals the original one;
* the alert machine advances only on windows newer than the last one it saw, so a
  replay cannot count the same windows twice toward raising or resolving;
* the state of every machine touched by a batch is saved to Redis (one hash per
  consumer group) *before* that batch's offsets are committed, and loaded when
  the worker first meets a machine (after a restart or a rebalance).

Limits (documented, not hidden): a replay of more than ``replay_margin`` windows
of one machine re-warms the filter from the retained scores; if Redis is down the
worker starts machines fresh (the median warms up over ``k`` windows, the alert
machine starts NORMAL) and says so in the log; scores from different model
versions are not comparable, so the filter restarts when the version changes
(the alert state is kept).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from scoring.alerts import AlertMachine, Observation, observe
from soundwatch.contracts import AlertEvent, AlertState
from soundwatch.model.filters import StreamingMedian

log = logging.getLogger(__name__)

DEFAULT_REPLAY_MARGIN = 32


@dataclass
class MachineState:
    """The filter and alert state of one machine, for one model version."""

    k: int
    model_version: str
    alert: AlertMachine
    replay_margin: int = DEFAULT_REPLAY_MARGIN
    last_alert_end_ns: int = -1  # newest window the alert machine has seen
    history: deque[tuple[int, float]] = field(default_factory=deque)
    median: StreamingMedian = field(init=False)

    def __post_init__(self) -> None:
        self.median = StreamingMedian(self.k)
        self.history = deque(self.history, maxlen=self.k - 1 + self.replay_margin + 1)
        self._refill()

    def _refill(self) -> None:
        self.median.reset()
        for _, score in list(self.history)[-(self.k - 1) :] if self.k > 1 else []:
            self.median.update(score)

    def filter(self, end_ns: int, score: float) -> float:
        """The median-filtered score of the window ending at ``end_ns`` (replay-aware, see module doc)."""
        if self.history and end_ns <= self.history[-1][0]:
            while self.history and self.history[-1][0] >= end_ns:
                self.history.pop()
            self._refill()
        self.history.append((int(end_ns), float(score)))
        return self.median.update(score)

    def alert_step(self, obs: Observation) -> AlertEvent | None:
        """Advance the alert machine with a window newer than any it has seen; replays are ignored."""
        if obs.timestamp_ns <= self.last_alert_end_ns:
            return None
        self.last_alert_end_ns = obs.timestamp_ns
        return observe(self.alert, obs)

    def restart_filter(self, model_version: str) -> None:
        """A new model version: its scores are on another scale, so the filter starts over."""
        self.model_version = model_version
        self.history.clear()
        self.median.reset()

    # -------------------------------------------------------------- persistence
    def to_json(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "k": self.k,
                "model_version": self.model_version,
                "alert": self.alert.snapshot(),
                "last_alert_end_ns": self.last_alert_end_ns,
                "history": [[t, s] for t, s in self.history],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(
        cls, text: str | bytes, *, alert_after: int, resolve_after: int, replay_margin: int = DEFAULT_REPLAY_MARGIN
    ) -> MachineState:
        data = json.loads(text)
        if data.get("v") != 1:
            raise ValueError(f"unknown machine state format {data.get('v')!r}")
        return cls(
            k=int(data["k"]),
            model_version=str(data["model_version"]),
            alert=AlertMachine.restore(data.get("alert", {}), alert_after, resolve_after),
            replay_margin=replay_margin,
            last_alert_end_ns=int(data.get("last_alert_end_ns", -1)),
            history=deque((int(t), float(s)) for t, s in data.get("history", [])),
        )


class StateStore:
    """Redis hash ``{prefix}:scoring:{group}:state`` mapping machine key -> :class:`MachineState` JSON.

    Every call is best effort: Redis being down must not stop scoring, so failures
    are logged and reported as "nothing loaded"/"not saved".
    """

    def __init__(self, client, prefix: str, group_id: str) -> None:  # client: redis.Redis
        self._client = client
        self.key = f"{prefix}:scoring:{group_id}:state"

    def load(self, machine_keys: Iterable[str]) -> dict[str, bytes]:
        keys = list(machine_keys)
        if not keys:
            return {}
        try:
            values = self._client.hmget(self.key, keys)
        except Exception as exc:  # redis raises several connection error types; all mean "no saved state"
            log.warning("cannot load scoring state from Redis (%s); %d machine(s) start fresh", exc, len(keys))
            return {}
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def save(self, states: dict[str, str]) -> bool:
        if not states:
            return True
        try:
            self._client.hset(self.key, mapping=states)
        except Exception as exc:
            log.warning("cannot save scoring state of %d machine(s) to Redis: %s", len(states), exc)
            return False
        return True


class StateTable:
    """All machines' states in this worker: created, loaded from the store, marked dirty, saved."""

    def __init__(
        self,
        store: StateStore | None,
        *,
        alert_after: int,
        resolve_after: int,
        replay_margin: int = DEFAULT_REPLAY_MARGIN,
    ) -> None:
        self._store = store
        self._alert_after = alert_after
        self._resolve_after = resolve_after
        self._replay_margin = replay_margin
        self._states: dict[str, MachineState] = {}
        self._dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._states)

    def prefetch(self, machine_keys: Iterable[str]) -> None:
        """Load saved states of machines not in memory yet (one Redis round trip per batch)."""
        missing = [k for k in dict.fromkeys(machine_keys) if k not in self._states]
        if not missing or self._store is None:
            return
        for key, raw in self._store.load(missing).items():
            try:
                self._states[key] = MachineState.from_json(
                    raw,
                    alert_after=self._alert_after,
                    resolve_after=self._resolve_after,
                    replay_margin=self._replay_margin,
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable saved state of %s: %s", key, exc)

    def get(self, machine_key: str, model_version: str, k: int) -> MachineState:
        """The machine's state for ``model_version`` with filter length ``k`` (created if new)."""
        state = self._states.get(machine_key)
        if state is None:
            state = MachineState(
                k, model_version, AlertMachine(self._alert_after, self._resolve_after), self._replay_margin
            )
            self._states[machine_key] = state
        elif state.k != k:
            state = MachineState(k, model_version, state.alert, self._replay_margin, state.last_alert_end_ns)
            self._states[machine_key] = state
        elif state.model_version != model_version:
            state.restart_filter(model_version)
        self._dirty.add(machine_key)
        return state

    def alerting(self, machine_key: str) -> bool:
        """Whether the machine's alert state is ALERTING (False when its state is not loaded: see :meth:`prefetch`)."""
        state = self._states.get(machine_key)
        return state is not None and state.alert.state is AlertState.ALERTING

    def save_dirty(self) -> bool:
        if self._store is None or not self._dirty:
            self._dirty.clear()
            return True
        ok = self._store.save({k: self._states[k].to_json() for k in self._dirty if k in self._states})
        if ok:
            self._dirty.clear()
        return ok

    def clear(self) -> None:
        """Forget in-memory states (after a rebalance another worker may own these machines)."""
        self._states.clear()
        self._dirty.clear()
