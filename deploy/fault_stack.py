"""A private pipeline to break on purpose, and the accounting of what came out of it.

Used by `soundwatch bench faults` and the reliability tests. Each :class:`FaultPipeline` has its
OWN Kafka-protocol broker (Tansu, memory storage) on a free port — it may be killed and restarted
without touching the shared one — optionally its own InfluxDB, and otherwise the shared Redis and
InfluxDB under unique names (key prefix, database) that are removed at the end. The feature and
scoring workers are the real ``soundwatch`` commands in separate processes; gateways run
in-process (:func:`ingest.gateway.run_gateway`) so that the accounting knows every block they took.

Accounting (:meth:`FaultPipeline.account`):

* ``chunks_acked``: chunks the gateways' brokers acknowledged (their reports; a run that ends with
  chunks undelivered or dropped says so);
* ``windows_implied``: the windows those chunks must give, computed from the gateways' own record
  of each block: per machine and gateway run, every stretch of consecutive chunks not refused as
  ``conflicting_gateway`` is one segment of ``n_windows(complete_frames(samples))`` windows;
* ``points_distinct``: ``asd_score`` points in InfluxDB (a point is one machine and window end time);
* ``duplicates``: windows published more than once on the features topic (same machine, segment,
  start frame), as the topic holds them at the end;
* ``dead_lettered`` (and ``conflicting``): records on the dead-letter topic;
* ``lost = windows_implied - points_distinct`` — must be 0.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.pipeline import StageProcess
from deploy.private_services import PrivateBroker, PrivateInflux
from ingest.gateway import GatewayReport, run_gateway
from ingest.producer import Block
from ingest.sources.simulator import SimulatorSource, parse_machines
from soundwatch.contracts import AudioChunk, ContractError, DeadLetter, FeatureWindow, Reason
from soundwatch.errors import ServiceUnavailable, SoundwatchError
from soundwatch.influx import schema as ix
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import ensure_topics, make_consumer, make_producer
from soundwatch.settings import Settings, load_settings

TOPIC_NAMES = ("audio_raw", "features", "alerts", "scores", "deadletter")


class RecordedSource:
    """A source wrapper that records the samples of every block per machine, and can be held (``gate``)."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.sample_rate = source.sample_rate
        self.samples: dict[str, list[int]] = {}
        self.gate = threading.Event()
        self.gate.set()

    def describe(self) -> str:
        return f"recorded {self.source.describe()}"

    def blocks(self, stop: threading.Event) -> Generator[Block, None, None]:
        gen = self.source.blocks(stop)
        try:
            for block in gen:
                while not self.gate.is_set():  # held: no audio is taken (the machine is quiet)
                    if stop.wait(0.05):
                        return
                self.samples.setdefault(f"{block.machine_type}/{block.machine_id}", []).append(len(block.samples))
                yield block
        finally:
            gen.close()


@dataclass
class GatewayRun:
    """One run of a gateway (one epoch) in a thread; ``report`` once it stopped."""

    settings: Settings
    gateway_id: str
    source: RecordedSource
    stop_event: threading.Event = field(default_factory=threading.Event)
    report: GatewayReport | None = None
    epoch: int = 0
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> GatewayRun:
        def target() -> None:
            try:
                self.report = run_gateway(
                    self.settings, self.source, gateway_id=self.gateway_id, stop=self.stop_event, flush_timeout_s=60.0
                )
            except BaseException as exc:  # surfaced by stop()
                self.error = exc

        self._thread = threading.Thread(target=target, name=f"gateway-{self.gateway_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> GatewayReport:
        self.stop_event.set()
        assert self._thread is not None
        self._thread.join(timeout=120)
        if self.error is not None:
            raise self.error
        if self.report is None:
            raise RuntimeError(f"gateway {self.gateway_id} did not stop within 120 s")
        state = self.settings.ingest.state_dir / self.gateway_id / "sequences.json"
        self.epoch = int(json.loads(state.read_text())["epoch"])
        return self.report


class FaultPipeline:
    """Private topics, database and names; real feature + scoring worker processes; gateways on demand."""

    def __init__(
        self,
        base: Settings,
        work_dir: Path,
        machines: list[str],
        *,
        influx: PrivateInflux | None = None,
        registry_root: Path | None = None,
    ) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.work_dir = work_dir
        self.machines = machines
        self.broker = PrivateBroker(work_dir / "broker").start()
        try:
            self.influx = influx
            topics = {n: f"faults{self.tag}.{n}" for n in TOPIC_NAMES}
            b = base
            self.settings = load_settings(
                kafka={
                    **b.kafka.model_dump(),
                    "bootstrap_servers": self.broker.bootstrap,
                    "topics": {**topics, "partitions": 4},
                },
                influx={
                    **b.influx.model_dump(),
                    "database": f"faults_{self.tag}",
                    **({"url": influx.url} if influx else {}),
                },
                redis={**b.redis.model_dump(), "key_prefix": f"faults:{self.tag}"},
                ingest={
                    **b.ingest.model_dump(),
                    "state_dir": work_dir / "gateway-state",
                    "spool_dir": work_dir / "gateway-spool",
                    "compression": "none",
                },
                stream={
                    **b.stream.model_dump(),
                    "app_id": f"faults-features-{self.tag}",
                    "data_dir": work_dir / "faust",
                },
                scoring={
                    **b.scoring.model_dump(),
                    "group_id": f"faults-scoring-{self.tag}",
                    "metrics_port": 0,
                    "device": "cpu",
                    "max_batch": 32,
                    "max_wait_ms": 50,
                },
                features=b.features.model_dump(),
                services=b.services.model_dump(),
                registry_root=registry_root or work_dir / "registry",
            )
            self.ensure_topics()
            with InfluxClient(self.settings.influx) as client:
                client.create_database()
            env = self.settings.to_env()
            logs = work_dir / "logs"
            self.features = StageProcess("features", ["features", "run", "--web-port", "0"], logs / "features.log", env)
            self.scoring = StageProcess("scoring", ["score", "run"], logs / "scoring.log", env)
            self.runs: list[GatewayRun] = []
        except BaseException:
            self.broker.kill()
            raise

    # ------------------------------------------------------------------ lifecycle
    def ensure_topics(self) -> None:
        """Create the pipeline topics (what an operator does after a broker lost its data: `services up`)."""
        ensure_topics(self.settings)

    def start_workers(self) -> None:
        self.features.start()
        self.scoring.start()

    def close(self) -> None:
        for run in self.runs:
            run.stop_event.set()
        for stage in (self.features, self.scoring):
            stage.stop(30)
        self.broker.kill()
        with contextlib.suppress(SoundwatchError), InfluxClient(self.settings.influx) as client:
            client.drop_database()
        with contextlib.suppress(Exception):  # tidying only: the names are unique anyway
            import redis  # deferred: loads redis

            client = redis.Redis.from_url(self.settings.redis.url, **self.settings.redis.client_kwargs())
            keys = list(client.scan_iter(f"{self.settings.redis.key_prefix}:*"))
            if keys:
                client.delete(*keys)
            client.close()

    def kill9(self, stage: StageProcess) -> None:
        assert stage.proc is not None
        stage.proc.send_signal(signal.SIGKILL)
        stage.proc.wait(timeout=10)

    # ------------------------------------------------------------------ gateways and records
    def gateway(
        self, machines: list[str], *, gateway_id: str = "gw-faults", state: str = "a", speed: float = 2.0
    ) -> GatewayRun:
        """Start a simulator gateway for ``machines``; ``state`` names its state/spool directories."""
        ing = self.settings.ingest
        s = self.settings.model_copy(
            update={
                "ingest": ing.model_copy(
                    update={"state_dir": ing.state_dir / state, "spool_dir": ing.spool_dir / state}
                )
            }
        )
        sr = self.settings.features.sample_rate
        source = RecordedSource(
            SimulatorSource(parse_machines(",".join(machines)), sr, int(sr * ing.chunk_seconds), speed=speed)
        )
        run = GatewayRun(s, gateway_id, source).start()
        self.runs.append(run)
        return run

    def wipe_gateway_state(self, state: str = "a") -> None:
        ing = self.settings.ingest
        for d in (ing.state_dir / state, ing.spool_dir / state):
            shutil.rmtree(d, ignore_errors=True)

    def inject(self, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
        """Produce raw records (bad ones, huge ones) straight to ``topic``."""
        producer = make_producer(self.settings, max_request_size=32 * 1024 * 1024)
        try:
            for key, value in records:
                producer.send(topic, key=key, value=value)
            producer.flush(30)
        finally:
            producer.close()

    # ------------------------------------------------------------------ waiting
    def points(self) -> dict[str, int]:
        """Distinct ``asd_score`` points per machine (one per machine and window end time)."""
        rows = self._query(
            f'SELECT count("{ix.SCORE}") FROM "{ix.SCORE_MEASUREMENT}" GROUP BY "{ix.MACHINE_TYPE}", "{ix.MACHINE_ID}"'
        )
        return {f"{r['machine_type']}/{r['machine_id']}": int(r["count"]) for r in rows}

    def _query(self, q: str) -> list[dict]:
        with InfluxClient(self.settings.influx) as client:
            return [row | series.tags for series in client.query(q, epoch="ns") for row in series.rows()]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ServiceUnavailable):  # InfluxDB away for a moment (the outage scenario)
                if predicate():
                    return
            time.sleep(0.5)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs in {self.work_dir / 'logs'}")

    def wait_flowing(self, timeout_s: float = 120.0) -> None:
        """Until every gateway machine has points: both workers joined and data flows end to end."""
        self.wait_for(lambda: set(self.points()) >= set(self.machines), timeout_s, "the first points of every machine")

    def wait_quiet(self, quiet_s: float = 4.0, timeout_s: float = 120.0) -> None:
        """Until the point counts stopped changing for ``quiet_s`` (the pipeline drained)."""
        last: dict[str, int] | None = None
        since = time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ServiceUnavailable):
                now = self.points()
                if now != last:
                    last, since = now, time.monotonic()
                elif time.monotonic() - since >= quiet_s:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"points still changing after {timeout_s:.0f} s; logs in {self.work_dir / 'logs'}")

    # ------------------------------------------------------------------ accounting
    def read(self, topic: str) -> list[Any]:
        """Every record of ``topic`` on the private broker now."""
        from kafka import TopicPartition  # deferred: loads kafka

        consumer = make_consumer(self.settings, group_id=None)
        try:
            parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            if not parts:
                return []
            ends = consumer.end_offsets(parts)
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            out: list[Any] = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in parts):
                for records in consumer.poll(timeout_ms=500).values():
                    out.extend(records)
            return out
        finally:
            consumer.close()

    def account(self) -> dict[str, Any]:
        """The scenario's figures (see the module docstring); call after the gateways stopped and it drained."""
        from soundwatch.audio.logmel import complete_frames  # deferred: loads numba, scipy
        from soundwatch.audio.windows import n_windows  # deferred: loads numba, scipy

        params = self.settings.features
        letters = self.read(self.settings.kafka.topics.deadletter)
        refused: set[tuple[str, str, int, int]] = set()  # (machine, gateway, epoch, sequence)
        reasons: Counter[str] = Counter()
        for rec in letters:
            letter = DeadLetter.from_headers(rec.headers)
            reasons[letter.reason.value] += 1
            if letter.reason is Reason.CONFLICTING_GATEWAY:
                with contextlib.suppress(ContractError):
                    c = AudioChunk.decode(rec.value)
                    refused.add((f"{c.machine_type}/{c.machine_id}", c.gateway_id, c.epoch, c.sequence))
        implied: Counter[str] = Counter()
        acked = 0
        incomplete = []
        for run in self.runs:
            report = run.report
            assert report is not None, "account() before the gateways stopped"
            acked += report.chunks_sent
            if report.undelivered_chunks or report.dropped_chunks:
                incomplete.append(
                    f"{run.gateway_id}: {report.undelivered_chunks} undelivered, {report.dropped_chunks} dropped"
                )
            for machine, sizes in run.source.samples.items():
                stretch = 0
                for seq, n in enumerate(sizes):  # fresh state: the i-th block of a run is sequence i
                    if (machine, run.gateway_id, run.epoch, seq) in refused:
                        implied[machine] += n_windows(complete_frames(stretch, params), params)
                        stretch = 0
                    else:
                        stretch += n
                implied[machine] += n_windows(complete_frames(stretch, params), params)
        windows = Counter()
        for rec in self.read(self.settings.kafka.topics.features):
            with contextlib.suppress(ContractError):
                w = FeatureWindow.decode(rec.value)
                windows[(w.machine_type, w.machine_id, w.segment, w.start_frame)] += 1
        points = self.points()
        lost_by_machine = {m: implied[m] - points.get(m, 0) for m in sorted(implied)}
        return {
            "chunks_acked": acked,
            "windows_implied": sum(implied.values()),
            "points_distinct": sum(points.values()),
            "duplicates": sum(n - 1 for n in windows.values()),
            "dead_lettered": len(letters),
            "conflicting": reasons.get(Reason.CONFLICTING_GATEWAY.value, 0),
            "dead_letter_reasons": dict(sorted(reasons.items())),
            "lost": sum(lost_by_machine.values()),
            "lost_by_machine": lost_by_machine,
            "reported_by_features": self._features_health(),
            **({"incomplete_gateway_runs": incomplete} if incomplete else {}),
        }

    def _features_health(self) -> dict[str, int]:
        """What the feature workers reported in their ``pipeline`` points: counters since each started (one
        series per worker process), summed over workers; a point every 10 s, so the last counts may be missing."""
        fields = (ix.CHUNKS_SKIPPED, ix.CHUNKS_CONFLICTING, ix.TOPIC_RESYNCS)
        try:
            selected = ", ".join(f'max("{f}") AS "{f}"' for f in fields)
            rows = self._query(
                f'SELECT {selected} FROM "{ix.PIPELINE_MEASUREMENT}" '
                f'WHERE "{ix.STAGE}" = \'{ix.STAGE_FEATURES}\' GROUP BY "{ix.WORKER}"'
            )
        except SoundwatchError:
            return {}
        return {f: sum(int(r.get(f) or 0) for r in rows) for f in fields}
