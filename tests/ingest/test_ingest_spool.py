"""The spool is the gateway's write-ahead log: order, durability across restarts, torn writes, the limit."""

from __future__ import annotations

from pathlib import Path

from ingest.spool import Spool


def _fill(spool: Spool, n: int, key: bytes = b"fan/id_00", size: int = 100) -> list[int]:
    return [spool.append(key, bytes([i % 256]) * size) for i in range(n)]


def _drain(spool: Spool) -> list[int]:
    out = []
    while (rec := spool.next_to_send()) is not None:
        out.append(rec.position)
        spool.ack(rec.position)
    return out


def test_records_come_out_in_order_with_their_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)
    positions = [spool.append(f"m/{i % 3}".encode(), f"value-{i}".encode()) for i in range(50)]
    assert positions == list(range(50))
    seen = []
    while (rec := spool.next_to_send()) is not None:
        seen.append((rec.position, rec.key, rec.value))
    assert seen == [(i, f"m/{i % 3}".encode(), f"value-{i}".encode()) for i in range(50)]
    assert spool.pending_chunks == 50 and spool.in_flight == 50
    for pos, _, _ in seen:
        spool.ack(pos)
    assert spool.pending_chunks == 0 and spool.committed == 50


def test_failed_records_are_resent_before_newer_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)
    _fill(spool, 6)
    recs = [spool.next_to_send() for _ in range(4)]  # 0..3 in flight
    spool.ack(0)
    for r in recs[1:]:
        spool.nack(r.position)  # an outage fails 1..3
    spool.append(b"fan/id_00", b"late")
    assert _drain(spool) == [1, 2, 3, 4, 5, 6]


def test_unsent_records_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000, segment_bytes=64 * 1024)
    _fill(spool, 3000, size=100)  # several segments
    for _ in range(1000):
        rec = spool.next_to_send()
        spool.ack(rec.position)
    spool.close()

    again = Spool(tmp_path, 10_000_000, segment_bytes=64 * 1024)
    assert again.pending_chunks == 2000
    first = again.next_to_send()
    assert first.position == 1000 and first.value == bytes([1000 % 256]) * 100
    again.ack(first.position)
    assert _drain(again) == list(range(1001, 3000))
    assert again.append(b"k", b"v") == 3000  # positions keep increasing across restarts
    again.close()


def test_a_torn_tail_is_cut_off_and_the_rest_recovered(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)
    _fill(spool, 10)
    spool.close()
    seg = sorted(tmp_path.glob("*.seg"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-37])  # a crash in the middle of the last record
    again = Spool(tmp_path, 10_000_000)
    assert again.pending_chunks == 9
    record = 4 + 4 + 8 + 2 + len(b"fan/id_00") + 100
    assert again.stats().corrupt_bytes == record - 37  # the torn remainder, nothing more
    assert _drain(again) == list(range(9))
    assert again.append(b"k", b"v") == 9


def test_a_flipped_bit_is_detected(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)
    _fill(spool, 5, size=50)
    spool.close()
    seg = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[-10] ^= 0xFF  # inside the last record's value
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path, 10_000_000)
    assert again.pending_chunks == 4
    assert again.stats().corrupt_bytes > 0


def test_limit_drops_oldest_whole_segments_and_counts_them_per_machine(tmp_path: Path) -> None:
    limit = 64 * 1024
    spool = Spool(tmp_path, limit, segment_bytes=8 * 1024)
    record = 1000 + 4 + 4 + 8 + 2 + 9  # value + header + meta + key
    for i in range(200):
        spool.append(b"fan/id_00" if i % 2 else b"pump/id_0", b"x" * 1000)
    st = spool.stats()
    assert st.disk_bytes <= limit
    assert st.dropped_chunks > 0
    assert st.dropped_chunks + st.pending_chunks == 200
    assert st.dropped_bytes == st.dropped_chunks * record
    assert sum(st.dropped_by_machine.values()) == st.dropped_chunks
    assert set(st.dropped_by_machine) == {"fan/id_00", "pump/id_0"}
    # the oldest went, the newest are all still there, in order
    remaining = _drain(spool)
    assert remaining == list(range(200 - len(remaining), 200))


def test_limit_counts_an_in_flight_record_only_if_it_then_fails(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 64 * 1024, segment_bytes=8 * 1024)
    spool.append(b"a/b", b"x" * 1000)
    spool.append(b"a/b", b"x" * 1000)
    r0, r1 = spool.next_to_send(), spool.next_to_send()
    for _ in range(100):
        spool.append(b"a/c", b"y" * 1000)
    before = spool.stats().dropped_by_machine.get("a/b", 0)
    assert before == 0  # both in flight when their segment went
    spool.ack(r0.position)  # delivered after all: not a loss
    spool.nack(r1.position)  # failed and its bytes are gone: a loss
    assert spool.stats().dropped_by_machine["a/b"] == 1


def test_a_record_larger_than_the_limit_is_refused_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 2048)
    assert spool.append(b"a/b", b"z" * 5000) is None
    st = spool.stats()
    assert st.dropped_chunks == 1 and st.dropped_by_machine == {"a/b": 1}
    assert spool.pending_chunks == 0


def test_age_of_the_oldest_unsent_chunk(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)
    spool.append(b"a/b", b"1", now_ns=1_000_000_000)
    spool.append(b"a/b", b"2", now_ns=5_000_000_000)
    assert spool.oldest_age_s(now_ns=11_000_000_000) == 10.0
    spool.ack(spool.next_to_send().position)
    assert spool.oldest_age_s(now_ns=11_000_000_000) == 6.0


def test_acknowledged_segments_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000, segment_bytes=64 * 1024)
    _fill(spool, 2000, size=100)
    assert len(list(tmp_path.glob("*.seg"))) > 2
    _drain(spool)
    spool.sync()
    assert len(list(tmp_path.glob("*.seg"))) <= 1
    assert spool.stats().pending_bytes == 0


def test_corruption_inside_an_older_segment_loses_only_the_damaged_records(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000, segment_bytes=64 * 1024)
    _fill(spool, 2000, size=100)
    spool.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bad sector in the middle of the oldest segment
    first.write_bytes(bytes(data))
    again = Spool(tmp_path, 10_000_000, segment_bytes=64 * 1024)
    assert again.stats().corrupt_bytes > 0
    delivered = _drain(again)
    assert delivered == sorted(delivered) and delivered[-1] == 1999
    assert 1000 < len(delivered) < 2000  # the second half of the damaged segment is gone, the rest is not
    assert again.pending_chunks == 0 and again.committed == 2000


def test_a_failing_disk_drops_loudly_and_leaves_no_torn_record(tmp_path: Path) -> None:
    # the OS refuses to grow files past 100 KB (RLIMIT_FSIZE): a real write error, like a full disk
    import subprocess
    import sys

    code = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from ingest.spool import Spool\n"
        f"spool = Spool({str(tmp_path)!r}, 10_000_000, segment_bytes=1_000_000)\n"
        "got = [spool.append(b'fan/id_00', bytes(30_000)) for _ in range(6)]\n"
        "spool.close()\n"
        "print(got, spool.stats().dropped_chunks)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[0,", "1,", "2,", "None,", "None,", "None]", "3"]
    assert "cannot write" in out.stderr
    again = Spool(tmp_path, 10_000_000)
    assert again.pending_chunks == 3 and again.stats().corrupt_bytes == 0
    assert _drain(again) == [0, 1, 2]
