"""Integration: a broker outage and gateway restarts lose nothing and keep order and sequence numbers.

The outage test runs its OWN Tansu broker on a free port and kills it; the shared broker on
9092 is never touched.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pytest
from ingest_helpers import (
    FirstBlocks,
    Recorded,
    by_machine,
    read_chunks,
    wait_for_records,
)

from deploy.private_services import PrivateBroker, free_port
from ingest.gateway import StatusLine, run_gateway
from ingest.sources.simulator import SimulatorSource, parse_machines
from ingest.spool import Spool
from soundwatch.influx.client import InfluxClient
from soundwatch.kafka import ensure_topics
from soundwatch.settings import Settings

pytestmark = pytest.mark.integration
SR = 16_000
CHUNK = SR // 4  # 0.25 s chunks keep the tests short


def _sim(machines: str = "fan/id_00,pump/id_02,valve/id_04", speed: float = 0) -> SimulatorSource:
    return SimulatorSource(parse_machines(machines), SR, CHUNK, speed=speed)


def _dead_broker(settings: Settings) -> Settings:
    """Settings whose broker address has nothing listening (a broker that is down)."""
    return settings.model_copy(
        update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})}
    )


def test_broker_killed_mid_stream_every_later_chunk_arrives_in_order(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    broker = PrivateBroker(tmp_path)
    broker.start()
    settings = broker.settings(isolated_settings)
    topic = settings.kafka.topics.audio_raw
    try:
        ensure_topics(settings, [topic], 4)
        stop = threading.Event()
        result: dict = {}
        source = Recorded(_sim(speed=8.0))  # 3 machines x 32 chunks/s of audio time
        worker = threading.Thread(
            target=lambda: result.update(
                report=run_gateway(settings, source, gateway_id="gw-outage", stop=stop, flush_timeout_s=40.0)
            )
        )
        worker.start()
        wait_for_records(settings, topic, 30)  # the gateway is streaming to the broker
        outage_started_ns = time.time_ns()
        broker.kill()
        time.sleep(4.0)  # the gateway keeps producing into the spool
        broker.start()  # comes back empty (memory storage)
        ensure_topics(settings, [topic], 4)
        time.sleep(2.0)
        stop.set()
        worker.join(timeout=90)
        assert not worker.is_alive()
        report = result["report"]
        assert report.undelivered_chunks == 0 and report.dropped_chunks == 0
        assert report.outages >= 1
        held = wait_for_records(settings, topic, 1)  # everything is acknowledged: the end offsets are final
        arrived = by_machine(read_chunks(settings, topic, held, timeout_s=30))
        assert set(arrived) == {"fan/id_00", "pump/id_02", "valve/id_04"}
        for machine, chunks in arrived.items():
            seqs = [c.sequence for c in chunks]
            handed = source.handed_ns[machine]  # sequence i = the machine's i-th block (fresh state dir)
            # what the restarted broker holds is one contiguous run ending at the last chunk produced
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{machine}: gap, duplicate or reorder"
            assert seqs[-1] == len(handed) - 1
            # every chunk produced once the outage began is there (earlier ones may have died with the broker)
            first_after_kill = next(i for i, ns in enumerate(handed) if ns >= outage_started_ns)
            assert seqs[0] <= first_after_kill, f"{machine}: chunks {seqs[0]}..{first_after_kill} were lost"
            assert len(handed) - first_after_kill >= 4 * 32 * 0.5  # the outage really spanned seconds of chunks
    finally:
        broker.kill()


def test_sequence_numbers_and_spooled_chunks_survive_a_gateway_restart(
    isolated_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    topic = isolated_settings.kafka.topics.audio_raw
    # run 1: the broker is down the whole time: 12 chunks wait in the spool when the gateway stops
    down = _dead_broker(isolated_settings)
    r1 = run_gateway(down, FirstBlocks(_sim(), 12), gateway_id="gw-restart", flush_timeout_s=0.5)
    assert r1.chunks_in == 12 and r1.chunks_sent == 0 and r1.undelivered_chunks == 12
    # run 2: broker up; the spooled chunks go first, then new ones, numbers continue
    r2 = run_gateway(isolated_settings, FirstBlocks(_sim(), 9), gateway_id="gw-restart")
    assert r2.chunks_sent == 21 and r2.undelivered_chunks == 0
    # run 3: a clean restart continues without a gap
    r3 = run_gateway(isolated_settings, FirstBlocks(_sim(), 6), gateway_id="gw-restart")
    assert r3.undelivered_chunks == 0
    arrived = by_machine(read_chunks(isolated_settings, topic, 27))
    assert sum(len(v) for v in arrived.values()) == 27
    for machine, chunks in arrived.items():
        assert [c.sequence for c in chunks] == list(range(9)), machine
        assert len({c.origin_ns for c in chunks}) == 9


def test_spool_limit_drops_oldest_and_says_so(isolated_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    limit = 64 * 1024  # room for about seven 8 KB chunks
    settings = _dead_broker(isolated_settings)
    settings = settings.model_copy(update={"ingest": settings.ingest.model_copy(update={"spool_max_bytes": limit})})
    out = io.StringIO()
    with caplog.at_level(logging.ERROR, logger="ingest.spool"):
        report = run_gateway(
            settings,
            FirstBlocks(_sim("fan/id_00,pump/id_00"), 40),
            gateway_id="gw-full",
            status=StatusLine(out),
            flush_timeout_s=0.2,
        )
    assert report.dropped_chunks > 0
    assert report.dropped_chunks + report.undelivered_chunks == 40
    assert set(report.dropped_by_machine) == {"fan/id_00", "pump/id_00"}
    assert report.dropped_bytes > report.dropped_chunks * CHUNK * 2
    assert any("SPOOL FULL" in r.message and "dropped" in r.message for r in caplog.records)
    assert "SPOOL FULL: DROPPED" in out.getvalue()
    assert "connecting" in out.getvalue() or "OFFLINE" in out.getvalue()


def test_a_killed_gateway_loses_nothing_it_spooled_and_never_reuses_a_number(isolated_settings: Settings) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    dead = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS": dead,
        "SOUNDWATCH_INGEST__STATE_DIR": str(isolated_settings.ingest.state_dir),
        "SOUNDWATCH_INGEST__SPOOL_DIR": str(isolated_settings.ingest.spool_dir),
    }
    # run 1: broker down, chunks go to the spool; then kill -9 (no flush, no clean close)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingest.cli",
            "gateway",
            "--source",
            "sim",
            "--machines",
            "fan/id_00,pump/id_00",
            "--speed",
            "8",
            "--gateway-id",
            "gw-crash",
            "--topic",
            isolated_settings.kafka.topics.audio_raw,
        ],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    spool_dir = isolated_settings.ingest.spool_dir / "gw-crash"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sum(p.stat().st_size for p in spool_dir.glob("*.seg")) < 400_000:
        time.sleep(0.1)
    time.sleep(0.5)  # > one spool fsync interval
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    state = json.loads((isolated_settings.ingest.state_dir / "gw-crash" / "sequences.json").read_text())
    on_disk = Spool(spool_dir, isolated_settings.ingest.spool_max_bytes)
    left_behind = on_disk.pending_chunks  # what the killed process had written
    on_disk.close()
    assert left_behind >= 400_000 // 32_200  # 1 s chunks (the CLI's chunk length) of ~32 KB
    # run 2: broker up, same gateway: the spooled chunks go first, then new ones with fresh numbers
    report = run_gateway(isolated_settings, FirstBlocks(_sim("fan/id_00,pump/id_00"), 4), gateway_id="gw-crash")
    assert report.undelivered_chunks == 0, report
    assert report.chunks_sent - report.chunks_in == left_behind  # all of it was delivered
    arrived = by_machine(read_chunks(isolated_settings, isolated_settings.kafka.topics.audio_raw, report.chunks_sent))
    assert sum(len(v) for v in arrived.values()) == report.chunks_sent
    for machine, chunks in arrived.items():
        seqs = [c.sequence for c in chunks]
        old = [s for s in seqs if s < state["floor"]]
        new = [s for s in seqs if s >= state["floor"]]
        assert old == list(range(len(old))), f"{machine}: spooled chunks lost or reordered"
        assert len(new) == 2 and new[1] == new[0] + 1 and seqs == old + new  # in order, numbers never reused


def test_gateway_health_lands_in_influxdb_for_the_pipeline_dashboard(isolated_settings: Settings) -> None:
    from ingest.health import GatewayHealth

    health = GatewayHealth(isolated_settings, "gw-health")
    report = run_gateway(
        isolated_settings,
        FirstBlocks(_sim(speed=8.0), 3 * 40),  # ~1.3 s of paced audio
        gateway_id="gw-health",
        health=health,
        health_every_s=0.5,
    )
    assert report.undelivered_chunks == 0
    assert health.written >= 2  # periodic points and the final one
    with InfluxClient(isolated_settings.influx) as client:
        (series,) = client.query(
            "SELECT chunks_per_s, buffer_points, dropped_chunks, online FROM pipeline "
            "WHERE stage = 'ingest' AND worker = 'gw-health'"
        )
    rows = series.rows()
    assert len(rows) == health.written
    assert all(r["dropped_chunks"] == 0 for r in rows)
    assert max(r["chunks_per_s"] for r in rows) > 10  # 3 machines x 32 chunks/s of audio time
    assert rows[-1]["online"] is True and rows[-1]["buffer_points"] == 0


def test_an_unreachable_influxdb_does_not_disturb_the_gateway(isolated_settings: Settings) -> None:
    from ingest.health import GatewayHealth

    broken = isolated_settings.model_copy(
        update={"influx": isolated_settings.influx.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})}
    )
    health = GatewayHealth(broken, "gw-nohealth")
    report = run_gateway(broken, FirstBlocks(_sim(), 9), gateway_id="gw-nohealth", health=health, health_every_s=0.2)
    assert report.chunks_sent == 9 and report.undelivered_chunks == 0
    assert health.written == 0


def test_without_idempotence_order_still_holds(isolated_settings: Settings) -> None:
    # for brokers that refuse idempotent producers: one request in flight per connection keeps order
    report = run_gateway(isolated_settings, FirstBlocks(_sim(), 30), gateway_id="gw-noidem", idempotent=False)
    assert report.chunks_sent == 30 and report.undelivered_chunks == 0
    arrived = by_machine(read_chunks(isolated_settings, isolated_settings.kafka.topics.audio_raw, 30))
    assert {m: [c.sequence for c in v] for m, v in arrived.items()} == {
        m: list(range(10)) for m in ("fan/id_00", "pump/id_02", "valve/id_04")
    }


def test_the_reported_outage_covers_the_whole_time_the_broker_was_away(
    isolated_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The 'reachable again' line once said 5.3 s for a 21 s outage: a send fails only after its
    request/delivery timeout, and the outage was counted from that failure."""
    import re

    broker = PrivateBroker(tmp_path)
    broker.start()
    settings = broker.settings(isolated_settings)
    topic = settings.kafka.topics.audio_raw
    down_s = 8.0
    try:
        ensure_topics(settings, [topic], 4)
        stop = threading.Event()
        worker = threading.Thread(
            target=lambda: run_gateway(settings, _sim(speed=4.0), gateway_id="gw-span", stop=stop, flush_timeout_s=30.0)
        )
        with caplog.at_level(logging.WARNING, logger="ingest.producer"):
            worker.start()
            wait_for_records(settings, topic, 30)
            killed = time.monotonic()
            broker.kill()
            time.sleep(down_s)
            broker.start()
            back = time.monotonic()
            ensure_topics(settings, [topic], 4)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any("reachable again" in r.message for r in caplog.records):
                time.sleep(0.2)
            stop.set()
            worker.join(timeout=60)
        lines = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
        assert lines, "the gateway never said the broker was back"
        reported = float(re.search(r"reachable again\D*([\d.]+) s", lines[0]).group(1))
        assert reported >= back - killed - 0.5, f"{lines[0]!r} for a {back - killed:.1f} s outage"
        assert reported <= back - killed + 6.0, f"{lines[0]!r} for a {back - killed:.1f} s outage"
    finally:
        broker.kill()
