"""Live microphone input through PortAudio (``sounddevice``, the optional extra ``soundwatch[mic]``).

One microphone is one machine. The PortAudio callback only copies samples into a queue; the
gateway thread cuts them into chunks, so a slow broker never stalls the audio device. If the
device cannot run at the gateway's rate, it runs at its default rate and the stream is
resampled (with a warning). Device overflows (samples PortAudio had to throw away) are logged
with their count and the audio clock is re-anchored, so chunk times stay true.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator
from typing import Any

import numpy as np

from ingest.producer import Block
from soundwatch.errors import BadInput, MissingDependency

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'soundwatch[mic]'  (and the PortAudio library: apt-get install libportaudio2)"


def import_sounddevice() -> Any:
    """The sounddevice module, or MissingDependency naming the package or the PortAudio library to install."""
    try:
        import sounddevice  # deferred: an optional dependency
    except ImportError as exc:
        raise MissingDependency(
            "microphone input needs the sounddevice package, which is not installed", INSTALL_HINT
        ) from exc
    except OSError as exc:  # sounddevice raises OSError("PortAudio library not found") at import
        raise MissingDependency(
            f"microphone input needs the PortAudio library: {exc}",
            "apt-get install libportaudio2   (macOS: brew install portaudio)",
        ) from exc
    return sounddevice


def list_input_devices(sd: Any) -> list[str]:
    """One line per capture device: index, name, channels, default rate."""
    lines = []
    for idx, dev in enumerate(sd.query_devices()):
        if dev.get("max_input_channels", 0) > 0:
            lines.append(f"{idx}: {dev['name']} ({dev['max_input_channels']} ch, {dev['default_samplerate']:.0f} Hz)")
    return lines


def resolve_device(sd: Any, device: str | None) -> int | None:
    """A device index from an index or a (part of a) name; BadInput lists the capture devices."""
    if device is None or device == "":
        try:
            sd.query_devices(kind="input")
        except sd.PortAudioError as exc:
            raise BadInput(
                f"there is no default capture device ({exc})",
                "connect a microphone, or pass --device; python -m sounddevice lists devices",
            ) from exc
        return None
    devices = list(sd.query_devices())
    inputs = [(i, d) for i, d in enumerate(devices) if d.get("max_input_channels", 0) > 0]
    if device.isdigit() and any(i == int(device) for i, _ in inputs):
        return int(device)
    matches = [i for i, d in inputs if device.lower() in str(d["name"]).lower()]
    if len(matches) == 1:
        return matches[0]
    listing = "\n    ".join(list_input_devices(sd)) or "(none: is a microphone connected and allowed?)"
    what = "matches several" if matches else "matches no"
    raise BadInput(
        f"--device {device!r} {what} capture device; capture devices:\n    {listing}",
        "pass --device with an index or a unique part of a name from the list",
    )


class MicSource:
    """One microphone as machine ``machine_type/machine_id``."""

    def __init__(
        self,
        machine_type: str,
        machine_id: str,
        sample_rate: int,
        chunk_samples: int,
        device: str | None = None,
        channel: int = 0,
    ) -> None:
        self.sd = import_sounddevice()
        self.machine_type = machine_type
        self.machine_id = machine_id
        self.sample_rate = sample_rate
        self.chunk_samples = chunk_samples
        self.device = resolve_device(self.sd, device)
        self.channel = channel
        self.overflows = 0

    def describe(self) -> str:
        name = "default input" if self.device is None else self.sd.query_devices(self.device)["name"]
        return f"microphone {name!r} as {self.machine_type}/{self.machine_id}"

    def _open(self, q: queue.Queue) -> tuple[Any, int]:
        def callback(indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
            q.put((indata[:, self.channel].copy(), time.time_ns(), bool(status and status.input_overflow)))

        def start(rate: int) -> Any:
            stream = self.sd.InputStream(
                samplerate=rate, device=self.device, channels=self.channel + 1, dtype="float32", callback=callback
            )
            stream.start()
            return stream

        hint = "check --device/--channel; list the devices with: python -m sounddevice"
        try:
            return start(self.sample_rate), self.sample_rate
        except self.sd.PortAudioError as exc:
            native = int(self.sd.query_devices(self.device, "input")["default_samplerate"])
            if native == self.sample_rate:
                raise BadInput(f"cannot open the microphone: {exc}", hint) from exc
        log.warning(
            "the microphone cannot record at %d Hz; recording at %d Hz and resampling", self.sample_rate, native
        )
        try:
            return start(native), native
        except self.sd.PortAudioError as exc:
            raise BadInput(f"cannot open the microphone at {self.sample_rate} or {native} Hz: {exc}", hint) from exc

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        import soxr  # deferred: loads soxr

        q: queue.Queue = queue.Queue()
        stream, rate = self._open(q)
        resampler = (
            soxr.ResampleStream(rate, self.sample_rate, 1, dtype="float32") if rate != self.sample_rate else None
        )
        buf = np.zeros(0, dtype=np.float32)
        anchor_ns: int | None = None
        emitted = 0
        try:
            while not stop.is_set():
                try:
                    data, arrived_ns, overflow = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                if overflow:
                    self.overflows += 1
                    log.warning("microphone overflow #%d: PortAudio dropped samples (CPU too busy?)", self.overflows)
                    anchor_ns = None  # re-anchor: the lost samples would otherwise shift every later time
                if resampler is not None:
                    data = resampler.resample_chunk(data)
                if anchor_ns is None:
                    anchor_ns = arrived_ns - (buf.size + data.size) * 1_000_000_000 // self.sample_rate
                    emitted = 0
                buf = np.concatenate([buf, data.astype(np.float32, copy=False)])
                while buf.size >= self.chunk_samples:
                    chunk, buf = buf[: self.chunk_samples], buf[self.chunk_samples :]
                    start = anchor_ns + emitted * 1_000_000_000 // self.sample_rate
                    emitted += chunk.size
                    yield Block(self.machine_type, self.machine_id, chunk, start)
        finally:
            stream.stop()
            stream.close()
