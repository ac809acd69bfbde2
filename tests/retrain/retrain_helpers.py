"""Helpers for the retraining tests: synthetic machine audio into the archive, window-level measures."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.alerts import AlertMachine
from soundwatch.contracts import AudioChunk
from soundwatch.model.filters import causal_median
from soundwatch.params import FeatureParams
from soundwatch.simulator import Fault, MachineSound, signature_for
from training.service.archive import ArchiveWriter


@dataclass(frozen=True)
class BaseModel:
    data_root: Path  # DCASE layout: fan/{train,test}, ids id_00 and id_02
    registry_root: Path  # holds fan/v0001


def copy_registry(base: BaseModel, dest: Path) -> Path:
    """A private copy of a base registry (tests add versions to it)."""
    shutil.copytree(base.registry_root, dest)
    return dest


NS = 10**9
SR = 16_000
MACHINES = ("id_00", "id_02")


def pcm16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def archive_machine_audio(
    writer: ArchiveWriter,
    machine_id: str,
    t0_ns: int,
    seconds: int,
    *,
    speed: float = 1.0,
    faults: tuple[Fault, ...] = (),
    severity: float = 1.0,
    instance: int = 500,
    seq0: int = 0,
) -> None:
    """``seconds`` of 1 s chunks of a simulated fan into the archive; faults cycle every 10 s when given."""
    sound = MachineSound(signature_for("fan", machine_id), SR, instance=instance)
    sound.set_speed(speed)
    for i in range(seconds):
        if faults and i % 10 == 0:
            sound.set_fault(faults[(i // 10) % len(faults)], severity)
        writer.add(AudioChunk("fan", machine_id, "gw-test", SR, seq0 + i, t0_ns + i * NS, pcm16(sound.render(SR))))


class StreamingMachine:
    """One simulated fan streaming continuously: what is archived and what is scored later are
    consecutive stretches of the same generator (one physical machine), like the simulator gateway."""

    def __init__(self, machine_id: str, *, instance: int = 100) -> None:
        self.machine_id = machine_id
        self.sound = MachineSound(signature_for("fan", machine_id), SR, instance=instance)
        self.seq = 0

    def archive(self, writer: ArchiveWriter, t0_ns: int, seconds: int) -> None:
        for i in range(seconds):
            chunk = pcm16(self.sound.render(SR))
            writer.add(AudioChunk("fan", self.machine_id, "gw-test", SR, self.seq, t0_ns + i * NS, chunk))
            self.seq += 1

    def windows(self, seconds: float) -> np.ndarray:
        from soundwatch.audio.windows import offline_windows

        audio = pcm16(self.sound.render(int(seconds * SR))).astype(np.float32) / 32768.0  # what the gateway sends
        return offline_windows(audio, params=FeatureParams())[0]


def render_windows(
    machine_id: str,
    seconds: float,
    *,
    speed: float = 1.0,
    fault: Fault | None = None,
    severity: float = 1.0,
    instance: int = 900,
) -> np.ndarray:
    from soundwatch.audio.windows import offline_windows

    sound = MachineSound(signature_for("fan", machine_id), SR, instance=instance)
    sound.set_speed(speed)
    sound.set_fault(fault, severity)
    audio = pcm16(sound.render(int(seconds * SR))).astype(np.float32) / 32768.0  # what the gateway sends
    return offline_windows(audio, params=FeatureParams())[0]


def false_alarm_rate(model, machine_id: str, windows: np.ndarray) -> float:  # noqa: ANN001
    """Fraction of median-filtered window scores over the machine's threshold (normal audio)."""
    filtered = causal_median(model.score_windows(windows, [machine_id] * len(windows)), model.median_k)
    return float((filtered > model.threshold_for(machine_id)).mean())


def raises_alert(model, machine_id: str, windows: np.ndarray, alert_after: int = 3) -> bool:  # noqa: ANN001
    """Would the stream's alert state machine raise an alert on these windows?"""
    filtered = causal_median(model.score_windows(windows, [machine_id] * len(windows)), model.median_k)
    machine = AlertMachine(alert_after=alert_after, resolve_after=5)
    return any(machine.update(bool(v > model.threshold_for(machine_id))) == "raise" for v in filtered)
