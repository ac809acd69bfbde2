"""The Faust app: ``audio.raw`` chunks in, per-machine log-mel windows out on ``features.logmel``.

Build it with :func:`create_app` (nothing happens at import); run it with :func:`run_worker`
(``soundwatch features run``). Several workers with the same ``stream.app_id`` split the partitions.

Per record of ``audio.raw`` (key = ``machine_key``, value = an encoded :class:`AudioChunk`):

1. decode; an empty value, an undecodable chunk, NaN/inf samples, the wrong sample rate, a key
   that is not the chunk's machine, or a chunk of a second gateway while a newer one owns the
   machine (``conflicting_gateway``, see :mod:`features.windower`) go to the dead-letter topic
   with :class:`DeadLetter` headers (the reason), and the worker carries on;
2. load the machine's :class:`StreamWindower` from the changelog-backed table, push the chunk;
3. publish the completed windows (key = ``machine_key``) and **wait for the broker's ack**;
4. only then store the new windower state in the table (its changelog record follows).

With ``stream.batch_max_records`` > 1 (the default, 500; 1: one record at a time) records come in batches (at
most ``stream.batch_max_wait_ms`` of waiting to fill one): steps 1-2 run record by record in order,
step 3 publishes every window of the batch before waiting for any ack, and step 4 stores each
machine's newest state, then each partition's next offset, once all are acked
(:meth:`WindowingProcessor.handle_batch`). Per record that is the same order of events as one record
at a time, so every guarantee below holds per batch.

Delivery (no exactly-once: the local broker has no transactions): a worker killed and restarted,
or a partition moved to another worker, must give no missing and no duplicate windows.

* The table also keeps each input partition's next offset. Faust flushes the producer (changelog
  included) before it commits input offsets, so a restored state is never *behind* the committed
  input: replayed records below the stored offset are skipped. A record *above* it means the
  consumer skipped some — Faust drops records fetched while a partition is paused for recovery and
  does not seek back where nothing was committed yet (seen against the local broker after kill -9) —
  so the consumer is sent back to the stored offset.
* Windows are acked before the state that records them is written, so a crash can leave the output
  *ahead* of the stored state, never behind it: no window is lost. The re-processed chunk then
  recomputes windows that are already published. To drop exactly those, a worker reads the tail of
  the output partition of each input partition it is assigned (windows of input partition ``p`` go
  to output partition ``p % n``, so only that partition's previous owner wrote there) and remembers
  the newest ``(segment, start_frame)`` per machine; re-emissions up to it are suppressed. The gap
  between output and state is at most the chunk in flight at the crash, so a tail of
  ``_TAIL_DEPTH`` records is ample.
* Chunks a gateway sent twice (same sequence number) are ignored by the windower itself.
* A recreated or truncated input topic (a broker that lost its data, a topic deleted and created
  again) restarts offsets below the stored next offset. Such records are new audio, not replays:
  a partition whose end offset is below the stored one, or whose record holds a chunk numbered
  past the last one processed, is *resynchronised* — its next offset becomes the new log's first
  (``topic_resyncs``). Chunks the old log held but this worker never processed are gone with it;
  the sequence gap shows them, and they are counted (``chunks_skipped``), never silently dropped.
* Sends never crash the agent (Faust would ack the record it was handling): a transient send
  error is retried in place with back-off; a record the broker refuses for good (too large) is
  not retried: a window becomes an ``undeliverable`` dead letter, a dead letter is cut to
  :attr:`DeadLetter.MAX_VALUE_BYTES` (original size and SHA-256 in its headers) and, refused
  still, sent without its value — the partition always moves on.
* The ``pipeline`` health point (every 10 s) carries the counters ``chunks_skipped``, ``chunks_conflicting``
  and ``topic_resyncs`` (since the worker started): audio that was lost or contested is visible, not silent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.windower import EventKind, StreamEvent, StreamWindower, peek_state
from soundwatch.contracts import AudioChunk, ContractError, DeadLetter, FeatureWindow, Reason, machine_key
from soundwatch.influx import schema as ix
from soundwatch.influx.health import HealthReporter
from soundwatch.kafka import ensure_topics, is_permanent
from soundwatch.liveness import Progress, health_response
from soundwatch.settings import KafkaSettings, Settings

if TYPE_CHECKING:
    import faust

log = logging.getLogger(__name__)

STAGE = "features"
TABLE_NAME = "windower-state"
_TAIL_DEPTH = 512  # output records read back per partition after an assignment (see module docstring)
_TAIL_TIMEOUT_S = 60.0
PRODUCER_MAX_BATCH_BYTES = 512 * 1024  # per partition, as the gateways' (ingest.producer)
PRODUCER_LINGER_S = 0.005  # as every kafka-python producer here (soundwatch.kafka.make_producer)
_RESEEK_EVERY_S = 1.0  # while records past the expected offset arrive, how often the consumer is sent back again
_REWIND_GRACE_S = 60.0  # how long a missing record is waited for while it is still in the log


def _offset_key(topic: str, partition: int) -> bytes:
    """Table key of an input partition's next offset (``\\x00`` cannot start a machine key)."""
    return f"\x00next-offset/{topic}/{partition}".encode()


def fingerprint(value: bytes | None) -> str:
    """A short hash of a record's value: tells whether an offset still holds the record processed there."""
    return hashlib.blake2b(value or b"", digest_size=8).hexdigest()


def _position(raw: bytes | None) -> tuple[int | None, str | None]:
    """(next offset, fingerprint of the record before it) from a stored ``b"<offset>[:<fingerprint>]"``."""
    if raw is None:
        return None, None
    offset, _, fp = raw.decode().partition(":")
    return int(offset), fp or None


@dataclass
class StreamStats:
    """Counters since the worker started (the health point carries the loss counters as they are)."""

    chunks: int = 0
    audio_s: float = 0.0
    windows: int = 0
    suppressed: int = 0
    replayed: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    gaps: int = 0
    duplicates: int = 0
    chunks_skipped: int = 0  # chunks known lost: sequence numbers a gap skipped within one producer
    chunks_conflicting: int = 0  # chunks of an older gateway while a newer one owns the machine (dead-lettered)
    topic_resyncs: int = 0  # input partitions found recreated or truncated, and resynchronised
    takeovers: int = 0  # a newer gateway epoch (restart, replacement) took over a machine

    def line(self) -> str:
        dl = sum(self.dead_letters.values())
        return (
            f"{self.chunks} chunks ({self.audio_s:.0f} s audio), {self.windows} windows, "
            f"{self.gaps} gaps ({self.chunks_skipped} chunks skipped), {self.duplicates} duplicates, "
            f"{self.chunks_conflicting} conflicting chunks, {self.takeovers} gateway takeovers, "
            f"{self.topic_resyncs} topic resyncs, {dl} dead letters {self.dead_letters or ''}, "
            f"{self.suppressed} re-emissions suppressed, {self.replayed} replayed records skipped"
        )


class _NoValue:
    """A stored position without a record before it (a resynchronised partition's start)."""


_NO_VALUE = _NoValue()


@dataclass
class _Batch:
    """What a batch of records changes, held until every window it published is acked (see :meth:`handle_batch`)."""

    windowers: dict[bytes, tuple[StreamWindower, int]] = field(default_factory=dict)  # key -> (state, partition)
    positions: dict[tuple[str, int], bytes] = field(default_factory=dict)  # input partition -> stored position
    last_values: dict[tuple[str, int], bytes | None] = field(default_factory=dict)  # fingerprinted at the end
    sends: list[tuple[Any, bytes, list[bytes], list[Any], int]] = field(default_factory=list)


class WindowingProcessor:
    """The agent's per-record logic, kept apart from the Faust wiring in :func:`create_app`.

    ``table`` maps keys to bytes: ``get(key)``, and ``put(key, value, partition)`` that stores the value
    and sends it to the changelog partition of input partition ``partition`` (the Faust table's own
    partition is that of the current event, which a batch no longer has when it writes).
    """

    def __init__(
        self,
        settings: Settings,
        table: Any,
        features_topic: Any,
        deadletter_topic: Any,
        *,
        seek: Callable[[str, int, int], Awaitable[None]],
        earliest: Callable[[str, int], Awaitable[int]],
        end: Callable[[str, int], Awaitable[int | None]],
        value_at: Callable[[str, int, int], Awaitable[bytes | None]],
    ) -> None:
        self.settings = settings
        self.params = settings.features
        self.table = table
        self.features_topic = features_topic
        self.deadletter_topic = deadletter_topic
        self._seek = seek  # move the input consumer of (topic, partition) to an offset
        self._earliest = earliest  # first offset still held by (topic, partition)
        self._end = end  # the broker's end offset of (topic, partition) now (None: unknown)
        self._value_at = value_at  # the value the broker holds at (topic, partition, offset) (None: no such record)
        # (topic, partition) -> (offset sought, first and last seek's monotonic time)
        self._rewinds: dict[tuple[str, int], tuple[int, float, float]] = {}
        self._replaced: dict[tuple[str, int], str] = {}  # partitions found recreated, not yet resynchronised: why
        self._same_log: dict[tuple[str, int], int] = {}  # next offset at which the log was last verified unchanged
        self._last_seen: dict[tuple[str, int], float] = {}  # (topic, partition) -> monotonic time of last record
        self.stats = StreamStats()
        self.progress = Progress(settings.stream.stall_after_s)  # /healthz, /readyz (soundwatch.liveness)
        self._scanned: set[int] = set()  # input partitions whose output tail has been read since assignment
        self._emitted: dict[bytes, tuple[int, int]] = {}  # machine key -> newest published (segment, start_frame)
        self._n_out: int | None = None
        self._batch: _Batch | None = None
        # machine key -> (the state bytes this worker stored, the windower they were made from): a machine's
        # next chunk continues that object instead of parsing the bytes again (checked by identity, so a
        # state recovered from the changelog or written by another worker is always parsed)
        self._decoded: dict[bytes, tuple[bytes, StreamWindower]] = {}

    # -------------------------------------------------------------- rebalance hooks
    def forget_partitions(self, partitions: set[int]) -> None:
        """Revoked partitions: read their output tail again if they come back; their seeks back are their new
        owner's business."""
        self._scanned -= partitions
        self._decoded.clear()
        for tp in [tp for tp in self._rewinds if tp[1] in partitions]:
            del self._rewinds[tp]

    async def _ensure_scanned(self, partition: int) -> None:
        if partition in self._scanned:
            return
        topic = self.settings.kafka.topics.features
        log.debug("input partition %d: reading back the tail of %s", partition, topic)
        try:
            n_out, emitted = await asyncio.wait_for(
                read_emitted_tail(self.settings, topic, partition, _TAIL_DEPTH), _TAIL_TIMEOUT_S
            )
        except (TimeoutError, OSError) as exc:  # no safe way on without it: let Faust restart the agent
            raise RuntimeError(f"cannot read back {topic} for input partition {partition}: {exc!r}") from exc
        self._n_out = n_out
        for key, last in emitted.items():
            if last > self._emitted.get(key, (-1, -1)):
                self._emitted[key] = last
        self._scanned.add(partition)
        log.info(
            "input partition %d: read back %s's tail, %d machine(s) with recent windows", partition, topic, len(emitted)
        )

    # -------------------------------------------------------------- per batch
    async def handle_batch(self, messages: list[Any]) -> None:
        """Process records in order; publish all their windows, wait for every ack, and only then store
        the machines' new states and the partitions' next offsets (states first).

        One broker round trip and one changelog record per machine and partition per batch, instead
        of per record. The guarantees are those of one record at a time: the output is never behind the
        stored state (a crash loses the batch's state, so its chunks are processed again and the
        windows already published are suppressed), and a next offset is never ahead of its states.
        """
        if self._batch is not None:
            raise RuntimeError("handle_batch is not re-entrant: one batch at a time")
        batch = self._batch = _Batch()
        try:
            for message in messages:
                await self.handle(message)  # looked up on the instance: tests may wrap it
            for message, key, values, futures, partition in batch.sends:
                await self._settle(message, key, values, futures, partition)
            for key, (windower, partition) in batch.windowers.items():
                data = windower.to_bytes()
                self.table.put(key, data, partition)
                self._decoded[key] = (data, windower)
            for tp, position in batch.positions.items():
                if tp in batch.last_values:
                    position += b":" + fingerprint(batch.last_values[tp]).encode()
                self.table.put(_offset_key(*tp), position, tp[1])
        finally:
            self._batch = None

    def _get(self, key: bytes) -> bytes | None:
        """A table value as the batch has changed it so far."""
        b = self._batch
        if b is not None and key in b.windowers:
            return b.windowers[key][0].to_bytes()
        return self.table.get(key)

    def _position_of(self, tp: tuple[str, int], *, with_fingerprint: bool = False) -> tuple[int | None, str | None]:
        """``tp``'s next offset as the batch has moved it so far, and (when asked: it hashes a record) the
        fingerprint of the record before it."""
        b = self._batch
        if b is not None and tp in b.positions:
            fp = fingerprint(b.last_values[tp]) if with_fingerprint and tp in b.last_values else None
            return int(b.positions[tp]), fp
        return _position(self.table.get(_offset_key(*tp)))

    def _set_position(self, tp: tuple[str, int], offset: int, value: bytes | None | _NoValue = None) -> None:
        """Stage ``tp``'s next offset, with the value of the record before it (fingerprinted when stored)."""
        assert self._batch is not None, "positions change only inside handle_batch"
        self._batch.positions[tp] = str(offset).encode()
        if isinstance(value, _NoValue):
            self._batch.last_values.pop(tp, None)
        else:
            self._batch.last_values[tp] = value

    # -------------------------------------------------------------- per record
    async def handle(self, message: Any) -> None:
        """Process one ``audio.raw`` record (``message`` has topic, partition, offset, key, value).

        Outside :meth:`handle_batch` it is a batch of one."""
        if self._batch is None:
            await self.handle_batch([message])
            return
        await self._ensure_scanned(message.partition)
        if not await self._next_in_partition(message):
            return
        try:
            if not message.value:
                raise ContractError(Reason.EMPTY_PAYLOAD, "record has no value")
            chunk = AudioChunk.decode(message.value)
            log.debug(
                "%s[%d]@%d: %s/%s chunk %d",
                message.topic,
                message.partition,
                message.offset,
                chunk.machine_type,
                chunk.machine_id,
                chunk.sequence,
            )
            key = machine_key(chunk.machine_type, chunk.machine_id)
            if message.key != key:
                raise ContractError(
                    Reason.INVALID_FIELD,
                    f"record key {message.key!r} is not the chunk's machine "
                    f"key {key!r}; per-machine order needs that key",
                )
            windower = self._load(key)
            if windower.discontinuous(chunk):  # a gap or takeover: or records of a new log passed unseen?
                why = await self._log_replaced((message.topic, message.partition), message.offset)
                if why is not None:
                    await self._resynchronise((message.topic, message.partition), why, seek=True)
                    return  # this record is read again, after the ones the consumer skipped
            result = windower.push(chunk)
        except ContractError as exc:
            if exc.reason is Reason.CONFLICTING_GATEWAY:
                self.stats.chunks_conflicting += 1
            await self._dead_letter(message, exc)
            self._done(message)
            return
        for event in result.events:
            self._count(event)
        if any(e.kind is EventKind.DUPLICATE for e in result.events):
            self._done(message)
            return  # a chunk sent twice upstream: the state did not change
        self.stats.chunks += 1
        self.stats.audio_s += chunk.duration_s
        out_partition = message.partition % (self._n_out or 1)
        pending = []
        for window in result.windows:
            if (window.segment, window.start_frame) <= self._emitted.get(key, (-1, -1)):
                self.stats.suppressed += 1
                log.info(
                    "%s: window (%d, %d) already published before a restart; not sent again",
                    key.decode(),
                    window.segment,
                    window.start_frame,
                )
                continue
            pending.append(window.encode())
        if pending:  # acked before the state that records them is written
            await self._publish(message, key, pending, out_partition)
            self.stats.windows += len(pending)
        if key in self._emitted and (windower.segment, windower.next_window) > self._emitted[key]:
            del self._emitted[key]  # caught up with what was published before the restart
        assert self._batch is not None
        self._batch.windowers[key] = (windower, message.partition)
        self._done(message)

    def _count(self, event: StreamEvent) -> None:
        if event.kind is EventKind.GAP:
            self.stats.gaps += 1
            self.stats.chunks_skipped += event.missing
        elif event.kind is EventKind.DUPLICATE:
            self.stats.duplicates += 1
        else:
            self.stats.takeovers += 1
        if event.kind is EventKind.TAKEOVER and not event.new_segment:
            log.info("%s", event)  # a clean gateway restart: nothing lost, nothing reset
        else:
            log.warning("%s", event)

    # -------------------------------------------------------------- sending
    async def _send(
        self,
        topic: Any,
        name: str,
        *,
        key: bytes | None,
        value: bytes,
        headers: Any = None,
        partition: int | None = None,
    ) -> Exception | None:
        """Send one record and wait for the broker's ack; None when acked, else the permanent error.

        Transient errors (broker away) are retried here, in place, with back-off: the agent must not
        raise, or Faust acks the record it was handling. A permanent one (:func:`~soundwatch.kafka.is_permanent`:
        the broker will never take this record) is returned for the caller to deal with.
        """
        delay = 0.5
        while True:
            error = await _acked(await _sent(topic, key=key, value=value, partition=partition, headers=headers))
            if error is None or is_permanent(error):
                self.progress.excuse(False, "kafka")
                return error
            log.warning("cannot send to %s (%s: %s); retrying in %.1f s", name, type(error).__name__, error, delay)
            self.progress.excuse(True, "kafka")  # the broker is away: no stall, a restart would not help
            await asyncio.sleep(delay)
            delay = min(delay * 2, 15.0)

    async def _publish(self, message: Any, key: bytes, windows: list[bytes], partition: int) -> None:
        """Send a chunk's windows; the batch waits for their acks (:meth:`_settle`) before storing states."""
        futures = [await _sent(self.features_topic, key=key, value=value, partition=partition) for value in windows]
        assert self._batch is not None
        self._batch.sends.append((message, key, windows, futures, partition))

    async def _settle(self, message: Any, key: bytes, windows: list[bytes], futures: list[Any], partition: int) -> None:
        """Wait until each window is acked; a window the broker refuses for good becomes an ``undeliverable``
        dead letter and the stream goes on."""
        name = self.settings.kafka.topics.features
        for value, fut in zip(windows, futures, strict=True):
            error = await _acked(fut)
            if error is not None and not is_permanent(error):
                log.warning("cannot send to %s (%s: %s); retrying", name, type(error).__name__, error)
                error = await self._send(self.features_topic, name, key=key, value=value, partition=partition)
            if error is not None:
                refused = ContractError(
                    Reason.UNDELIVERABLE, f"{name} refused a window of {key.decode()}: {type(error).__name__}: {error}"
                )
                await self._dead_letter(message, refused, value=value)

    # -------------------------------------------------------------- input offsets
    async def resync_idle_partitions(
        self, topic: str, partitions: list[int], highwater: Callable[[int], int | None], idle_s: float = 5.0
    ) -> None:
        """Called every second: find recreated partitions, and seek back idle ones whose records the consumer dropped.

        A partition whose high-water mark (as the last fetch saw it) is *below* the stored next offset
        holds a new log: it is marked for resynchronisation (done by the agent with the next record,
        because only the agent may write the table) and the consumer sent to its first offset.

        :meth:`_next_in_partition` repairs a skip when a *later* record arrives. When Faust dropped the
        last records of a partition (fetched during recovery right after a restart) nothing later may
        ever come: a partition with records past the stored next offset and no record delivered for
        ``idle_s`` is sent back to that offset. A seek back still waiting for its record (records
        fetched before it moved Faust's read offset past it, and Faust dropped the re-read ones) is
        repeated every ``_RESEEK_EVERY_S`` while no record comes: a resync after a broker restart must
        not wait for the gateway's next chunk.
        """
        now = time.monotonic()
        for partition in partitions:
            tp = (topic, partition)
            stored, _ = _position(self.table.get(_offset_key(*tp)))
            high = highwater(partition)
            if tp in self._replaced:
                continue
            if stored is not None and high is not None and int(high) < stored:
                self._replaced[tp] = f"its high-water mark {int(high)} is below the stored next offset {stored}"
                start = await self._earliest(*tp)
                log.warning("%s[%d]: %s; seeking to the log's start %d", *tp, self._replaced[tp], start)
                await self._seek(*tp, start)
                continue
            if self._batch is not None:  # a batch in flight may hold the records waited for
                continue
            rewind = self._rewinds.get(tp)
            if rewind is not None:
                sought, first_seek, last_seek = rewind
                if now - max(last_seek, self._last_seen.get(tp, last_seek)) >= _RESEEK_EVERY_S:
                    log.info("%s[%d]: offset %d has not arrived since the seek back; seeking to it again", *tp, sought)
                    self._rewinds[tp] = (sought, first_seek, now)
                    await self._seek(*tp, sought)
                continue
            if stored is None or high is None or int(high) <= stored:
                continue
            if now - self._last_seen.setdefault(tp, now) < idle_s:  # first sight: give it ``idle_s``
                continue
            log.warning(
                "%s[%d]: records %d..%d wait but none arrived for %.0f s; seeking back to %d",
                topic,
                partition,
                stored,
                int(high) - 1,
                idle_s,
                stored,
            )
            self._last_seen[tp] = now
            await self._seek(topic, partition, stored)

    async def _next_in_partition(self, message: Any) -> bool:
        """True when ``message`` is the next unprocessed record of its partition.

        The table keeps each input partition's next offset (changelogged like the machine states).
        Earlier offsets are replays after a restart: skipped — unless the partition holds a new log
        (:meth:`_log_replaced`), which is then resynchronised. A later offset means the consumer skipped
        records — Faust drops records it fetched while a partition was paused for recovery and, where
        no offset was committed yet, does not seek back — so the consumer is sent back to the expected
        offset and records are ignored until it arrives. Records fetched before the seek can move
        Faust's read offset past it again (Faust then drops the re-read records below it), so while later
        records keep coming the consumer is sent back every ``_RESEEK_EVERY_S``. Records deleted by
        retention before they were read are skipped at once (logged as lost); records that never arrive
        for another reason are skipped after ``_REWIND_GRACE_S``, loudly.
        """
        tp = (message.topic, message.partition)
        self._last_seen[tp] = time.monotonic()
        stored, _ = self._position_of(tp)
        expected = stored if stored is not None else await self._earliest(*tp)
        why = self._replaced.pop(tp, None)
        if why is None and message.offset < expected:
            why = self._unseen(message) or await self._log_replaced(tp, expected)
        if why is not None:
            expected = await self._resynchronise(tp, why)
        if message.offset == expected:
            self._rewinds.pop(tp, None)
            return True
        if message.offset < expected:
            self.stats.replayed += 1
            return False
        now = time.monotonic()
        rewind = self._rewinds.get(tp)
        if rewind is None or rewind[0] != expected:
            log.warning(
                "%s[%d]: got offset %d but %d is next: the consumer skipped records; seeking back",
                *tp,
                message.offset,
                expected,
            )
            self._rewinds[tp] = (expected, now, now)
            await self._seek(*tp, expected)
            return False
        _, first_seek, last_seek = rewind
        if now - last_seek < _RESEEK_EVERY_S:
            return False  # fetched before the seek; the re-read follows
        earliest = await self._earliest(*tp)
        if earliest > expected:  # deleted by retention before this worker read them
            log.error(
                "%s[%d]: offsets %d..%d were deleted by retention before this worker read them; continuing at "
                "%d. The chunks they held are lost for the stream (counted in chunks_skipped when their "
                "machines' next chunks arrive): the feature workers fell further behind than the retention.",
                *tp,
                expected,
                earliest - 1,
                earliest,
            )
            self._set_position(tp, earliest, _NO_VALUE)
            if message.offset == earliest:
                self._rewinds.pop(tp, None)
                return True
            self._rewinds[tp] = (earliest, now, now)
            await self._seek(*tp, earliest)
            return False
        if now - first_seek < _REWIND_GRACE_S:
            self._rewinds[tp] = (expected, first_seek, now)
            await self._seek(*tp, expected)  # the read offset moved past it again (see above)
            return False
        log.error(
            "%s[%d]: offsets %d..%d never arrived in %.0f s of seeking back although the log holds them; "
            "continuing at %d. The chunks they held are lost for the stream (counted in chunks_skipped).",
            *tp,
            expected,
            message.offset - 1,
            _REWIND_GRACE_S,
            message.offset,
        )
        self._rewinds.pop(tp, None)
        return True

    # -------------------------------------------------------------- a recreated or truncated log
    def _unseen(self, message: Any) -> str | None:
        """Why a record below the next offset cannot be a replay: it holds a chunk its producer numbered past
        the last one processed (a replayed record was processed already). None: it may be a replay."""
        try:
            chunk = AudioChunk.decode(message.value)
            key = machine_key(chunk.machine_type, chunk.machine_id)
            state = self._get(key)
            if not state or message.key != key:
                return None
            owner = StreamWindower(self.params, chunk.machine_type, chunk.machine_id)
            owner.take_producer(peek_state(state))
        except (ContractError, KeyError, ValueError, TypeError):  # a bad record or state proves nothing here
            return None
        if not owner.unseen(chunk):
            return None
        return (
            f"record {message.offset} holds {chunk.machine_type}/{chunk.machine_id} chunk {chunk.sequence}, "
            f"newer than the last one processed ({owner.last_sequence}), so it is no replay"
        )

    async def _log_replaced(self, tp: tuple[str, int], expected: int) -> str | None:
        """Why ``tp`` holds another log than the one processed up to ``expected`` (None: the same, or unknown).

        A broker that lost its data, or a topic deleted and created again, restarts the partition's
        offsets while the table still holds the old log's position. Two checks, either one enough:
        the broker's end offset is below ``expected`` (a log never shrinks), or the record now at
        ``expected - 1`` is not the one processed there (its fingerprint, stored with the offset).
        The second also catches a new log that already grew past the old position before this
        worker fetched again — then the consumer silently *skipped* the new records below it. A
        verified position is remembered, so a burst of replays asks the broker once.
        """
        if self._same_log.get(tp) == expected or expected <= 0:
            return None
        _, stored_fp = self._position_of(tp, with_fingerprint=True)
        try:
            end = await self._end(*tp)
            if end is not None and end < expected:
                return f"its end offset {end} is below the stored next offset {expected}"
            held = await self._value_at(*tp, expected - 1) if stored_fp else None
        except Exception as exc:  # no answer now: treated as unknown; the next record asks again
            log.warning("%s[%d]: cannot check whether the log was replaced (%s)", *tp, exc)
            return None
        if held is not None and fingerprint(held) != stored_fp:
            return f"offset {expected - 1} no longer holds the record processed there"
        if held is not None or end is not None:
            self._same_log[tp] = expected
        return None

    async def _resynchronise(self, tp: tuple[str, int], why: str, *, seek: bool = False) -> int:
        """Forget the old log's position: the partition restarts at its first offset, which is returned."""
        start = await self._earliest(*tp)
        self.stats.topic_resyncs += 1
        log.warning(
            "%s[%d]: the topic was recreated or truncated (%s). Resynchronising at offset %d: every record "
            "of the new log is processed. Chunks the old log held that were not processed yet are lost; "
            "they are counted in chunks_skipped when their machines' next chunks arrive. After a broker "
            "lost its data see 'Reliability' in the README.",
            *tp,
            why,
            start,
        )
        self._set_position(tp, start, _NO_VALUE)
        self._same_log.pop(tp, None)
        self._rewinds.pop(tp, None)
        if seek:
            now = time.monotonic()
            self._rewinds[tp] = (start, now, now)  # records fetched before the seek are ignored quietly
            await self._seek(*tp, start)
        return start

    def _done(self, message: Any) -> None:
        self._set_position((message.topic, message.partition), message.offset + 1, message.value)

    def _load(self, key: bytes) -> StreamWindower:
        if self._batch is not None and key in self._batch.windowers:
            return self._batch.windowers[key][0]  # its newest state, changed by this batch
        data = self.table.get(key)
        if not data:
            return StreamWindower(self.params)
        stored = self._decoded.pop(key, None)  # popped: this batch changes the object, and may fail
        if stored is not None and stored[0] is data:
            return stored[1]
        try:
            return StreamWindower.from_bytes(data, self.params)
        except ContractError as exc:
            if exc.reason is not Reason.FEATURE_PARAMS_MISMATCH:
                raise RuntimeError(f"stored windower state of {key!r} is corrupt: {exc}") from exc
            old = peek_state(data)
            log.warning(
                "%s: feature parameters changed since the stored state (%s); starting segment %d",
                key.decode(),
                exc.detail,
                old["segment"] + 1,
            )
            fresh = StreamWindower(self.params, old["machine_type"], old["machine_id"])
            fresh.segment = int(old["segment"]) + 1
            return fresh

    async def _dead_letter(self, message: Any, exc: ContractError, value: bytes | None = None) -> None:
        """Dead-letter ``message`` (or ``value``, a record made from it), cut to a size that always fits."""
        letter = DeadLetter.from_error(exc, STAGE, message.topic, message.partition, message.offset)
        letter, key, data = letter.fit(message.key, message.value if value is None else value)
        log.warning(
            "dead-lettered %s[%d]@%d (%d bytes%s): %s: %s",
            message.topic,
            message.partition,
            message.offset,
            letter.original_size,
            ", truncated" if letter.truncated else "",
            exc.reason.value,
            exc.detail,
        )
        name = self.settings.kafka.topics.deadletter
        error = await self._send(self.deadletter_topic, name, key=key, value=data, headers=letter.headers())
        if error is not None:
            log.error(
                "%s refused the dead letter of %s[%d]@%d (%s); sending it without the value",
                name,
                message.topic,
                message.partition,
                message.offset,
                error,
            )
            bare = letter.without_value(error)
            error = await self._send(self.deadletter_topic, name, key=key, value=b"", headers=bare.headers())
        if error is not None:
            log.error(
                "%s refused even the header-only dead letter of %s[%d]@%d (%s); given up so the partition moves on",
                name,
                message.topic,
                message.partition,
                message.offset,
                error,
            )
        self.stats.dead_letters[exc.reason.value] = self.stats.dead_letters.get(exc.reason.value, 0) + 1


async def _sent(topic: Any, **kw: Any) -> Any:
    """``topic.send`` now (Faust would defer it to the commit by default): the ack future, or the exception
    the send raised at once (e.g. a record over the producer's size limit)."""
    try:
        return await topic.send(force=True, **kw)
    except Exception as exc:  # aiokafka and faust errors share no base class narrower than Exception
        return exc


async def _acked(fut: Any) -> Exception | None:
    """None once the send behind ``fut`` (from :func:`_sent`) is acked, else its error."""
    if isinstance(fut, Exception):
        return fut
    try:
        await fut
        return None
    except Exception as exc:  # see _sent
        return exc


async def read_emitted_tail(
    settings: Settings, topic: str, input_partition: int, depth: int
) -> tuple[int, dict[bytes, tuple[int, int]]]:
    """``(n_partitions, {machine key: newest (segment, start_frame)})`` from the last ``depth`` records of
    the output partition that input partition ``input_partition`` writes to (aiokafka, on Faust's loop)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # deferred: loads aiokafka

    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **_aiokafka_kwargs(settings.kafka))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise ContractError(Reason.INVALID_FIELD, f"output topic {topic} does not exist")
        n_out = len(parts)
        tp = TopicPartition(topic, input_partition % n_out)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        begin = (await consumer.beginning_offsets([tp]))[tp]
        consumer.seek(tp, max(begin, end - depth))
        newest: dict[bytes, tuple[int, int]] = {}
        while await consumer.position(tp) < end:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for rec in records:
                    try:
                        w = FeatureWindow.decode(rec.value)
                    except ContractError:
                        continue
                    k = machine_key(w.machine_type, w.machine_id)
                    newest[k] = max(newest.get(k, (-1, -1)), (w.segment, w.start_frame))
        return n_out, newest
    finally:
        await consumer.stop()


async def read_value_at(
    settings: Settings, topic: str, partition: int, offset: int, timeout_s: float = 10.0
) -> bytes | None:
    """The value of the record at ``offset`` of a partition, or None when the log does not hold that offset
    (aiokafka, on Faust's loop). Raises on a broker that does not answer."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # deferred: loads aiokafka

    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **_aiokafka_kwargs(settings.kafka))
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not begin <= offset < end:
            return None
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                for rec in records:
                    if rec.offset == offset:
                        return rec.value or b""
                    if rec.offset > offset:
                        return None  # a gap in the log (compaction, transaction markers)
        raise TimeoutError(f"{topic}[{partition}]@{offset} not read within {timeout_s:.0f} s")
    finally:
        await consumer.stop()


def _ssl_context(kafka: KafkaSettings) -> Any:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
    if kafka.ssl_certfile:
        context.load_cert_chain(str(kafka.ssl_certfile), str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return context


def _aiokafka_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers.split(","),
        "security_protocol": kafka.security_protocol,
        "ssl_context": _ssl_context(kafka),
    }
    if kafka.security_protocol.startswith("SASL"):
        kw.update(
            sasl_mechanism=kafka.sasl_mechanism or "PLAIN",
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
        )
    return kw


def broker_url(kafka: KafkaSettings) -> str:
    """Faust's broker URL list (``kafka://h1:9092;kafka://h2:9092``) for the configured servers."""
    return ";".join(f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",") if server.strip())


def _credentials(kafka: KafkaSettings) -> Any:
    import faust  # deferred: loads faust

    if kafka.security_protocol == "PLAINTEXT":
        return None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(kafka))
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=password,
        ssl_context=_ssl_context(kafka),
        mechanism=kafka.sasl_mechanism or "PLAIN",
    )


def app_id(settings: Settings) -> str:
    """The Faust app id (and consumer group): ``stream.app_id`` behind ``kafka.topic_prefix``, since it
    names the table's changelog topic."""
    return settings.kafka.prefixed(settings.stream.app_id)


def changelog_topic(settings: Settings) -> str:
    """The windower table's changelog topic, where the feature workers' state lives (Faust's naming)."""
    return f"{app_id(settings)}-{TABLE_NAME}-changelog"


CHANGELOG_CONFIGS = {"cleanup.policy": "compact"}  # only each machine's newest windower state is needed


def create_app(
    settings: Settings, *, web_port: int | None = None, stats_interval_s: float = 30.0, health_interval_s: float = 10.0
) -> faust.App:
    """The Faust app for ``settings`` (no network until a worker starts it).

    ``web_port``: the worker's web server port on ``stream.workers_web_host``; ``None`` takes
    ``stream.workers_web_port``, ``0`` disables the web server (tests, several workers on one host).
    The web server answers ``/healthz`` and ``/readyz`` (:mod:`soundwatch.liveness`).
    """
    import faust  # deferred: loads faust
    from faust.types import TP  # deferred: loads faust

    s, t = settings.stream, settings.kafka.topics
    port = s.workers_web_port if web_port is None else web_port
    datadir = Path(s.data_dir)
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id(settings),
        broker=broker_url(settings.kafka),
        broker_credentials=_credentials(settings.kafka),
        store="memory://",  # the state lives in the changelog topic; recovery reads it back
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee="at_least_once",  # exactly_once needs transactions the local broker lacks
        producer_acks=-1,
        # a window (32 KB) and a windower state (~33 KB) are each over Faust's default 16 KB batch: without
        # this every record went out in a request of its own. A batch's records now share requests.
        producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
        # one record at a time waits for its own acks: lingering would add to every record's round trip
        producer_linger=PRODUCER_LINGER_S if settings.stream.batch_max_records > 1 else 0.0,
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval_s,
        consumer_auto_offset_reset="earliest",
        topic_partitions=t.partitions,
        topic_replication_factor=t.replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=0,
        web_enabled=port != 0,
        web_bind=s.workers_web_host,
        web_port=port or 6066,
        datadir=str(datadir / app_id(settings)),
        autodiscover=False,
    )
    audio_topic = app.topic(t.audio_raw, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    features_topic = app.topic(
        t.features, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    deadletter_topic = app.topic(
        t.deadletter, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    # keys and values are raw bytes (the app's serializers): a machine key -> StreamWindower.to_bytes()
    table = _PartitionedTable(
        app.Table(TABLE_NAME, default=None, key_type=bytes, value_type=bytes, partitions=t.partitions)
    )

    async def seek(topic: str, partition: int, offset: int) -> None:
        # In the consumer's own thread: Faust's ``consumer.seek`` changes aiokafka's fetch buffer from this
        # thread while the consumer thread reads it (KeyError in fetched_records, the worker crashed).
        try:
            await app.consumer.seek_wait({TP(topic, partition): offset})
        except Exception as exc:  # e.g. the partition moved away meanwhile: its new owner reads it
            log.warning("%s[%d]: could not seek to %d (%s); the next record tries again", topic, partition, offset, exc)

    async def earliest(topic: str, partition: int) -> int:
        tp = TP(topic, partition)
        return int((await app.consumer.earliest_offsets(tp))[tp])

    async def end(topic: str, partition: int) -> int | None:
        tp = TP(topic, partition)
        value = (await app.consumer.highwaters(tp)).get(tp)
        return None if value is None else int(value)

    async def value_at(topic: str, partition: int, offset: int) -> bytes | None:
        return await read_value_at(settings, topic, partition, offset)

    processor = WindowingProcessor(
        settings, table, features_topic, deadletter_topic, seek=seek, earliest=earliest, end=end, value_at=value_at
    )
    app.windowing = processor  # type: ignore[attr-defined]  # for tests and the stats timer

    progress = processor.progress

    @app.agent(audio_topic, name="windows")
    async def windows(stream: Any) -> None:
        # batches (Faust acks their events once handle_batch returns): one ack wait and one changelog
        # record per machine and partition per batch, not per record; batch_max_records = 1: batches of one
        async for events in stream.take_events(s.batch_max_records, within=s.batch_max_wait_ms / 1000.0):
            progress.handling(len(events))
            await processor.handle_batch([event.message for event in events])
            progress.progressed(len(events))

    @app.page("/healthz")
    async def healthz(view: Any, request: Any) -> Any:
        return _health_view(view, "/healthz", progress)

    @app.page("/readyz")
    async def readyz(view: Any, request: Any) -> Any:
        return _health_view(view, "/readyz", progress)

    @app.on_partitions_revoked.connect
    async def _revoked(_app: Any, revoked: set, **kwargs: Any) -> None:
        processor.forget_partitions({tp.partition for tp in revoked if tp.topic == t.audio_raw})

    @app.on_partitions_assigned.connect
    async def _assigned(_app: Any, assigned: set, **kwargs: Any) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == t.audio_raw)
        log.info("features: this worker now has %s partitions %s", t.audio_raw, mine)
        progress.started()  # zero partitions counts: the worker is in its group

    @app.timer(interval=stats_interval_s)
    async def _report() -> None:
        log.info("features: %s", processor.stats.line())

    @app.timer(interval=_RESEEK_EVERY_S)
    async def _resync() -> None:  # see WindowingProcessor.resync_idle_partitions
        progress.input(lag=_consumer_lag(app, t.audio_raw))
        # a rebalance or the table's recovery from its changelog holds the stream back: not a stall
        progress.excuse(bool(getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False)), "rebalance")
        mine = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == t.audio_raw)
        await processor.resync_idle_partitions(t.audio_raw, mine, lambda p: app.consumer.highwater(TP(t.audio_raw, p)))

    health = _HealthTicker(settings, processor.stats)

    @app.timer(interval=health_interval_s)
    async def _health() -> None:  # the pipeline-health dashboard's `features` rows
        await asyncio.to_thread(health.tick, _consumer_lag(app, t.audio_raw))

    return app


class _PartitionedTable:
    """The Faust table with writes sent to an explicit changelog partition (see :class:`WindowingProcessor`)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        return self.table.get(key)

    def put(self, key: bytes, value: bytes, partition: int) -> None:
        self.table.data[key] = value  # the store, as ``table[key] = value`` sets it ...
        self.table.send_changelog(partition, key, value)  # ... and its changelog record, in that partition

    def __getattr__(self, name: str) -> Any:  # recovery, tests: the Faust table's own API
        return getattr(self.table, name)


def _health_view(view: Any, path: str, progress: Progress) -> Any:
    answer = health_response(path, progress)
    assert answer is not None
    status, body = answer
    return view.bytes(body, content_type="application/json", status=status)


class _HealthTicker:
    """Rates since the previous tick and counters since start, written as a ``pipeline`` point (best effort,
    never raises).

    ``chunks_skipped`` (chunks known lost), ``chunks_conflicting`` (dead-lettered chunks of a second
    gateway) and ``topic_resyncs`` (recreated/truncated input partitions) are ints counting since the
    worker started, like ``dead_letters``: a point lost while InfluxDB was away loses no count, and
    alert rules take the increase per worker (``non_negative_difference``; a restarted worker is a new
    ``worker`` series).
    """

    COUNTERS = (ix.CHUNKS_SKIPPED, ix.CHUNKS_CONFLICTING, ix.TOPIC_RESYNCS)

    def __init__(self, settings: Settings, stats: StreamStats) -> None:
        self.stats = stats
        self.reporter = HealthReporter(settings.influx, "features", f"{socket.gethostname()}-{os.getpid()}")
        self.last = (time.monotonic(), stats.windows, stats.chunks, stats.audio_s)

    def fields(self, consumer_lag: int | None) -> dict[str, float | int]:
        """The point's fields: rates over the interval since the previous call (which it starts anew)."""
        now = time.monotonic()
        t0, windows, chunks, audio_s = self.last
        dt = max(1e-6, now - t0)
        # rates are floats, counts ints: the same field types as the other stages' pipeline points
        fields: dict[str, float | int] = {
            "windows_per_s": (self.stats.windows - windows) / dt,
            "chunks_per_s": (self.stats.chunks - chunks) / dt,
            "audio_realtime_factor": (self.stats.audio_s - audio_s) / dt,
            "dead_letters": int(sum(self.stats.dead_letters.values())),
            **{name: int(getattr(self.stats, name)) for name in self.COUNTERS},
        }
        if consumer_lag is not None:
            fields["consumer_lag"] = int(consumer_lag)
        self.last = (now, self.stats.windows, self.stats.chunks, self.stats.audio_s)
        return fields

    def tick(self, consumer_lag: int | None) -> None:
        self.reporter.report(self.fields(consumer_lag))


def _consumer_lag(app: Any, topic: str) -> int | None:
    """Records of ``topic`` not yet read by this worker (high-water mark minus position), if known."""
    try:
        consumer = app.consumer
        total = 0
        for tp in consumer.assignment():
            if tp.topic == topic:
                high = consumer.highwater(tp)
                position = consumer._read_offset.get(tp)  # faust keeps the last read offset per partition
                if high is not None and position is not None:
                    total += max(0, int(high) - int(position) - 1)
        return total
    except Exception:  # lag is informative only; a faust internals change must not stop the worker
        return None


def run_worker(settings: Settings, *, web_port: int | None = None, loglevel: str = "info") -> None:
    """Run one worker until SIGINT/SIGTERM (graceful: commits, flushes, leaves the group)."""
    import faust  # deferred: loads faust

    t = settings.kafka.topics
    changelog = changelog_topic(settings)
    ensure_topics(settings, [t.audio_raw, t.features, t.deadletter, changelog], configs={changelog: CHANGELOG_CONFIGS})
    app = create_app(settings, web_port=web_port)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
