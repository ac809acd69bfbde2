"""Sequence numbers continue across restarts and are never reused after a crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ingest.sequences import SequenceStore
from soundwatch.errors import BadInput, ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_numbers_are_per_machine_and_contiguous(tmp_path: Path) -> None:
    with SequenceStore(tmp_path, block=3) as store:
        got = [store.next("fan/id_00") for _ in range(7)]
        other = [store.next("pump/id_00") for _ in range(2)]
    assert got == list(range(7))
    assert other == [0, 1]


def test_a_clean_restart_continues_without_a_gap(tmp_path: Path) -> None:
    with SequenceStore(tmp_path, block=100) as store:
        for _ in range(5):
            store.next("fan/id_00")
    with SequenceStore(tmp_path, block=100) as store:
        assert store.next("fan/id_00") == 5
        assert store.next("new/id_00") == 0


def test_a_crash_never_reuses_a_number(tmp_path: Path) -> None:
    # hand out 5 numbers, then die without close() (no atexit, no flush: like kill -9)
    code = (
        "import os, sys\n"
        "from ingest.sequences import SequenceStore\n"
        f"s = SequenceStore({str(tmp_path)!r}, block=4)\n"
        "print([s.next('fan/id_00') for _ in range(5)], flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 2, 3, 4]"
    with SequenceStore(tmp_path, block=4) as store:
        n = store.next("fan/id_00")
    assert n > 4  # a gap (at most one block), never a repeat
    assert n <= 4 + 4


def test_two_gateways_cannot_share_a_state_directory(tmp_path: Path) -> None:
    with SequenceStore(tmp_path), pytest.raises(ConfigError, match="already using"):
        SequenceStore(tmp_path)


def test_a_damaged_state_file_is_reported_not_reset(tmp_path: Path) -> None:
    (tmp_path / "sequences.json").write_text("{not json")
    with pytest.raises(BadInput, match="unreadable"):
        SequenceStore(tmp_path)


def test_a_crash_before_a_new_machine_was_recorded_still_never_reuses(tmp_path: Path) -> None:
    # machines first seen in a run are covered by the floor reserved at start-up, not by their own fsync
    code = (
        "import os\n"
        "from ingest.sequences import SequenceStore\n"
        f"s = SequenceStore({str(tmp_path)!r}, block=10)\n"
        "print([s.next(f'm/{i}') for i in range(50)][-1], [s.next('m/0') for _ in range(3)], flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0 [1, 2, 3]", out.stderr
    with SequenceStore(tmp_path, block=10) as store:
        assert store.next("m/0") == 10  # above everything the crashed run could have handed out
        assert store.next("m/7") == 10
    with SequenceStore(tmp_path, block=10) as store:  # a clean close lists them all: no new gaps
        assert store.peek("m/7") == 11 and store.peek("m/0") == 11


def test_every_start_has_a_larger_epoch_even_when_the_clock_went_back(tmp_path: Path) -> None:
    import json
    import time

    import numpy as np

    from ingest.producer import Block, ChunkBuilder

    with SequenceStore(tmp_path) as store:
        first = store.epoch
        chunk = ChunkBuilder("gw-1", 16_000, store).build(Block("fan", "id_00", np.zeros(160, np.float32), 0))
    assert chunk.epoch == first and abs(first - time.time_ns()) < 60 * 10**9  # wall-clock ns
    with SequenceStore(tmp_path) as store:
        assert store.epoch > first
    state = tmp_path / "sequences.json"
    data = json.loads(state.read_text())
    future = time.time_ns() + 3600 * 10**9  # written under a clock an hour ahead, since corrected
    state.write_text(json.dumps({**data, "epoch": future}))
    with SequenceStore(tmp_path) as store:
        assert store.epoch == future + 1
    state.write_text(json.dumps({k: v for k, v in data.items() if k != "epoch"}))  # a file from before epochs
    with SequenceStore(tmp_path) as store:
        assert store.epoch > first and store.next("fan/id_00") == 1
