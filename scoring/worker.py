"""The scoring worker: features topic in -> InfluxDB points, scores and alert events out.

One loop, single-threaded (kafka-python heartbeats in its own thread)::

    poll -> decode -> micro-batch -> score (scoring.core) -> publish Score/AlertEvent/dead letters
         -> buffer points -> flush to InfluxDB -> commit the offsets whose points are written
         -> between batches: hot reloads, metrics

Delivery guarantee: at-least-once end to end. A batch's offsets are committed
only after (1) every point derived from it is accepted by InfluxDB, (2) its
Score, AlertEvent and dead-letter records are acknowledged by Kafka, and (3) the
touched machines' filter/alert state is saved to Redis. A crash anywhere before
the commit replays the batch; points are idempotent (tags + window end time) and
the filter state is replay-aware (:mod:`scoring.state`), so a replay rewrites the
same points instead of duplicating them. Alert events and Score records may be
published twice after a crash (consumers of those topics should key on
machine + timestamp).

An InfluxDB outage: points accumulate in the bounded buffer while the worker
keeps scoring; when it is full the worker pauses its partitions (back-pressure)
and resumes once writes succeed. Nothing is dropped and nothing is committed
early. Bad records never stop the loop: they go to the dead-letter topic, cut to a size
that always fits (original size and SHA-256 in the headers); a record the broker refuses
permanently (too large) is dead-lettered or, failing that, given up with an ERROR instead of
being resent forever (:meth:`ScoringWorker._resend`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from scoring.batcher import Batch, MicroBatcher
from scoring.core import BatchResult, ScoringCore
from scoring.metrics import ScoringMetrics
from scoring.models import ModelCache, ModelSource, ReloadListener
from scoring.state import StateStore, StateTable
from scoring.status import KnownMachines, status_points
from soundwatch.contracts import ContractError, DeadLetter, FeatureWindow, Reason, machine_key
from soundwatch.errors import ConfigError
from soundwatch.influx import schema as ix
from soundwatch.influx.schema import Point, alert_point, pipeline_point, score_point
from soundwatch.influx.sink import BufferedSink, InfluxBackPressure
from soundwatch.kafka import commit_offsets, ensure_topics, is_permanent, make_consumer, make_producer, send_dead_letter
from soundwatch.liveness import Progress, health_response
from soundwatch.model.device import resolve_device
from soundwatch.model.registry import ModelRegistry
from soundwatch.settings import Settings

log = logging.getLogger(__name__)

STAGE = ix.STAGE_SCORING
_IDLE_POLL_S = 0.2
_CHECK_CURRENT_EVERY_S = 30.0
_REPORT_EVERY_S = 10.0
_CHECK_MODELS_EVERY_S = 5.0  # while no model exists yet (not ready)


@dataclass
class _Item:
    """One consumed record and what decoding made of it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    window: FeatureWindow | None = None
    error: ContractError | None = None


@dataclass
class _Send:
    """One Kafka send of a batch, kept until the broker acknowledges it so a failed one is sent again."""

    future: Any  # a kafka-python future, _FailedSend or _Abandoned
    topic: str
    key: bytes | None
    value: bytes
    letter: DeadLetter | None = None  # set when the record is a dead letter


@dataclass
class _Pending:
    """A processed batch waiting for its points (``seq``) and Kafka sends before its offsets commit."""

    offsets: dict[tuple[str, int], int]
    sends: list[_Send] = field(default_factory=list)
    seq: int | None = None  # None while its points are held back by back-pressure


def decode(record: Any) -> _Item:
    """Decode a consumer record; garbage becomes an item with ``error`` set, never an exception."""
    item = _Item(record.topic, record.partition, record.offset, record.key, record.value)
    try:
        if not record.value:
            raise ContractError(Reason.EMPTY_PAYLOAD, "record has no value")
        item.window = FeatureWindow.decode(record.value)
    except ContractError as exc:
        item.error = exc
    except Exception as exc:  # anything else from a hostile payload is still the payload's fault
        item.error = ContractError(Reason.INVALID_FIELD, f"undecodable feature window: {type(exc).__name__}: {exc}")
    return item


class _FailedSend:
    """Stands in for a producer future when ``send`` itself raised; ``_sends_delivered`` resends it."""

    def __init__(self, exc: Exception) -> None:
        self.exception = exc

    def failed(self) -> bool:
        return True


class _Abandoned:
    """Stands in for a send given up on: even a header-only dead letter was refused permanently."""

    exception = None

    def failed(self) -> bool:
        return False


class ScoringWorker:
    """Consumer-group member scoring ``settings.kafka.topics.features``. ``run()`` blocks until ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: ModelSource | None = None,
        sink: BufferedSink | None = None,
        worker_id: str | None = None,
        report_every_s: float = _REPORT_EVERY_S,
    ) -> None:
        self.settings = settings
        self.report_every_s = report_every_s  # windows/s + lag gauges and the InfluxDB `pipeline` point
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._source = source
        self._sink = sink
        self._stop = threading.Event()
        self.ready = threading.Event()  # set once partitions are assigned (tests and health checks)
        self.metrics = ScoringMetrics()
        self.progress = Progress(settings.scoring.stall_after_s)  # /healthz, /readyz (soundwatch.liveness)
        self._assigned = False
        self._models_available = False
        self._last_models_check = float("-inf")
        self._said_no_models = False
        self._pending: list[_Pending] = []
        self._held: tuple[list[Point], _Pending] | None = None
        self._redis: Any = None
        self._consumer: Any = None
        self._producer: Any = None
        self.windows_scored = 0
        self._seen_errors = self._seen_rejected = 0

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self._stop.set()

    def run(self, on_started: Callable[[ScoringWorker], None] | None = None) -> None:
        self._open()
        if on_started is not None:
            on_started(self)
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                    self.progress.excuse(self._held is not None, "influx")  # back-pressure: InfluxDB away
                    self.progress.excuse(False, "kafka")
                except KafkaError as exc:  # broker trouble: nothing was committed past what is written; retry
                    log.warning("Kafka error in the scoring loop (%s: %s); retrying in 1 s", type(exc).__name__, exc)
                    self.progress.excuse(True, "kafka")  # a broker outage is no stall either
                    self._stop.wait(1.0)
        finally:
            self._shutdown()

    def _open(self) -> None:
        s = self.settings
        self.device = str(resolve_device(s.scoring.device))
        if s.influx.max_buffer_points < 2 * s.scoring.max_batch + 1:
            # a batch yields up to 2 points per window (score + alert); it must fit an empty buffer
            raise ConfigError(
                f"influx.max_buffer_points ({s.influx.max_buffer_points}) must be > 2 x scoring.max_batch "
                f"({s.scoring.max_batch}), or one batch could never be buffered",
                "raise SOUNDWATCH_INFLUX__MAX_BUFFER_POINTS or lower SOUNDWATCH_SCORING__MAX_BATCH",
            )
        import redis  # deferred: loads redis

        self._redis = redis.Redis.from_url(
            s.redis.url, socket_timeout=2.0, socket_connect_timeout=2.0, **s.redis.client_kwargs()
        )
        if self._source is None:
            self._source = ModelRegistry(s.registry_root, s.redis)
        self.models = ModelCache(self._source, self.device)
        self.reloads = ReloadListener(self._redis, s.redis.key_prefix)
        self.reloads.poll()  # subscribe now, so no announcement after start-up is missed
        self.states = StateTable(
            StateStore(self._redis, s.redis.key_prefix, s.scoring.group_id),
            alert_after=s.scoring.alert_after,
            resolve_after=s.scoring.resolve_after,
        )
        self.known = KnownMachines(self._redis, s.redis.key_prefix, s.scoring.group_id)
        self._stale: set[str] = set()
        self.core: ScoringCore[_Item] = ScoringCore(
            self.models, self.states, max_batch=s.scoring.max_batch, default_k=s.scoring.median_k
        )
        self.sink = self._sink or BufferedSink.from_settings(s.influx)
        self.batcher: MicroBatcher[_Item] = MicroBatcher(
            lambda it: it.window.machine_type if it.window else "", s.scoring.max_batch, s.scoring.max_wait_ms
        )
        t = s.kafka.topics
        try:
            ensure_topics(s, [t.alerts, t.scores, t.deadletter])
        except Exception as exc:  # the topics may exist already and the admin API be restricted
            log.warning("could not check output topics: %s", exc)
        self._producer = make_producer(s)
        self._consumer = make_consumer(s, group_id=s.scoring.group_id, max_poll_records=s.scoring.max_batch)
        self._consumer.subscribe([t.features], listener=_Rebalance(self))
        self.metrics.serve(
            s.scoring.metrics_host, s.scoring.metrics_port, lambda path: health_response(path, self.progress)
        )
        self._last_check = self._last_report = time.monotonic()
        self._last_status = float("-inf")  # report the known machines as soon as partitions are assigned
        self._reported_windows = 0
        log.info(
            "scoring worker %s: group %s on %s, device %s", self.worker_id, s.scoring.group_id, t.features, self.device
        )

    def _shutdown(self) -> None:
        log.info(
            "scoring worker %s stopping: flushing %d batched windows and %d buffered points",
            self.worker_id,
            len(self.batcher),
            len(self.sink),
        )
        try:
            if self._held is not None:
                self._relieve(block_s=self.settings.influx.timeout_s)
            if self._held is None and len(self.batcher):
                self._process(self.batcher.drain())
            self.sink.flush(block_s=3 * self.settings.influx.timeout_s)
            self._commit_ready()
            if len(self.sink):
                log.warning(
                    "%d points were not written before shutdown; their records stay uncommitted and will "
                    "be replayed by the next worker",
                    len(self.sink),
                )
        finally:
            for close in (
                lambda: self._consumer.close(autocommit=False),
                self._producer.close,
                self.sink.close,
                self.reloads.close,
                self.metrics.close,
                self._redis.close,
            ):
                try:
                    close()
                except Exception as exc:  # closing must go on for the other clients
                    log.debug("error while closing: %s", exc)

    # ------------------------------------------------------------------ loop
    def _step(self) -> None:
        if self._held is not None:
            self._relieve()
            # Paused, but poll anyway: it keeps the group membership alive, and records fetched just
            # before the pause can still be returned -- their positions have advanced, so they must be
            # kept (in the batcher, processed once the buffer has room), never dropped.
            limit = self.settings.scoring.max_batch
            self._take(self._consumer.poll(timeout_ms=int(_IDLE_POLL_S * 1000), max_records=limit))
        else:
            now = time.monotonic()
            wait = self.batcher.time_left(now) if len(self.batcher) else _IDLE_POLL_S
            self._take(self._consumer.poll(timeout_ms=int(wait * 1000), max_records=max(1, self.batcher.room)))
            if self.batcher.due(time.monotonic()):
                self._process(self.batcher.drain())
        self.sink.flush_due()  # a full batch, or influx.flush_interval_ms after the oldest point
        self._commit_ready()
        self._between_batches()

    def _take(self, records: dict[Any, list[Any]]) -> None:
        now = time.monotonic()
        for recs in records.values():
            for rec in recs:
                self.batcher.add(decode(rec), now)
        self.progress.input(pending=len(self.batcher))

    def _process(self, batch: Batch[_Item]) -> None:
        assert self._held is None, "a batch is processed only when the previous one's points are buffered"
        items = batch.items
        self.progress.handling(len(items))
        result: BatchResult[_Item] = self.core.process([(it.window, it) for it in items if it.window is not None])
        pending = _Pending(self._offsets(items))
        t = self.settings.kafka.topics
        dead = [(it, it.error) for it in items if it.error is not None]
        dead += [(r.context, r.error) for r in result.rejected]
        for it, err in dead:
            assert err is not None
            letter = DeadLetter.from_error(err, STAGE, it.topic, it.partition, it.offset)
            pending.sends.append(self._send(t.deadletter, it.key, it.value or b"", letter))
            self.metrics.dead_letters.labels(err.reason.value).inc()
        points: list[Point] = []
        received_ns = time.time_ns()
        for s in result.scored:
            sc = s.score
            key = machine_key(sc.machine_type, sc.machine_id)
            self.known.observe(f"{sc.machine_type}/{sc.machine_id}", s.context.partition, s.window.end_ns, received_ns)
            pending.sends.append(self._send(t.scores, key, sc.encode()))
            points.append(
                score_point(
                    machine_type=sc.machine_type,
                    machine_id=sc.machine_id,
                    model_version=sc.model_version,
                    end_ns=sc.timestamp_ns,
                    score=sc.score,
                    score_median=sc.score_median,
                    threshold=sc.threshold,
                    anomalous=sc.anomalous,
                )
            )
            self.metrics.windows.labels(sc.machine_type).inc()
            if s.alert is not None:
                a = s.alert
                log.warning("alert %s -> %s: %s", a.previous.value, a.current.value, a.message)
                pending.sends.append(self._send(t.alerts, key, a.encode()))
                points.append(
                    alert_point(
                        machine_type=a.machine_type,
                        machine_id=a.machine_id,
                        state=a.current.value,
                        score_median=a.score_median,
                        threshold=a.threshold,
                        time_ns=a.timestamp_ns,
                    )
                )
                self.metrics.alerts.labels(a.current.value).inc()
        self.windows_scored += len(result.scored)
        self.progress.progressed(len(items))
        self.progress.input(pending=len(self.batcher))
        self.metrics.batch_size.observe(len(items))
        if result.scored:
            self.metrics.inference_seconds.observe(result.inference_s)
        self._pending.append(pending)
        try:
            pending.seq = self.sink.add(points)
        except InfluxBackPressure as exc:
            log.warning("%s; pausing consumption", exc.message)
            self._held = (points, pending)
            self._pause()

    def _send(self, topic: str, key: bytes | None, value: bytes, letter: DeadLetter | None = None) -> _Send:
        """Send and remember what was sent, so a failed send is retried before the batch commits.

        A send that raises (broker unreachable, metadata timeout) is recorded as failed instead of
        propagating: the batch then stays uncommitted until the resend succeeds.
        """
        try:
            if letter is not None:
                fut: Any = send_dead_letter(self._producer, self.settings, key, value, letter)
            else:
                fut = self._producer.send(topic, key=key, value=value)
        except KafkaError as exc:
            log.warning("cannot send to %s now (%s); retried before the commit", topic, exc)
            fut = _FailedSend(exc)
        return _Send(fut, topic, key, value, letter)

    @staticmethod
    def _offsets(items: list[_Item]) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for it in items:
            tp = (it.topic, it.partition)
            out[tp] = max(out.get(tp, -1), it.offset + 1)
        return out

    # ------------------------------------------------------------------ back-pressure
    def _pause(self) -> None:
        self.metrics.paused.set(1)
        self._consumer.pause(*self._consumer.assignment())

    def _relieve(self, block_s: float = 0.0) -> None:
        assert self._held is not None
        points, pending = self._held
        self.sink.flush(block_s=block_s)
        if self.sink.room < len(points):
            return
        pending.seq = self.sink.add(points)
        self._held = None
        self._consumer.resume(*self._consumer.paused())
        self.metrics.paused.set(0)
        log.info("InfluxDB buffer has room again; consumption resumed")

    # ------------------------------------------------------------------ commits
    def _commit_ready(self) -> None:
        done = self.sink.done_upto
        n = 0
        for pending in self._pending:  # FIFO: the buffer writes in order, so ready batches are a prefix
            if pending.seq is None or pending.seq > done:
                break
            n += 1
        if n == 0:
            return
        ready = self._pending[:n]
        if not self._sends_delivered(ready):
            return
        self.known.save_dirty()
        self.states.save_dirty()
        offsets: dict[tuple[str, int], int] = {}
        for p in ready:
            for tp, off in p.offsets.items():
                offsets[tp] = max(offsets.get(tp, -1), off)
        self._commit(offsets)
        del self._pending[:n]

    def _sends_delivered(self, ready: list[_Pending]) -> bool:
        try:
            self._producer.flush(timeout=self.settings.influx.timeout_s)
        except KafkaError as exc:
            log.warning("Kafka did not acknowledge scores/alerts/dead letters yet (%s); commit postponed", exc)
            return False
        delivered = True
        for p in ready:
            for i, sent in enumerate(p.sends):
                if sent.future.failed():
                    p.sends[i] = self._resend(sent.future.exception, sent.topic, sent.key, sent.value, sent.letter)
                    delivered = False  # checked again on the next loop turn
        return delivered

    def _resend(
        self, error: BaseException, topic: str, key: bytes | None, value: bytes, letter: DeadLetter | None
    ) -> _Send:
        """What replaces a failed send: the same record after a transient error (broker away).

        After a permanent one (:func:`~soundwatch.kafka.is_permanent`: the broker will never take
        this record) resending would stall the partition forever. A Score/AlertEvent becomes an
        ``undeliverable`` dead letter; a dead letter is sent again without its value (headers keep
        the reason, size and hash); if even that is refused it is given up, loudly, and the batch
        commits.
        """
        if not is_permanent(error):
            log.warning("resending a record to %s after: %s", topic, error)
            return self._send(topic, key, value, letter)
        t = self.settings.kafka.topics
        if letter is None:
            log.error(
                "%s refused a record permanently (%s); dead-lettering it as %s",
                topic,
                error,
                Reason.UNDELIVERABLE.value,
            )
            letter = DeadLetter(
                Reason.UNDELIVERABLE, f"{topic} refused the record: {type(error).__name__}: {error}", STAGE, topic
            )
            self.metrics.dead_letters.labels(letter.reason.value).inc()
            return self._send(t.deadletter, key, value, letter)
        if letter.delivery_error:
            log.error(
                "the dead-letter topic %s refused even the header-only letter of %s[%s]@%s (%s); given up so "
                "the partition moves on",
                topic,
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                error,
            )
            return _Send(_Abandoned(), topic, key, value, letter)
        log.error(
            "the dead-letter topic %s refused the letter of %s[%s]@%s (%s); sending it without the value",
            topic,
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            error,
        )
        return self._send(topic, key, value, letter.without_value(error))

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        owned = self._consumer.assignment()
        commit = {
            TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
            for (t, p), o in offsets.items()
            if TopicPartition(t, p) in owned
        }
        if not commit:
            return
        try:
            commit_offsets(self._consumer, commit)
        except KafkaError as exc:  # e.g. a rebalance took the partitions: the new owner replays (idempotent)
            log.warning("offset commit failed (%s); those records will be replayed", exc)

    # ------------------------------------------------------------------ rebalance
    def on_revoked(self, revoked: list[Any]) -> None:
        if not revoked:
            return
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        if self._held is not None:
            self._relieve(block_s=self.settings.influx.timeout_s)
        if self._held is None and len(self.batcher):  # while held, batched records wait (never dropped)
            self._process(self.batcher.drain())
        self.sink.flush(block_s=self.settings.influx.timeout_s)
        self._commit_ready()
        self.known.save_dirty()
        self.states.save_dirty()
        self.states.clear()  # another worker may own these machines now; reload from Redis when seen again

    def on_assigned(self, assigned: list[Any]) -> None:
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        if self._held is not None:
            self._consumer.pause(*assigned)
        self._assigned = True
        self._check_models(time.monotonic())
        self.ready.set()

    def _check_models(self, now: float) -> None:
        """Ready (``/readyz``) once assigned and some model exists to score with; checked until one does."""
        if self._models_available or now - self._last_models_check < _CHECK_MODELS_EVERY_S:
            return
        self._last_models_check = now
        try:
            self._models_available = bool(self._source.machine_types()) if self._source is not None else False
        except Exception as exc:  # an unreadable registry: not ready, and say why
            log.warning("cannot list the models in the registry: %s", exc)
        if not self._models_available and not self._said_no_models:
            self._said_no_models = True
            log.warning("no model in the registry yet: /readyz answers 503 until one is trained")
        self.progress.started(self._assigned and self._models_available)

    # ------------------------------------------------------------------ between batches
    def _between_batches(self) -> None:
        for machine_type, version in self.reloads.poll():
            if self.models.reload(machine_type, version):
                self.metrics.model_reloads.inc()
        now = time.monotonic()
        if self._assigned:
            self._check_models(now)
        if now - self._last_check >= _CHECK_CURRENT_EVERY_S:
            self._last_check = now
            for _ in self.models.check_current():
                self.metrics.model_reloads.inc()
        self.metrics.buffer_points.set(len(self.sink))
        stats = self.sink.stats
        if stats.write_errors > self._seen_errors:
            self.metrics.write_errors.inc(stats.write_errors - self._seen_errors)
            self._seen_errors = stats.write_errors
        if stats.rejected > self._seen_rejected:
            self.metrics.rejected_points.inc(stats.rejected - self._seen_rejected)
            self._seen_rejected = stats.rejected
        if now - self._last_report >= self.report_every_s:
            self._report(now)
        if now - self._last_status >= self.settings.scoring.status_interval_s:
            self._last_status = now
            self._report_status()

    def _report(self, now: float) -> None:
        rate = (self.windows_scored - self._reported_windows) / max(1e-9, now - self._last_report)
        self._last_report, self._reported_windows = now, self.windows_scored
        self.metrics.windows_per_s.set(rate)
        lag_total = 0
        for tp in self._consumer.assignment():
            try:
                high = self._consumer.highwater(tp)
                pos = self._consumer.position(tp, timeout_ms=500)
            except Exception as exc:  # lag is best effort; never let it stop scoring
                log.debug("lag of %s unavailable: %s", tp, exc)
                continue
            if high is not None and pos is not None:
                lag = max(0, high - pos)
                lag_total += lag
                self.metrics.consumer_lag.labels(str(tp.partition)).set(lag)
        self.progress.input(lag=lag_total)
        health = pipeline_point(
            STAGE,
            self.worker_id,
            {
                ix.WINDOWS_PER_S: float(rate),
                ix.CONSUMER_LAG: int(lag_total),
                ix.WRITE_ERRORS: int(self.sink.stats.write_errors),
                ix.BUFFER_POINTS: int(len(self.sink)),
            },
        )
        if self._held is None and self.sink.room > 1:
            self.sink.add([health])  # not tied to any offset: a lost health point costs nothing

    def _report_status(self) -> None:
        """One ``machine_status`` point per known machine of the owned partitions (see :mod:`scoring.status`)."""
        topic = self.settings.kafka.topics.features
        owned = {tp.partition for tp in self._consumer.assignment() if tp.topic == topic}
        self.known.refresh()
        self.known.prune(time.time_ns(), self.settings.scoring.forget_after_s)
        machines = self.known.on_partitions(owned)
        if not machines:
            return
        self.states.prefetch(machines)  # alert states of machines not scored since this worker started
        stale_after_s = self.settings.scoring.stale_after_s
        points = status_points(
            machines, now_ns=time.time_ns(), stale_after_s=stale_after_s, alerting=self.states.alerting
        )
        stale = {f"{p.tags[ix.MACHINE_TYPE]}/{p.tags[ix.MACHINE_ID]}" for p in points if p.fields[ix.STALE]}
        for machine in sorted(stale - self._stale):
            log.warning("machine %s is stale: no audio scored for more than %.0f s", machine, stale_after_s)
        for machine in sorted((self._stale - stale) & machines.keys()):
            log.info("machine %s sends audio again", machine)
        self._stale = (self._stale - machines.keys()) | stale
        self.metrics.stale_machines.set(len(stale))
        if self._held is None and self.sink.room > len(points):
            self.sink.add(points)  # not tied to any offset, like the health point


class _Rebalance(ConsumerRebalanceListener):
    """kafka-python rebalance listener forwarding to the worker."""

    def __init__(self, worker: ScoringWorker) -> None:
        self._worker = worker

    def on_partitions_revoked(self, revoked: list[Any]) -> None:
        self._worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: list[Any]) -> None:
        self._worker.on_assigned(assigned)
