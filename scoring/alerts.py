"""Alert state machine with hysteresis. Pure: no clocks, no I/O.

A machine is ``NORMAL`` until ``alert_after`` *consecutive* median-filtered scores
are anomalous (over the threshold); it is then ``ALERTING`` until
``resolve_after`` consecutive scores are normal. Requiring runs in both
directions is the hysteresis: a single spike (already damped by the median
filter) cannot raise an alert, and one quiet window inside a fault cannot
resolve it. Only *changes* produce an :class:`~soundwatch.contracts.AlertEvent`,
so the ``alerts`` topic carries state transitions, not a copy of every score.

>>> m = AlertMachine(alert_after=2, resolve_after=2)
>>> [m.update(x) for x in (True, False, True, True, False, True, False, False)]
[None, None, None, 'raise', None, None, None, 'resolve']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from soundwatch.contracts import AlertEvent, AlertState

Transition = Literal["raise", "resolve"]


class AlertMachine:
    """One machine's alert state. ``update(anomalous)`` returns ``"raise"``/``"resolve"`` on a change."""

    def __init__(
        self, alert_after: int, resolve_after: int, state: AlertState = AlertState.NORMAL, run: int = 0
    ) -> None:
        if alert_after < 1 or resolve_after < 1:
            raise ValueError(f"alert_after ({alert_after}) and resolve_after ({resolve_after}) must be >= 1")
        self.alert_after = alert_after
        self.resolve_after = resolve_after
        self.state = AlertState(state)
        # length of the current run of windows that argue for leaving the current state
        self.run = max(0, int(run))

    def update(self, anomalous: bool) -> Transition | None:
        if self.state is AlertState.NORMAL:
            self.run = self.run + 1 if anomalous else 0
            if self.run >= self.alert_after:
                self.state, self.run = AlertState.ALERTING, 0
                return "raise"
        else:
            self.run = self.run + 1 if not anomalous else 0
            if self.run >= self.resolve_after:
                self.state, self.run = AlertState.NORMAL, 0
                return "resolve"
        return None

    def snapshot(self) -> dict[str, object]:
        """Plain data for persistence across restarts (see :mod:`scoring.state`)."""
        return {"state": self.state.value, "run": self.run}

    @classmethod
    def restore(cls, data: dict[str, object], alert_after: int, resolve_after: int) -> AlertMachine:
        return cls(alert_after, resolve_after, AlertState(str(data.get("state", "normal"))), int(data.get("run", 0)))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Observation:
    """What the alert logic needs to know about one scored window."""

    machine_type: str
    machine_id: str
    model_version: str
    timestamp_ns: int
    score_median: float
    threshold: float

    @property
    def anomalous(self) -> bool:
        """Strictly over the threshold: a threshold is the highest score still considered normal."""
        return self.score_median > self.threshold


def observe(machine: AlertMachine, obs: Observation) -> AlertEvent | None:
    """Feed one window to ``machine``; return the :class:`AlertEvent` when its state changed."""
    previous = machine.state
    change = machine.update(obs.anomalous)
    if change is None:
        return None
    runs = machine.alert_after if change == "raise" else machine.resolve_after
    word = "over" if change == "raise" else "at or under"
    message = (
        f"{obs.machine_type}/{obs.machine_id}: median score {obs.score_median:.3f} {word} threshold "
        f"{obs.threshold:.3f} for {runs} consecutive windows"
    )
    return AlertEvent(
        machine_type=obs.machine_type,
        machine_id=obs.machine_id,
        model_version=obs.model_version,
        timestamp_ns=obs.timestamp_ns,
        previous=previous,
        current=machine.state,
        score_median=obs.score_median,
        threshold=obs.threshold,
        message=message,
        extra={"consecutive": str(runs)},
    )
