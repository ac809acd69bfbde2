"""The synthetic plant: several machines, each with its own signature, faults on a schedule or on command.

Built on :class:`soundwatch.simulator.MachineSound` (phase-continuous streaming), so a machine's
chunks join seamlessly and the same machine sounds the same in every process.

Fault commands share one syntax, ``<type>/<id>:<fault>[=<severity>][@<seconds>[s]]``:

* ``fan/id_01:bearing_ticks@60s``   bearing ticks from 60 s of simulated time on
* ``pump/id_00:imbalance=1.5@30``   imbalance, severity 1.5, from 30 s on
* ``fan/id_01:normal@120s``         back to normal at 120 s
* ``fan/id_01:rub``                 (no ``@``) at once

``schedule`` takes them up front (``--fault`` on the command line, repeatable). On command:
``control_file`` names a text file the simulator follows like ``tail -f``; every line appended
to it is applied at the next chunk (``@`` times count from the start of the run), e.g.
``echo "fan/id_01:bearing_ticks" >> var/sim-commands``. Bad lines are logged and ignored.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.producer import Block
from ingest.sources import AudioClock, Pacer
from soundwatch.errors import BadInput
from soundwatch.simulator import MACHINE_FAMILIES, Fault, MachineSound, signature_for

log = logging.getLogger(__name__)

_COMMAND_RE = re.compile(
    r"^\s*(?P<type>[A-Za-z0-9][\w.\-]*)/(?P<id>[A-Za-z0-9][\w.\-]*)\s*:\s*(?P<fault>[A-Za-z_]+)"
    r"(?:\s*=\s*(?P<severity>[0-9.]+))?(?:\s*@\s*(?P<at>[0-9.]+)\s*s?)?\s*$"
)
NORMAL_WORDS = {"normal", "none", "clear", "ok"}


@dataclass(frozen=True)
class FaultCommand:
    """Set ``fault`` (None = normal) with ``severity`` on one machine at ``at_s`` s of simulated time."""

    machine_type: str
    machine_id: str
    fault: str | None  # a soundwatch.simulator.Fault value
    severity: float = 1.0
    at_s: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.machine_type}/{self.machine_id}"


def parse_fault_command(text: str) -> FaultCommand:
    """Parse ``type/id:fault[=severity][@seconds]``; BadInput names the valid faults."""
    m = _COMMAND_RE.match(text)
    if m is None:
        raise BadInput(
            f"cannot parse the fault command {text!r}",
            "write <type>/<id>:<fault>[=<severity>][@<seconds>s], e.g. fan/id_01:bearing_ticks@60s",
        )
    name = m.group("fault").lower()
    fault: str | None = None
    if name not in NORMAL_WORDS:
        try:
            fault = Fault.parse(name).value
        except ValueError as exc:
            raise BadInput(str(exc), f"or 'normal' to clear a fault (in {text!r})") from exc
    severity = float(m.group("severity")) if m.group("severity") else 1.0
    at_s = float(m.group("at")) if m.group("at") else 0.0
    return FaultCommand(m.group("type"), m.group("id"), fault, severity, at_s)


def parse_machines(spec: str) -> list[tuple[str, str]]:
    """``"fan/id_00,pump/id_02"`` -> [(type, id), ...]; or ``"6"`` -> 6 machines over the known types."""
    spec = spec.strip()
    if spec.isdigit():
        n = int(spec)
        if n < 1:
            raise BadInput("--machines must name at least one machine", "e.g. --machines 4 or fan/id_00,pump/id_00")
        types = list(MACHINE_FAMILIES)
        return [(types[i % len(types)], f"id_{2 * (i // len(types)):02d}") for i in range(n)]
    out = []
    for part in spec.split(","):
        t, sep, i = part.strip().partition("/")
        if not sep or not t or not i:
            raise BadInput(
                f"cannot read machine {part!r} in --machines {spec!r}",
                "write type/id pairs separated by commas, e.g. fan/id_00,pump/id_02, or a count",
            )
        out.append((t, i))
    if len(set(out)) != len(out):
        raise BadInput(f"--machines {spec!r} names a machine twice", "list each machine once")
    return out


class _ControlFile:
    """Follows a command file like ``tail -f``: returns complete lines appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0  # only commands written from now on
        self._partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                size = fh.seek(0, 2)
                if size < self._offset:  # truncated or replaced: start over
                    self._offset = 0
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [ln.decode("utf-8", "replace").strip() for ln in lines if ln.strip()]


class SimulatorSource:
    """Renders ``machines`` chunk by chunk at ``speed`` x real time, applying fault commands when due."""

    def __init__(
        self,
        machines: Sequence[tuple[str, str]],
        sample_rate: int,
        chunk_samples: int,
        *,
        schedule: Sequence[FaultCommand] = (),
        control_file: Path | None = None,
        speed: float | None = 1.0,
        seed: int = 0,
        loop_s: float | None = None,
    ) -> None:
        """``loop_s``: render each machine's first ``loop_s`` seconds once and repeat them (capacity
        benchmarks: synthesis costs a gateway more than sending, and a microphone gateway does not synthesise)."""
        import scipy.signal  # noqa: F401 - MachineSound needs it; a slow first import would stall the first chunk

        if not machines:
            raise BadInput("the simulator needs at least one machine", "pass --machines")
        self.sample_rate = sample_rate
        self.chunk_samples = chunk_samples
        self.speed = speed
        self.machines = list(machines)
        self.sounds = {
            f"{t}/{i}": MachineSound(signature_for(t, i, seed), sample_rate, seed=seed) for t, i in self.machines
        }
        for cmd in schedule:
            self._check_known(cmd)
        if loop_s is not None and (schedule or control_file):
            raise BadInput(
                "a looped simulator repeats its first seconds, so fault commands would never apply",
                "drop --fault/--control-file, or --loop-seconds",
            )
        if loop_s is not None and loop_s <= 0:
            raise BadInput(f"--loop-seconds must be positive, got {loop_s:g}", "e.g. --loop-seconds 4")
        self._loop_chunks = max(1, round(loop_s * sample_rate / chunk_samples)) if loop_s else None
        self._pending = sorted(schedule, key=lambda c: c.at_s)
        self._scheduled = len(self._pending)
        self._control = _ControlFile(Path(control_file)) if control_file else None
        self.applied: list[FaultCommand] = []

    def describe(self) -> str:
        pace = "as fast as possible" if not self.speed else f"{self.speed:g}x real time"
        looped = ""
        if self._loop_chunks is not None:
            looped = f", each machine's first {self._loop_chunks * self.chunk_samples / self.sample_rate:g} s repeated"
        return (
            f"simulator with {len(self.machines)} machines, {self._scheduled} scheduled fault commands, "
            f"{pace}{looped}{f', commands from {self._control.path}' if self._control else ''}"
        )

    def _check_known(self, cmd: FaultCommand) -> None:
        if cmd.key not in self.sounds:
            raise BadInput(
                f"fault command for {cmd.key}, which the simulator does not run",
                f"simulated machines: {', '.join(self.sounds)}",
            )

    def _apply_due(self, now_s: float) -> None:
        if self._control is not None:
            for line in self._control.new_lines():
                try:
                    cmd = parse_fault_command(line)
                    self._check_known(cmd)
                except BadInput as exc:
                    log.error("ignoring simulator command %r: %s", line, exc)
                    continue
                self._pending.append(cmd)
                self._pending.sort(key=lambda c: c.at_s)
        while self._pending and self._pending[0].at_s <= now_s:
            cmd = self._pending.pop(0)
            self.sounds[cmd.key].set_fault(Fault(cmd.fault) if cmd.fault else None, cmd.severity)
            self.applied.append(cmd)
            log.info(
                "simulator: %s is now %s%s at %.1f s",
                cmd.key,
                cmd.fault or "normal",
                f" (severity {cmd.severity:g})" if cmd.fault else "",
                now_s,
            )

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        n = self.chunk_samples
        loop: list[list[np.ndarray]] = []  # looped: every machine's chunks of the first loop_s seconds
        for _ in range(self._loop_chunks or 0):  # rendered before the clock starts, so paced as real time
            if stop.is_set():
                return
            loop.append([sound.render(n) for sound in self.sounds.values()])
        clock = AudioClock(self.sample_rate)
        pacer = Pacer(self.speed)
        for k in itertools.count():
            if stop.is_set():
                return
            start_ns = clock.take(n)
            self._apply_due(clock.samples / self.sample_rate - n / self.sample_rate)
            if not pacer.wait_until(clock.samples / self.sample_rate, stop):
                return
            chunks = loop[k % len(loop)] if loop else [sound.render(n) for sound in self.sounds.values()]
            for (t, i), samples in zip(self.machines, chunks, strict=True):
                yield Block(t, i, samples, start_ns)
