"""Replay WAV/FLAC files as if microphones were hearing the machines now.

Machine type and id come from DCASE names unless given explicitly:

* 2020: ``<type>/<split>/{normal,anomaly}_id_XX_NNNNNNNN.wav`` -> ``<type>``, ``id_XX``
* 2021+: ``<type>/<split>/section_XX_..._{normal,anomaly}_....wav`` -> ``<type>``, ``section_XX``

Each machine's files play back to back as one continuous stream (sorted by path), so the
concatenation of a machine's published chunks equals the concatenation of its files as
:func:`soundwatch.audio.audio_io.read_audio` reads them (resampled to the gateway rate, with a
warning, when a file has another rate). Machines play side by side: every tick yields one
chunk per machine. The last chunk of a stream may be shorter (no audio is dropped or padded);
with ``loop`` each stream starts over instead.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.producer import Block
from ingest.sources import AudioClock, Pacer
from soundwatch.audio.audio_io import audio_info, read_audio
from soundwatch.errors import BadInput

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
_ID_RE = re.compile(r"(?:^|_)(id_\d+)(?=_|$)")
_SECTION_RE = re.compile(r"(?:^|_)(section_\d+)(?=_|$)")
_SPLIT_DIRS = {
    "train",
    "test",
    "source_test",
    "target_test",
    "supplemental",
    "eval",
    "dev",
    "source",
    "target",
}


@dataclass(frozen=True)
class MachineFiles:
    machine_type: str
    machine_id: str
    files: tuple[Path, ...]

    @property
    def key(self) -> str:
        return f"{self.machine_type}/{self.machine_id}"


def machine_of(path: Path, machine_type: str | None = None, machine_id: str | None = None) -> tuple[str, str]:
    """(type, id) of a file from its DCASE name; explicit values win. BadInput says which flag to pass."""
    mid = machine_id
    if mid is None:
        m = _ID_RE.search(path.stem) or _SECTION_RE.search(path.stem)
        if m is None:
            raise BadInput(
                f"cannot tell the machine id from the file name {path.name} (expected DCASE names "
                "like normal_id_00_00000000.wav or section_00_...)",
                "pass --machine-id (and --machine-type)",
            )
        mid = m.group(1)
    mtype = machine_type
    if mtype is None:
        parent = path.resolve().parent
        while parent.name.lower() in _SPLIT_DIRS and parent.parent != parent:
            parent = parent.parent
        if not parent.name:
            raise BadInput(f"cannot tell the machine type of {path} from its folders", "pass --machine-type")
        mtype = parent.name
    return mtype, mid


def discover(path: Path, machine_type: str | None = None, machine_id: str | None = None) -> list[MachineFiles]:
    """Group the audio files under ``path`` (a file or a folder, searched recursively) by machine."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path} does not exist", "pass a WAV/FLAC file or a folder holding them")
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise BadInput(f"no {'/'.join(AUDIO_SUFFIXES)} files under {path}", "point --path at a folder of recordings")
    groups: dict[tuple[str, str], list[Path]] = {}
    for f in files:
        groups.setdefault(machine_of(f, machine_type, machine_id), []).append(f)
    return [MachineFiles(t, i, tuple(fs)) for (t, i), fs in sorted(groups.items())]


def _load(path: Path, sample_rate: int, warned: set[int]) -> np.ndarray | None:
    """The file as float32 mono at ``sample_rate``, or None (logged) when it cannot be read."""
    try:
        _sr, _n, channels = audio_info(path)
        if channels != 1 and channels not in warned:
            warned.add(channels)
            log.warning(
                "%s has %d channels: replaying channel 0, as training reads it "
                "(further files like it are not reported)",
                path,
                channels,
            )
        audio = read_audio(path, sample_rate)  # warns when it resamples
    except Exception as exc:  # a bad file must not stop a long replay; say which and go on
        log.error("skipping %s: cannot read it (%s: %s)", path, type(exc).__name__, exc)
        return None
    if audio.size == 0:
        log.warning("skipping %s: it holds no samples", path)
        return None
    return np.asarray(audio, dtype=np.float32)


class _MachineStream:
    """One machine's files as a stream of fixed-size chunks (the last may be short unless looping)."""

    def __init__(self, machine: MachineFiles, sample_rate: int, chunk: int, loop: bool, warned: set[int]) -> None:
        self.machine = machine
        self.sample_rate = sample_rate
        self.chunk = chunk
        self.loop = loop
        self._warned = warned
        self._next_file = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._exhausted = False
        self._any_audio = False

    def _refill(self) -> None:
        while self._buffered < self.chunk and not self._exhausted:
            if self._next_file >= len(self.machine.files):
                if not self.loop or not self._any_audio:
                    self._exhausted = True
                    return
                self._next_file = 0
            audio = _load(self.machine.files[self._next_file], self.sample_rate, self._warned)
            self._next_file += 1
            if audio is not None:
                self._any_audio = True
                self._buffer.append(audio)
                self._buffered += audio.size

    def next_chunk(self) -> np.ndarray | None:
        self._refill()
        if self._buffered == 0:
            return None
        data = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        out, rest = data[: self.chunk], data[self.chunk :]
        self._buffer = [rest] if rest.size else []
        self._buffered = int(rest.size)
        return out


class FileReplaySource:
    """Replays files per machine, ``speed`` x real time (0 = as fast as possible), optionally looping."""

    def __init__(
        self,
        path: Path,
        sample_rate: int,
        chunk_samples: int,
        *,
        loop: bool = False,
        speed: float | None = 1.0,
        machine_type: str | None = None,
        machine_id: str | None = None,
    ) -> None:
        if chunk_samples < 1:
            raise ValueError(f"chunk_samples={chunk_samples} must be >= 1")
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.chunk_samples = chunk_samples
        self.loop = loop
        self.speed = speed
        self.machines = discover(self.path, machine_type, machine_id)

    def describe(self) -> str:
        n_files = sum(len(m.files) for m in self.machines)
        pace = "as fast as possible" if not self.speed else f"{self.speed:g}x real time"
        return (
            f"file replay of {n_files} files / {len(self.machines)} machines from {self.path}, {pace}"
            f"{', looping' if self.loop else ''}"
        )

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        warned: set[int] = set()
        streams = [_MachineStream(m, self.sample_rate, self.chunk_samples, self.loop, warned) for m in self.machines]
        clocks = {s.machine.key: AudioClock(self.sample_rate) for s in streams}
        anchor = min(c.anchor_ns for c in clocks.values())
        for c in clocks.values():
            c.anchor_ns = anchor  # all machines share one timeline
        pacer = Pacer(self.speed)
        tick = 0
        while streams and not stop.is_set():
            tick += 1
            if not pacer.wait_until(tick * self.chunk_samples / self.sample_rate, stop):
                return
            alive = []
            for stream in streams:
                samples = stream.next_chunk()
                if samples is None:
                    continue
                alive.append(stream)
                m = stream.machine
                yield Block(m.machine_type, m.machine_id, samples, clocks[m.key].take(samples.size))
            streams = alive
