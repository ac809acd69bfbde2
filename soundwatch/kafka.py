"""Kafka client factories shared by every stage (kafka-python), created lazily, never at import."""

from __future__ import annotations

import logging
from typing import Any

from soundwatch.contracts import DeadLetter
from soundwatch.errors import MissingDependency, ServiceUnavailable
from soundwatch.settings import Settings

log = logging.getLogger(__name__)


def _require_crc32c() -> None:
    try:
        import crc32c  # noqa: F401
    except ImportError as exc:  # without it kafka-python falls back to pure-Python CRC, ~10x slower
        raise MissingDependency(
            "the crc32c package is missing (kafka-python would be ~10x slower)", "pip install crc32c"
        ) from exc


def _unreachable(settings: Settings, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"cannot reach Kafka at {settings.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}",
        "start the local stack with `soundwatch services up`, or set SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS",
    )


def commit_offsets(consumer: Any, offsets: dict[Any, Any]) -> bool:
    """Commit ``offsets`` (``{TopicPartition: OffsetAndMetadata}``), also from inside a rebalance listener.

    kafka-python >= 3 runs rebalance listeners on its IO thread, where the blocking ``commit`` raises
    ``RuntimeError("Cannot block on net.run() from the IO thread ...")``; a listener that let it escape
    made the group retry the revocation forever (the worker then scored nothing). There the commit is
    handed to the IO loop with ``commit_async``: it is sent before the rejoin, and one that does not land
    only means the next owner replays those records, which every consumer here handles idempotently.
    Returns True when the commit is confirmed, False when it was only scheduled; KafkaError propagates.
    """
    try:
        consumer.commit(offsets)
        return True
    except RuntimeError as exc:
        if "IO thread" not in str(exc):
            raise
    consumer.commit_async(offsets, callback=_log_failed_async_commit)
    return False


def _log_failed_async_commit(offsets: dict[Any, Any], response: Any) -> None:
    if isinstance(response, Exception):
        log.warning("offset commit during a rebalance failed (%s); those records will be replayed", response)


def make_producer(settings: Settings, **overrides: Any):  # -> kafka.KafkaProducer
    """A producer with acks=all and the configured security settings; ``overrides`` win."""
    from kafka import KafkaProducer  # deferred: loads kafka
    from kafka.errors import KafkaError  # deferred: loads kafka

    _require_crc32c()
    kw: dict[str, Any] = {
        **settings.kafka.client_kwargs(),
        "acks": "all",
        "linger_ms": 5,
        "max_request_size": 8 * 1024 * 1024,
    }
    kw.update(overrides)
    try:
        return KafkaProducer(**kw)
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc


def make_consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any):  # -> KafkaConsumer
    """A consumer tuned for the local broker's group-join behaviour (short session timeout)."""
    from kafka import KafkaConsumer  # deferred: loads kafka
    from kafka.errors import KafkaError  # deferred: loads kafka

    _require_crc32c()
    k = settings.kafka
    kw: dict[str, Any] = {
        **k.client_kwargs(),
        "group_id": group_id,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": int(k.session_timeout_s * 1000),
        "heartbeat_interval_ms": int(k.heartbeat_interval_s * 1000),
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
    }
    kw.update(overrides)
    try:
        return KafkaConsumer(*topics, **kw)
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc


def make_admin(settings: Settings):  # -> kafka.KafkaAdminClient
    from kafka import KafkaAdminClient  # deferred: loads kafka
    from kafka.errors import KafkaError  # deferred: loads kafka

    try:
        return KafkaAdminClient(**settings.kafka.client_kwargs(), request_timeout_ms=10_000)
    except KafkaError as exc:
        raise _unreachable(settings, exc) from exc


def ensure_topics(settings: Settings, names: list[str] | None = None, partitions: int | None = None) -> list[str]:
    """Create the pipeline topics that do not exist yet; return the ones created."""
    from kafka.admin import NewTopic  # deferred: loads kafka
    from kafka.errors import TopicAlreadyExistsError  # deferred: loads kafka

    t = settings.kafka.topics
    wanted = names or [t.audio_raw, t.features, t.alerts, t.scores, t.deadletter]
    admin = make_admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in wanted if n not in existing]
        created = []
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, partitions or t.partitions, t.replication_factor)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


# Errors no resend can cure: the record itself is refused (too large, malformed). Retrying them
# forever stalls a partition; senders treat them as permanent (kafka-python and aiokafka names).
PERMANENT_SEND_ERRORS = frozenset(
    {
        "MessageSizeTooLargeError",
        "RecordListTooLargeError",
        "RecordTooLargeError",
        "InvalidRecordError",
        "CorruptRecordError",
        "CorruptRecordException",
    }
)


def is_permanent(error: BaseException | None) -> bool:
    """True when ``error`` from a send means the broker will never take this record."""
    return error is not None and type(error).__name__ in PERMANENT_SEND_ERRORS


def send_dead_letter(producer, settings: Settings, key: bytes | None, value: bytes | None, letter: DeadLetter):
    """Publish the record with the reason in headers; returns the send future.

    The value is cut to :attr:`DeadLetter.MAX_VALUE_BYTES` (original size and SHA-256 in the headers),
    so a letter always fits the producer's request size. Should the broker still refuse it
    (:func:`is_permanent`), resend ``letter.without_value(error)``: headers only, nothing to refuse.
    """
    letter, key, value = letter.fit(key, value)
    log.warning(
        "dead-lettered record from %s[%s]@%s (%d bytes%s): %s: %s",
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        letter.original_size,
        ", truncated" if letter.truncated else "",
        letter.reason.value,
        letter.detail,
    )
    if letter.delivery_error:
        value = b""
    return producer.send(settings.kafka.topics.deadletter, key=key, value=value, headers=letter.headers())
