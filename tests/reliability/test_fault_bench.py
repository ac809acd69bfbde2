"""`soundwatch bench faults`, reduced to the scenarios of issue 16 that lost data or stalled: a broker restart
(its own broker), oversized and malformed records, a second gateway for one machine. lost must be 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.bench_faults import REDUCED, SCENARIOS

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_the_reduced_fault_bench_loses_nothing(stack, tmp_path):
    assert set(REDUCED) <= set(SCENARIOS) and "baseline" in SCENARIOS
    env = {k: v for k, v in os.environ.items() if k != "SOUNDWATCH_CONFIG"}
    args = [arg for name in REDUCED for arg in ("--scenario", name)]
    done = subprocess.run(
        [sys.executable, "-m", "deploy.main", "bench", "faults", "--json", *args, "--keep", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.stdout.count("\n") == 1, done.stderr[-3000:]  # one JSON object
    result = json.loads(done.stdout)
    assert set(result["scenarios"]) == set(REDUCED)
    for name, figures in result["scenarios"].items():
        assert "error" not in figures, f"{name}: {figures['error']}"
        assert figures["lost"] == 0 and figures["duplicates"] == 0, f"{name}: {figures}"
        assert figures["points_distinct"] == figures["windows_implied"] > 0, f"{name}: {figures}"
        assert figures["chunks_acked"] > 0 and figures["ok"], f"{name}: {figures}"
    assert result["scenarios"]["bad_records"]["dead_lettered"] == result["scenarios"]["bad_records"]["injected"]
    second = result["scenarios"]["second_gateway"]
    assert second["conflicting"] == second["dead_lettered"] > 0  # the other gateway's chunks: dead-lettered, not lost
    assert done.returncode == 0 and result["all_ok"] and result["lost_total"] == 0
