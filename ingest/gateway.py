"""The gateway loop: source blocks -> chunks (durable sequence numbers) -> spool -> Kafka.

:func:`run_gateway` is what ``soundwatch gateway`` runs and what the tests drive directly.
It keeps per-gateway state under ``<state_dir>/<gateway_id>`` (sequence numbers) and
``<spool_dir>/<gateway_id>`` (the spool), so several gateways can share a host.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from ingest.health import GatewayHealth
from ingest.producer import ChunkBuilder, Shipper, ShipperStats, check_compression, record_for
from ingest.sequences import SequenceStore
from ingest.sources import Source
from ingest.spool import Spool
from soundwatch.contracts import ContractError
from soundwatch.errors import BadInput
from soundwatch.settings import Settings


@dataclass(frozen=True)
class GatewayReport:
    """What a gateway run did; ``undelivered_chunks`` stay in the spool for the next run."""

    gateway_id: str
    topic: str
    source: str
    elapsed_s: float
    chunks_in: int
    bytes_in: int
    chunks_sent: int
    bytes_sent: int
    undelivered_chunks: int
    dropped_chunks: int
    dropped_bytes: int
    dropped_by_machine: dict[str, int]
    outages: int
    last_error: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gateway_dirs(settings: Settings, gateway_id: str) -> tuple[Path, Path]:
    """(state dir, spool dir) of one gateway."""
    return settings.ingest.state_dir / gateway_id, settings.ingest.spool_dir / gateway_id


class StatusLine:
    """Live status on stderr: one line rewritten in place on a terminal, else a line every ``every_s``."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 10.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._last_plain = 0.0
        self._width = 0

    def show(self, text: str, force: bool = False) -> None:
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
            self.stream.flush()
        elif force or time.monotonic() - self._last_plain >= self.every_s:
            self._last_plain = time.monotonic()
            self.stream.write(text + "\n")
            self.stream.flush()

    def done(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def format_status(gateway_id: str, rate_in: float, bytes_in_s: float, rate_sent: float, st: ShipperStats) -> str:
    sp = st.spool
    if st.online:
        link = "online"
    elif not st.connected_once:
        link = f"connecting {st.outage_s:.0f}s"
    else:
        link = f"OFFLINE {st.outage_s:.0f}s, spooling"
    parts = [
        f"{gateway_id}: in {rate_in:.1f} ch/s {bytes_in_s / 1e6:.2f} MB/s",
        f"sent {rate_sent:.1f} ch/s",
        f"spool {sp.pending_chunks} ch {sp.pending_bytes / 1e6:.1f} MB oldest {sp.oldest_age_s:.1f}s",
        link,
    ]
    if sp.dropped_chunks:
        parts.append(f"SPOOL FULL: DROPPED {sp.dropped_chunks} ch {sp.dropped_bytes / 1e6:.1f} MB")
    if st.rejected_chunks:
        parts.append(f"REJECTED {st.rejected_chunks} ch")
    if st.last_error:
        parts.append(f"last error ({st.last_error_age_s:.0f}s ago): {st.last_error[:120]}")
    else:
        parts.append("last error: -")
    return " | ".join(parts)


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGINT/SIGTERM set ``stop`` (the gateway then flushes and exits); a second one aborts at once.

    Returns a function that restores the previous handlers. Only possible in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def run_gateway(
    settings: Settings,
    source: Source,
    *,
    topic: str | None = None,
    gateway_id: str | None = None,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    idempotent: bool = True,
    backpressure: bool = False,
    status: StatusLine | None = None,
    health: GatewayHealth | None = None,
    health_every_s: float = 10.0,
    flush_timeout_s: float = 10.0,
) -> GatewayReport:
    """Stream ``source`` to ``topic`` (default audio.raw) until it ends, ``duration_s`` passes or ``stop``.

    ``backpressure``: pause the source while the backlog is large instead of spooling
    without bound (for sources that are not live, e.g. files replayed as fast as possible).
    On exit the producer is flushed for up to ``flush_timeout_s``; what is still undelivered
    stays in the fsync'd spool and goes first on the next run. ``status`` gets a line every
    second; ``health`` (InfluxDB) a point every ``health_every_s`` and one at the end.
    """
    gw = gateway_id or settings.ingest.gateway_id
    topic = topic or settings.kafka.topics.audio_raw
    stop = stop or threading.Event()
    check_compression(settings)
    state_dir, spool_dir = gateway_dirs(settings, gw)
    sequences = SequenceStore(state_dir)
    try:
        spool = Spool(spool_dir, settings.ingest.spool_max_bytes)
    except BaseException:
        sequences.close()
        raise
    shipper = Shipper(settings, topic, spool, idempotent=idempotent).start()
    builder = ChunkBuilder(gw, source.sample_rate, sequences)
    counts = {"chunks": 0, "bytes": 0}
    t0 = time.monotonic()
    timer = threading.Timer(duration_s, stop.set) if duration_s else None
    monitor = threading.Thread(
        target=_monitor, args=(gw, shipper, counts, stop, status, health, health_every_s), daemon=True
    )
    monitor.start()
    blocks = source.blocks(stop)
    try:
        if timer is not None:
            timer.start()
        for block in blocks:
            try:
                chunk = builder.build(block)
            except ContractError as exc:
                raise BadInput(
                    f"the source produced an invalid chunk for {block.machine_type}/{block.machine_id}: {exc}",
                    "fix --machine-type/--machine-id or the file names",
                ) from exc
            key, value = record_for(chunk)
            shipper.submit(key, value)
            counts["chunks"] += 1
            counts["bytes"] += len(value)
            if backpressure:
                shipper.wait_for_room(shipper.window * 4, stop)
            if stop.is_set():
                break
    finally:
        blocks.close()
        if timer is not None:
            timer.cancel()
        elapsed = time.monotonic() - t0
        stop.set()
        try:
            final = shipper.close(flush_timeout_s)
        finally:
            sequences.close()
        monitor.join(timeout=15)
        rate_in, rate_sent = counts["chunks"] / max(elapsed, 1e-9), final.sent_chunks / max(elapsed, 1e-9)
        if status is not None:
            status.show(format_status(gw, rate_in, counts["bytes"] / max(elapsed, 1e-9), rate_sent, final), force=True)
            status.done()
        if health is not None:
            health.report(rate_in, rate_sent, final)  # the run's averages: short runs leave a point too
            health.close()
    sp = final.spool
    return GatewayReport(
        gw,
        topic,
        source.describe(),
        elapsed,
        counts["chunks"],
        counts["bytes"],
        final.sent_chunks,
        final.sent_bytes,
        sp.pending_chunks,
        sp.dropped_chunks,
        sp.dropped_bytes,
        sp.dropped_by_machine,
        final.outages,
        final.last_error,
    )


def _monitor(
    gw: str,
    shipper: Shipper,
    counts: dict[str, int],
    stop: threading.Event,
    status: StatusLine | None,
    health: GatewayHealth | None,
    health_every_s: float,
) -> None:
    """Once a second: rates over the last second to the status line; every ``health_every_s`` to InfluxDB."""
    prev_t, prev_in, prev_bytes, prev_sent = time.monotonic(), 0, 0, 0
    last_health, health_in, health_sent = prev_t, 0, 0
    while not stop.wait(1.0):
        st = shipper.stats()
        now = time.monotonic()
        dt = max(now - prev_t, 1e-9)
        if status is not None:
            rate_in, rate_bytes = (counts["chunks"] - prev_in) / dt, (counts["bytes"] - prev_bytes) / dt
            status.show(format_status(gw, rate_in, rate_bytes, (st.sent_chunks - prev_sent) / dt, st))
        prev_t, prev_in, prev_bytes, prev_sent = now, counts["chunks"], counts["bytes"], st.sent_chunks
        if health is not None and now - last_health >= health_every_s:
            span = now - last_health
            health.report((counts["chunks"] - health_in) / span, (st.sent_chunks - health_sent) / span, st)
            last_health, health_in, health_sent = now, counts["chunks"], st.sent_chunks
