"""From audio blocks to ``audio.raw`` records: chunk building, and the shipper that never loses a chunk.

:class:`ChunkBuilder` turns a source block into an :class:`~soundwatch.contracts.AudioChunk`
(PCM16, per-machine sequence number and the run's epoch from a durable
:class:`~ingest.sequences.SequenceStore`).

:class:`Shipper` owns the spool (the write-ahead log) and the kafka-python producer. The
gateway loop appends encoded chunks with :meth:`Shipper.submit`; a background thread sends
them in spool order and acknowledges them in the spool when the broker confirms (acks=all).
When a send fails the shipper stops sending, waits for the records still in flight to
resolve, then probes the broker every ~1-5 s by sending the oldest unsent chunk through a
*fresh* producer (a restarted broker does not know the old producer id). Once a probe lands,
the backlog drains in order, then new chunks follow.

Delivery is at-least-once: a record whose acknowledgement was lost in an outage is sent
again; the ``(machine, sequence)`` pair identifies such duplicates downstream. Per-machine
order holds across outages because nothing new is sent until every in-flight record has
resolved and failed ones always go first. (Were a broker to fail one record while accepting
later ones of the same partition — kafka-python's idempotent producer prevents that — the
resent record would arrive late, visibly so by its sequence number.)
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ingest.sequences import SequenceStore
from ingest.spool import Spool, SpoolStats
from soundwatch.contracts import AudioChunk, machine_key
from soundwatch.errors import MissingDependency
from soundwatch.kafka import is_permanent, make_producer
from soundwatch.settings import Settings

log = logging.getLogger(__name__)


class Block(NamedTuple):
    """What a source yields: one machine's next block of mono float32 audio at the gateway's rate.

    ``start_ns`` is the audio time of the first sample (epoch ns): capture time for a microphone,
    a per-machine clock anchored at the start of the replay for files and the simulator.
    """

    machine_type: str
    machine_id: str
    samples: np.ndarray
    start_ns: int


def quantize_pcm16(samples: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] -> int16 as PCM16 writers do (scale by 32768, round, clip).

    PCM16 input read as ``int / 32768`` comes back bit-exact, so replaying a 16-bit file
    publishes exactly its samples.
    """
    return np.clip(np.rint(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


class ChunkBuilder:
    """Builds the wire chunk for a block: PCM16 samples and the machine's next durable sequence number."""

    def __init__(self, gateway_id: str, sample_rate: int, sequences: SequenceStore) -> None:
        self.gateway_id = gateway_id
        self.sample_rate = sample_rate
        self.sequences = sequences

    def build(self, block: Block, origin_ns: int | None = None) -> AudioChunk:
        key = f"{block.machine_type}/{block.machine_id}"
        return AudioChunk(
            machine_type=block.machine_type,
            machine_id=block.machine_id,
            gateway_id=self.gateway_id,
            sample_rate=self.sample_rate,
            sequence=self.sequences.next(key),
            start_ns=int(block.start_ns),
            samples=quantize_pcm16(block.samples),
            origin_ns=time.time_ns() if origin_ns is None else origin_ns,
            epoch=self.sequences.epoch,
        )


def record_for(chunk: AudioChunk) -> tuple[bytes, bytes]:
    """Kafka key and value of a chunk: a machine's chunks share the key, hence a partition and order."""
    return machine_key(chunk.machine_type, chunk.machine_id), chunk.encode()


_CODEC_PACKAGES = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}


def check_compression(settings: Settings) -> None:
    """MissingDependency now if the configured codec's library is missing (instead of spooling forever)."""
    from kafka import codec  # deferred: loads kafka

    name = settings.ingest.compression
    if name in ("none", "gzip"):
        return
    if not getattr(codec, f"has_{name}")():
        raise MissingDependency(
            f"ingest.compression={name} needs the {_CODEC_PACKAGES[name]} package",
            f"pip install {_CODEC_PACKAGES[name]}, or set SOUNDWATCH_INGEST__COMPRESSION to none or gzip",
        )


def producer_options(settings: Settings, idempotent: bool = True) -> dict[str, Any]:
    """kafka-python settings for the gateway: acks=all, ordered retries, short timeouts so outages show fast.

    Without idempotence (a broker that refuses InitProducerId) one request in flight per
    connection keeps retries from reordering a partition.
    """
    compression = settings.ingest.compression
    opts: dict[str, Any] = {
        "acks": "all",
        "enable_idempotence": idempotent,
        "compression_type": None if compression == "none" else compression,
        "linger_ms": 5,
        "batch_size": 512 * 1024,  # several 1 s PCM16 chunks (32 KB) per partition batch
        "request_timeout_ms": 5_000,
        "delivery_timeout_ms": 10_000,  # an unreachable broker fails records after 10 s -> spool
        "max_block_ms": 3_000,
        "reconnect_backoff_max_ms": 1_000,
        "bootstrap_timeout_ms": 2_000,  # a probe of a dead broker must not hold the sender for 30 s
    }
    if not idempotent:
        opts["max_in_flight_requests_per_connection"] = 1
    return opts


@dataclass(frozen=True)
class ShipperStats:
    online: bool
    connected_once: bool  # False until the first chunk lands: "connecting", not an outage
    sent_chunks: int
    sent_bytes: int
    outages: int
    outage_s: float  # length of the current outage, 0 when online
    last_error: str
    last_error_age_s: float  # how long ago it happened (the status line shows it)
    rejected_chunks: int
    spool: SpoolStats


class Shipper:
    """Sends spooled records to ``topic`` in order from a background thread; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        spool: Spool,
        *,
        idempotent: bool = True,
        window: int = 512,
        sync_interval_s: float = 0.2,
        probe_interval_s: float = 1.0,
        max_probe_interval_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.spool = spool
        self.idempotent = idempotent
        self.window = window
        self.sync_interval_s = sync_interval_s
        self.probe_interval_s = probe_interval_s
        self.max_probe_interval_s = max_probe_interval_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._results: queue.SimpleQueue[tuple[int, int, BaseException | None]] = queue.SimpleQueue()
        self._producer: Any = None
        self._online = False  # becomes True when the first send lands
        self._probe_at = 0.0
        self._probe_backoff = probe_interval_s
        self._fresh_producer_needed = True
        self._outage_started: float | None = time.monotonic()
        self._last_ack_at: float | None = None  # when the broker last acknowledged a chunk
        self._unacked_since: float | None = None  # first send after that acknowledgement
        self._outages = 0
        self._had_success = False
        self._warned_unreachable = False
        self._tried_early_connect = False
        self._last_error = ""
        self._last_error_at = 0.0
        self._sent_chunks = 0
        self._sent_bytes = 0
        self._rejected = 0
        self._thread = threading.Thread(target=self._run, name="soundwatch-shipper", daemon=True)

    # ------------------------------------------------------------------ gateway side
    def start(self) -> Shipper:
        self._thread.start()
        return self

    def submit(self, key: bytes, value: bytes) -> None:
        """Append one record to the spool (durable once synced) and wake the sender."""
        with self._lock:
            self.spool.append(key, value)
        self._wake.set()

    def wait_for_room(self, max_pending: int, stop: threading.Event) -> None:
        """Block while more than ``max_pending`` chunks wait: back-pressure for sources that are not live.

        A file replayed as fast as possible (or during an outage) then pauses instead of
        overrunning the spool limit; live sources (microphones) never call this.
        """
        while not stop.is_set():
            with self._lock:
                if self.spool.pending_chunks <= max_pending:
                    return
            stop.wait(0.01)

    def flush(self, timeout_s: float) -> bool:
        """Wait until every spooled record is acknowledged; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.spool.pending_chunks == 0:
                    return True
            self._wake.set()
            time.sleep(0.02)
        with self._lock:
            return self.spool.pending_chunks == 0

    def close(self, flush_timeout_s: float = 10.0) -> ShipperStats:
        """Try to deliver the backlog for ``flush_timeout_s``, then stop; undelivered records stay spooled."""
        if self._thread.is_alive():
            self.flush(flush_timeout_s)
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=30)
        stats = self.stats()
        with self._lock:
            self.spool.close()
        if self._producer is not None:
            try:
                self._producer.close(timeout=2)
            except Exception as exc:  # closing must not hide the report; the spool already holds the data
                log.warning("producer close failed: %s", exc)
        return stats

    def stats(self) -> ShipperStats:
        with self._lock:
            spool = self.spool.stats()
        outage = 0.0 if self._online or self._outage_started is None else time.monotonic() - self._outage_started
        return ShipperStats(
            self._online,
            self._had_success,
            self._sent_chunks,
            self._sent_bytes,
            self._outages,
            outage,
            self._last_error,
            time.monotonic() - self._last_error_at if self._last_error else 0.0,
            self._rejected,
            spool,
        )

    # ------------------------------------------------------------------ sender thread
    def _run(self) -> None:
        last_sync = time.monotonic()
        while not self._stop.is_set():
            try:
                self._step()
                now = time.monotonic()
                if now - last_sync >= self.sync_interval_s:
                    last_sync = now
                    with self._lock:
                        self.spool.sync()
            except Exception as exc:  # the sender must outlive any single failure; data stays in the spool
                log.exception("shipper step failed; retrying")
                self._note_error(exc)
                time.sleep(0.5)
            self._wake.wait(0.05)
            self._wake.clear()
        self._drain_results()

    def _step(self) -> None:
        self._drain_results()
        if self._online:
            self._send_window()
        else:
            self._maybe_probe()

    def _send_window(self) -> None:
        while self._online:
            with self._lock:
                if self.spool.in_flight >= self.window:
                    return
                rec = self.spool.next_to_send()
            if rec is None:
                return
            self._send(rec.position, rec.key, rec.value)

    def _send(self, position: int, key: bytes, value: bytes) -> None:
        size = len(key) + len(value)
        if self._unacked_since is None:
            self._unacked_since = time.monotonic()
        try:
            future = self._producer.send(self.topic, key=key, value=value)
        except Exception as exc:  # KafkaTimeoutError (no metadata), closed producer, ...: an outage
            self._results.put((position, size, exc))
            return
        future.add_callback(lambda _md: self._result(position, size, None))
        future.add_errback(lambda err: self._result(position, size, err))

    def _result(self, position: int, size: int, err: BaseException | None) -> None:
        self._results.put((position, size, err))
        self._wake.set()

    def _drain_results(self) -> None:
        while True:
            try:
                position, size, err = self._results.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                if err is None:
                    self.spool.ack(position)
                elif is_permanent(err):
                    self.spool.ack(position)  # resending cannot help: count and report it
                    self._rejected += 1
                    log.error(
                        "broker rejected spool record %d permanently (%s: %s); it is not resent",
                        position,
                        type(err).__name__,
                        err,
                    )
                else:
                    self.spool.nack(position)
            if err is None:
                self._last_ack_at, self._unacked_since = time.monotonic(), None
                self._sent_chunks += 1
                self._sent_bytes += size
                if not self._online and self.spool.in_flight == 0:
                    self._back_online()  # the probe landed (or the last of an old batch): resume in order
            elif not is_permanent(err):
                self._went_offline(err)

    def _went_offline(self, err: BaseException) -> None:
        self._note_error(err)
        # A failed producer may be wedged: e.g. after a broker restart kafka-python's idempotent
        # producer retries UnknownProducerId until the delivery timeout. The next probe uses a new one.
        self._fresh_producer_needed = True
        if self._online:
            self._online = False
            self._outages += 1
            # The outage began before this failure surfaced (a send fails only after its request or
            # delivery timeout, 5-10 s): it is measured from the first send after the last acknowledgement.
            self._outage_started = self._unacked_since or self._last_ack_at or time.monotonic()
            self._probe_backoff = self.probe_interval_s
            self._probe_at = time.monotonic() + self.probe_interval_s
            log.warning(
                "Kafka at %s unreachable (%s); spooling chunks to %s until it returns",
                self.settings.kafka.bootstrap_servers,
                self._last_error,
                self.spool.directory,
            )

    def _back_online(self) -> None:
        took = time.monotonic() - self._outage_started if self._outage_started else 0.0
        self._online = True
        self._outage_started = None
        with self._lock:
            backlog = self.spool.pending_chunks
        if self._had_success:
            log.warning(
                "Kafka is reachable again after an outage of %.1f s (from the first unacknowledged send); "
                "sending %d spooled chunks in order",
                took,
                backlog,
            )
        elif backlog > 1:
            log.info("connected to Kafka; sending %d spooled chunks in order", backlog)
        self._had_success = True

    def _note_error(self, err: BaseException) -> None:
        self._last_error = f"{type(err).__name__}: {err}"[:300]
        self._last_error_at = time.monotonic()

    def _maybe_probe(self) -> None:
        with self._lock:
            busy = self.spool.in_flight > 0
            waiting = self.spool.has_pending()
        if not self._tried_early_connect:
            self._tried_early_connect = True
            self._new_producer()  # connect at start so the first chunk does not wait for the handshake
        if busy or not waiting or time.monotonic() < self._probe_at:
            return
        self._probe_backoff = min(self._probe_backoff * 2, self.max_probe_interval_s)
        self._probe_at = time.monotonic() + self._probe_backoff
        if (self._fresh_producer_needed or self._producer is None) and not self._new_producer():
            return
        with self._lock:
            rec = self.spool.next_to_send()
        if rec is not None:
            self._send(rec.position, rec.key, rec.value)

    def _new_producer(self) -> bool:
        old, self._producer = self._producer, None
        if old is not None:
            try:
                old.close(timeout=0)
            except Exception as exc:  # an old producer of a dead broker may fail to close; it is dropped anyway
                log.debug("closing the old producer failed: %s", exc)
        try:
            self._producer = make_producer(self.settings, **producer_options(self.settings, self.idempotent))
        except Exception as exc:  # ServiceUnavailable, or kafka-python's assorted bootstrap errors
            self._note_error(exc)
            if not self._had_success and not self._warned_unreachable:
                self._warned_unreachable = True
                log.warning(
                    "cannot reach Kafka at %s (%s); spooling chunks to %s and retrying every few seconds",
                    self.settings.kafka.bootstrap_servers,
                    self._last_error,
                    self.spool.directory,
                )
            return False
        self._fresh_producer_needed = False
        return True
