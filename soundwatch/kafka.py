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


AUDIO_BYTES_PER_S = 32_000  # one machine: 16 kHz x 16-bit mono PCM (the gateways' default wire format)
PARTITION_SKEW = 1.5  # murmur2 spreads machine keys unevenly: the fullest partition holds ~1.5x the mean
_MS = 1000


def audio_raw_retention_bytes(settings: Settings) -> int:
    """``retention.bytes`` of one ``audio.raw`` partition (Kafka applies it per partition).

    ``ceil(machines / partitions) x 1.5 (key skew) x 32,000 B/s x retention_s``. Time is the limit
    that normally acts; the byte cap keeps a burst (more machines than configured, a gateway
    flushing its spool) from filling the broker's disk. Example, the README's plant: 1,000 machines
    on 24 partitions, 1 day: 42 x 1.5 x 32,000 x 86,400 = 174 GB per partition, 4.2 TB for the topic
    (the audio itself: 1,000 x 32 kB/s = 32 MB/s = 2.8 TB/day, times the replication factor on disk).
    """
    t = settings.kafka.topics
    per_partition = -(-t.machines // t.partitions)
    return int(per_partition * PARTITION_SKEW * AUDIO_BYTES_PER_S * t.audio_raw_retention_s)


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """The configs soundwatch creates topic ``name`` with ({} for a topic it does not own).

    Every pipeline topic is an event log (``cleanup.policy=delete``) with a time retention; the
    state that must survive lives in the feature workers' table changelog, which is compacted
    (``features.app.CHANGELOG_CONFIGS``), and in Redis (scoring). Alerts and scores are not
    compacted: a CMMS needs every state change, not only each machine's last one.
    """
    t = settings.kafka.topics
    if name == t.audio_raw:
        return {
            "cleanup.policy": "delete",
            "retention.ms": str(int(t.audio_raw_retention_s * _MS)),
            "retention.bytes": str(audio_raw_retention_bytes(settings)),
        }
    retention_s = {
        t.features: t.features_retention_s,
        t.scores: t.scores_retention_s,
        t.alerts: t.alerts_retention_s,
        t.deadletter: t.deadletter_retention_s,
    }.get(name)
    if retention_s is None:
        return {}
    return {"cleanup.policy": "delete", "retention.ms": str(int(retention_s * _MS))}


def ensure_topics(
    settings: Settings,
    names: list[str] | None = None,
    partitions: int | None = None,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create the pipeline topics that do not exist yet, with :func:`topic_configs` (``configs`` adds
    topics' own); return the ones created. Existing topics are left as they are.

    Note: the local broker (Tansu) accepts topic configs and ignores them (``describe_configs``
    returns none); a Kafka cluster applies them.
    """
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
            topic_config = {**topic_configs(settings, name), **(configs or {}).get(name, {})}
            try:
                admin.create_topics(
                    [NewTopic(name, partitions or t.partitions, t.replication_factor, topic_configs=topic_config)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics %s", ", ".join(created))
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
