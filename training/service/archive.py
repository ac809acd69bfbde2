"""The audio archive: every machine's raw audio as rolling FLAC segments, with an index.

Retraining needs the audio people confirmed as normal *after the fact* ("last Tuesday 14:00-18:00
was fine"), so the raw stream is kept for a while. :class:`ArchiveConsumer` reads ``audio.raw``
with its own consumer group and hands chunks to :class:`ArchiveWriter`, which keeps one open
segment per machine in memory and writes it as one FLAC file when it reaches ``segment_seconds``
of audio, when a sequence gap or sample-rate change interrupts it, when the machine has been
silent for ``idle_flush_s``, or on shutdown/rebalance.

Durability and delivery (at-least-once, duplicates ignored):

* a segment is written to a temporary file, fsynced, renamed, the directory fsynced, and only
  then inserted into the SQLite index (WAL, ``synchronous=FULL``);
* Kafka offsets are committed only up to the oldest record still held in an *open* segment of
  that partition, so a crash replays exactly the audio that is not durable yet;
* on replay, a chunk whose sequence is not above the machine's last archived sequence *and*
  whose audio time does not lie after the last archived audio is a duplicate and is skipped
  (a gateway whose sequence restarted from 0 sends audio that is later in time: that is kept).

FLAC stores integers: PCM16 chunks round-trip bit-exactly; float32 chunks are quantised to PCM16.

Retention: after each flush, segments whose audio ended more than ``max_age_s`` ago are deleted,
then the oldest segments until the archive holds at most ``max_bytes``.

:class:`ArchiveReader` answers ``read_range(machine, t_from, t_to)`` from the index.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soundwatch.contracts import AudioChunk, ContractError, DeadLetter
from soundwatch.errors import BadInput, ServiceUnavailable
from soundwatch.kafka import commit_offsets, make_consumer, make_producer, send_dead_letter
from soundwatch.settings import ArchiveSettings, Settings

log = logging.getLogger(__name__)

NS = 1_000_000_000


# ---------------------------------------------------------------------------- index
@dataclass(frozen=True)
class Segment:
    """One archived FLAC file: a contiguous run of one machine's chunks."""

    machine_type: str
    machine_id: str
    start_ns: int
    end_ns: int
    first_sequence: int
    last_sequence: int
    sample_rate: int
    n_samples: int
    path: str  # relative to the archive root
    n_bytes: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_type TEXT NOT NULL, machine_id TEXT NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    first_sequence INTEGER NOT NULL, last_sequence INTEGER NOT NULL,
    sample_rate INTEGER NOT NULL, n_samples INTEGER NOT NULL,
    path TEXT NOT NULL UNIQUE, n_bytes INTEGER NOT NULL, created_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_machine_time ON segments (machine_type, machine_id, start_ns);
CREATE INDEX IF NOT EXISTS segments_end ON segments (end_ns);
"""
_COLUMNS = (
    "machine_type, machine_id, start_ns, end_ns, first_sequence, last_sequence, sample_rate, n_samples, path, n_bytes"
)


class ArchiveIndex:
    """SQLite index of segments (``<root>/index.sqlite3``); safe to read while the writer runs (WAL)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "index.sqlite3"
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add(self, seg: Segment) -> None:
        with self._lock, self._db:
            self._db.execute(
                f"INSERT INTO segments ({_COLUMNS}, created_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    seg.machine_type,
                    seg.machine_id,
                    seg.start_ns,
                    seg.end_ns,
                    seg.first_sequence,
                    seg.last_sequence,
                    seg.sample_rate,
                    seg.n_samples,
                    seg.path,
                    seg.n_bytes,
                    time.time_ns(),
                ),
            )

    def segments(
        self, machine_type: str, machine_id: str, t_from_ns: int | None = None, t_to_ns: int | None = None
    ) -> list[Segment]:
        """Segments of one machine overlapping ``[t_from_ns, t_to_ns)``, in time order."""
        lo = -(2**62) if t_from_ns is None else t_from_ns
        hi = 2**62 if t_to_ns is None else t_to_ns
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM segments WHERE machine_type=? AND machine_id=? AND end_ns>? AND start_ns<? "
                "ORDER BY start_ns, first_sequence",
                (machine_type, machine_id, lo, hi),
            ).fetchall()
        return [Segment(*r) for r in rows]

    def machines(self) -> list[tuple[str, str]]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT machine_type, machine_id FROM segments ORDER BY 1, 2").fetchall()
        return [(str(a), str(b)) for a, b in rows]

    def last(self, machine_type: str, machine_id: str) -> Segment | None:
        """The machine's most recent segment (by audio time)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM segments WHERE machine_type=? AND machine_id=? ORDER BY end_ns DESC LIMIT 1",
                (machine_type, machine_id),
            ).fetchone()
        return Segment(*row) if row else None

    def total_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(n_bytes), 0) FROM segments").fetchone()[0])

    def expire(self, *, older_than_ns: int, max_bytes: int) -> list[Segment]:
        """Remove index rows by age, then oldest-first down to ``max_bytes``; returns what was removed."""
        removed: list[Segment] = []
        with self._lock, self._db:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM segments WHERE end_ns<?", (older_than_ns,)).fetchall()
            removed += [Segment(*r) for r in rows]
            self._db.execute("DELETE FROM segments WHERE end_ns<?", (older_than_ns,))
            total = int(self._db.execute("SELECT COALESCE(SUM(n_bytes), 0) FROM segments").fetchone()[0])
            if total > max_bytes:
                for row in self._db.execute(f"SELECT {_COLUMNS} FROM segments ORDER BY end_ns").fetchall():
                    if total <= max_bytes:
                        break
                    seg = Segment(*row)
                    self._db.execute("DELETE FROM segments WHERE path=?", (seg.path,))
                    total -= seg.n_bytes
                    removed.append(seg)
        return removed


# ---------------------------------------------------------------------------- writer
@dataclass
class _Open:
    """A machine's segment being filled in memory."""

    machine_type: str
    machine_id: str
    sample_rate: int
    start_ns: int
    first_sequence: int
    last_sequence: int
    blocks: list[np.ndarray] = field(default_factory=list)
    n_samples: int = 0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition) -> lowest offset held
    touched: float = 0.0  # monotonic time of the last chunk

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.n_samples * NS // self.sample_rate


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pcm16(chunk: AudioChunk) -> np.ndarray:
    if chunk.samples.dtype == np.int16:
        return chunk.samples
    return np.clip(np.round(chunk.samples * 32768.0), -32768, 32767).astype(np.int16)


class ArchiveWriter:
    """Per-machine rolling segments. Not thread-safe: one consumer loop owns it.

    ``add`` returns False for a duplicate (already archived or already held) chunk.
    """

    def __init__(self, config: ArchiveSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.root = Path(config.root)
        self.index = ArchiveIndex(self.root)
        self._open: dict[tuple[str, str], _Open] = {}
        self._last: dict[tuple[str, str], tuple[int, int]] = {}  # machine -> (last sequence, end_ns) archived/held
        self._clock = clock
        self.segments_written = 0
        self.duplicates = 0

    def close(self) -> None:
        self.flush_all()
        self.index.close()

    # -- intake ------------------------------------------------------------------------------
    def add(self, chunk: AudioChunk, topic: str = "", partition: int = -1, offset: int = -1) -> bool:
        key = (chunk.machine_type, chunk.machine_id)
        last = self._last_of(key)
        if last is not None:
            last_seq, last_end = last
            if chunk.sequence <= last_seq and chunk.start_ns < last_end:
                self.duplicates += 1
                return False
        seg = self._open.get(key)
        if seg is not None and (chunk.sequence != seg.last_sequence + 1 or chunk.sample_rate != seg.sample_rate):
            self._flush(key)  # a gap, a sequence restart or a rate change starts a new segment
            seg = None
        if seg is None:
            seg = _Open(
                chunk.machine_type, chunk.machine_id, chunk.sample_rate, chunk.start_ns, chunk.sequence, chunk.sequence
            )
            self._open[key] = seg
        seg.blocks.append(_pcm16(chunk))
        seg.n_samples += chunk.n_samples
        seg.last_sequence = chunk.sequence
        seg.touched = self._clock()
        if offset >= 0:
            tp = (topic, partition)
            seg.offsets[tp] = min(seg.offsets.get(tp, offset), offset)
        self._last[key] = (chunk.sequence, seg.end_ns)
        if seg.n_samples >= self.config.segment_seconds * seg.sample_rate:
            self._flush(key)
        return True

    def _last_of(self, key: tuple[str, str]) -> tuple[int, int] | None:
        if key not in self._last:
            seg = self.index.last(*key)
            if seg is not None:
                self._last[key] = (seg.last_sequence, seg.end_ns)
        return self._last.get(key)

    # -- flushing ----------------------------------------------------------------------------
    def flush_idle(self) -> int:
        """Flush segments that got no chunk for ``idle_flush_s``; returns how many were written."""
        now = self._clock()
        due = [k for k, s in self._open.items() if now - s.touched >= self.config.idle_flush_s]
        for key in due:
            self._flush(key)
        return len(due)

    def flush_all(self) -> int:
        keys = list(self._open)
        for key in keys:
            self._flush(key)
        return len(keys)

    def held_offsets(self) -> dict[tuple[str, int], int]:
        """Lowest Kafka offset still held in memory per (topic, partition): commits must stay below it."""
        out: dict[tuple[str, int], int] = {}
        for seg in self._open.values():
            for tp, off in seg.offsets.items():
                out[tp] = min(out.get(tp, off), off)
        return out

    def _flush(self, key: tuple[str, str]) -> None:
        seg = self._open.pop(key, None)
        if seg is None or seg.n_samples == 0:
            return
        import soundfile as sf  # deferred: loads soundfile

        day = time.strftime("%Y%m%d", time.gmtime(seg.start_ns / NS))
        rel = Path(seg.machine_type) / seg.machine_id / day / f"{seg.start_ns}-{seg.first_sequence}.flac"
        final = self.root / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        audio = np.concatenate(seg.blocks)
        with open(tmp, "wb") as fh:
            sf.write(fh, audio, seg.sample_rate, format="FLAC", subtype="PCM_16")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        self.index.add(
            Segment(
                seg.machine_type,
                seg.machine_id,
                seg.start_ns,
                seg.end_ns,
                seg.first_sequence,
                seg.last_sequence,
                seg.sample_rate,
                seg.n_samples,
                rel.as_posix(),
                final.stat().st_size,
            )
        )
        self.segments_written += 1
        log.debug(
            "archived %s/%s seq %d-%d (%.1f s) -> %s",
            seg.machine_type,
            seg.machine_id,
            seg.first_sequence,
            seg.last_sequence,
            seg.n_samples / seg.sample_rate,
            rel,
        )
        self.enforce_retention()

    def enforce_retention(self) -> int:
        cutoff = time.time_ns() - int(self.config.max_age_s * NS)
        removed = self.index.expire(older_than_ns=cutoff, max_bytes=self.config.max_bytes)
        for seg in removed:
            with suppress(FileNotFoundError):
                (self.root / seg.path).unlink()
        if removed:
            log.info("retention removed %d archived segment(s)", len(removed))
        return len(removed)


# ---------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class AudioPiece:
    """Contiguous archived audio of one machine: float32 in [-1, 1] starting at ``start_ns``."""

    machine_type: str
    machine_id: str
    start_ns: int
    sample_rate: int
    samples: np.ndarray

    @property
    def end_ns(self) -> int:
        return self.start_ns + self.samples.size * NS // self.sample_rate

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate


class ArchiveReader:
    """Reads archived audio back by machine and time range."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not (self.root / "index.sqlite3").is_file():
            raise BadInput(
                f"no audio archive at {self.root} (index.sqlite3 missing)",
                "run `soundwatch archive run` so the archive consumer records audio.raw, "
                "or point SOUNDWATCH_ARCHIVE__ROOT at the archive",
            )
        self.index = ArchiveIndex(self.root)

    def close(self) -> None:
        self.index.close()

    def machines(self) -> list[tuple[str, str]]:
        return self.index.machines()

    def resolve(self, machine: str) -> tuple[str, str]:
        """``"type/id"`` or a bare ``"id"`` that exactly one archived machine type has."""
        if "/" in machine:
            mtype, mid = machine.split("/", 1)
            return mtype, mid
        hits = [m for m in self.machines() if m[1] == machine]
        if len(hits) == 1:
            return hits[0]
        known = ", ".join(f"{t}/{i}" for t, i in self.machines()) or "none archived yet"
        if not hits:
            raise BadInput(f"machine {machine!r} has no archived audio", f"known machines: {known}")
        raise BadInput(
            f"machine id {machine!r} exists for several types",
            "write it as TYPE/ID, one of: " + ", ".join(f"{t}/{i}" for t, i in hits),
        )

    def read_range(self, machine_type: str, machine_id: str, t_from_ns: int, t_to_ns: int) -> list[AudioPiece]:
        """Archived audio of one machine within ``[t_from_ns, t_to_ns)``, as contiguous pieces.

        Segments that follow each other without a sequence gap are joined into one piece; a gap
        (missing chunks, a gateway restart) separates pieces, so windows never straddle a hole.
        """
        import soundfile as sf  # deferred: loads soundfile

        pieces: list[AudioPiece] = []
        run: list[np.ndarray] = []
        run_start = run_rate = 0
        prev: Segment | None = None

        def close_run() -> None:
            if run:
                pieces.append(AudioPiece(machine_type, machine_id, run_start, run_rate, np.concatenate(run)))
                run.clear()

        for seg in self.index.segments(machine_type, machine_id, t_from_ns, t_to_ns):
            path = self.root / seg.path
            try:
                audio, sr = sf.read(path, dtype="float32", always_2d=False)
            except (OSError, RuntimeError, sf.LibsndfileError) as exc:
                log.warning("skipping unreadable archived segment %s: %s", path, exc)
                close_run()
                prev = None
                continue
            a = max(0, (t_from_ns - seg.start_ns) * sr // NS)
            b = min(audio.size, -(-(t_to_ns - seg.start_ns) * sr // NS))
            if b <= a:
                continue
            start = seg.start_ns + a * NS // sr
            contiguous = prev is not None and a == 0 and seg.first_sequence == prev.last_sequence + 1 and sr == run_rate
            if not contiguous:
                close_run()
                run_start, run_rate = start, sr
            run.append(np.asarray(audio[a:b], dtype=np.float32))
            prev = seg if b == audio.size else None  # a piece cut short at the end cannot continue
        close_run()
        return pieces


# ---------------------------------------------------------------------------- consumer
class ArchiveConsumer:
    """``audio.raw`` -> :class:`ArchiveWriter`, committing offsets only below audio held in memory."""

    STAGE = "archive"

    def __init__(self, settings: Settings, config: ArchiveSettings | None = None) -> None:
        self.settings = settings
        self.config = config or settings.archive
        self.writer = ArchiveWriter(self.config)
        self._stop = threading.Event()
        self._consumer: Any = None  # kafka.KafkaConsumer once run() starts
        self._producer: Any = None
        self._consumed: dict[tuple[str, int], int] = {}  # next offset after the last record handed to the writer
        self._committed: dict[tuple[str, int], int] = {}
        self.chunks = 0
        self.dead_letters = 0

    def stop(self) -> None:
        self._stop.set()

    def run(self, *, max_seconds: float | None = None, install_signals: bool = False) -> None:
        """Consume until :meth:`stop` (or SIGTERM/SIGINT with ``install_signals``, or ``max_seconds``)."""
        from kafka import ConsumerRebalanceListener  # deferred: loads kafka
        from kafka.errors import KafkaError  # deferred: loads kafka

        outer = self

        class _Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):  # noqa: ANN001
                # whatever we hold for partitions we lose would be replayed elsewhere: make it durable now
                outer.writer.flush_all()
                outer._commit()

            def on_partitions_assigned(self, assigned):  # noqa: ANN001
                pass

        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        topic = self.settings.kafka.topics.audio_raw
        self._consumer = make_consumer(self.settings, group_id=self.config.group_id, max_poll_records=200)
        self._consumer.subscribe([topic], listener=_Listener())
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        log.info(
            "archiving %s into %s (group %s, %.0f s segments)",
            topic,
            self.config.root,
            self.config.group_id,
            self.config.segment_seconds,
        )
        try:
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                try:
                    batch = self._consumer.poll(timeout_ms=500)
                except KafkaError as exc:  # a broker outage must not end the archive: retry
                    log.warning("poll failed (%s); retrying in 2 s", exc)
                    self._stop.wait(2.0)
                    continue
                for tp, records in batch.items():
                    for rec in records:
                        self._handle(tp.topic, tp.partition, rec)
                self.writer.flush_idle()
                self._commit()
        finally:
            self.writer.flush_all()
            self._commit()
            self._consumer.close()
            if self._producer is not None:
                self._producer.flush(10)
                self._producer.close()
            self.writer.index.close()

    def _handle(self, topic: str, partition: int, rec) -> None:  # noqa: ANN001
        tp = (topic, partition)
        try:
            chunk = AudioChunk.decode(rec.value)
        except ContractError as exc:
            self._dead_letter(rec, DeadLetter.from_error(exc, self.STAGE, topic, partition, rec.offset))
        else:
            try:
                if self.writer.add(chunk, topic, partition, rec.offset):
                    self.chunks += 1
            except OSError as exc:  # disk full / permissions: do not commit past it; stop loudly
                self._stop.set()
                raise ServiceUnavailable(
                    f"cannot write the archive under {self.config.root}: {exc}",
                    "free disk space or fix permissions; the chunk will be replayed",
                ) from exc
        self._consumed[tp] = rec.offset + 1

    def _dead_letter(self, rec, letter: DeadLetter) -> None:  # noqa: ANN001
        if self._producer is None:
            self._producer = make_producer(self.settings)
        send_dead_letter(self._producer, self.settings, rec.key, rec.value, letter)
        self.dead_letters += 1

    def _commit(self) -> None:
        from kafka import TopicPartition  # deferred: loads kafka
        from kafka.errors import KafkaError  # deferred: loads kafka
        from kafka.structs import OffsetAndMetadata  # deferred: loads kafka

        if self._consumer is None:
            return
        if self._producer is not None:
            self._producer.flush(10)  # dead letters must be durable before their offsets are committed
        held = self.writer.held_offsets()
        offsets = {}
        for tp, nxt in self._consumed.items():
            safe = min(nxt, held.get(tp, nxt))
            if safe > self._committed.get(tp, -1):
                offsets[TopicPartition(*tp)] = OffsetAndMetadata(safe, "", -1)
        if not offsets:
            return
        try:
            confirmed = commit_offsets(self._consumer, offsets)
        except KafkaError as exc:  # e.g. during a rebalance: the next round commits again
            log.warning("offset commit failed (%s); will retry", exc)
            return
        if not confirmed:  # scheduled from inside a rebalance: not known to have landed, so not recorded
            return
        for tp, om in offsets.items():
            self._committed[(tp.topic, tp.partition)] = om.offset


@contextmanager
def running_archive(settings: Settings, config: ArchiveSettings) -> Iterator[ArchiveConsumer]:
    """Run an :class:`ArchiveConsumer` in a background thread for the duration of a ``with`` block."""
    consumer = ArchiveConsumer(settings, config)
    errors: list[BaseException] = []

    def target() -> None:
        try:
            consumer.run()
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)

    thread = threading.Thread(target=target, name="archive", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        consumer.stop()
        thread.join(30)
        if errors:
            raise errors[0]


__all__ = [
    "ArchiveSettings",
    "ArchiveConsumer",
    "ArchiveIndex",
    "ArchiveReader",
    "ArchiveWriter",
    "AudioPiece",
    "Segment",
    "running_archive",
]
