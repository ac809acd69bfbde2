"""The README's capacity chart and table from `bench e2e --json` results."""

from __future__ import annotations

import json

import pytest

from deploy.capacity_chart import main


def _result(machines: int, gateway: float) -> dict:
    cpu = {"gateway": gateway, "features": 1.0, "scoring": 0.5, "broker": 2.0, "influxd": 0.25}
    cpu["total"] = sum(cpu.values())
    step = {"machines": machines, "latency_p99_s": 1.5, "sustained": True, "cpu_s_per_machine_hour": cpu}
    return {"steps": [step]}


def test_chart_and_table_compare_runs_at_one_step(tmp_path, capsys):
    ref, new = tmp_path / "ref.json", tmp_path / "new.json"
    ref.write_text(json.dumps(_result(320, 5.0)))
    new.write_text(json.dumps(_result(320, 3.0)))
    out = tmp_path / "docs" / "capacity.png"
    main([f"previous={ref}", f"new={new}", "--machines", "320", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| run | machines | gateway | features | scoring | broker | influxd | total")
    assert table[2].startswith("| previous | 320 | 5.00 | 1.00 | 0.50 | 2.00 | 0.25 | 8.75 | 1.50 | yes |")
    assert table[3].startswith("| new | 320 | 3.00 |")


def test_a_missing_step_is_named(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(_result(320, 5.0)))
    with pytest.raises(SystemExit, match="no step with 640 machines"):
        main([f"ref={ref}", "--machines", "640", "--out", str(tmp_path / "x.png")])


def test_each_run_can_name_its_own_step(tmp_path, capsys):
    ref, new = tmp_path / "ref.json", tmp_path / "new.json"
    ref.write_text(json.dumps(_result(160, 5.0)))
    new.write_text(json.dumps({"steps": _result(160, 3.0)["steps"] + _result(640, 1.0)["steps"]}))
    main([f"previous={ref}", f"new={new}", f"new 640={new}@640", "--machines", "160", "--out", str(tmp_path / "c.png")])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [r.split(" | ")[1:3] for r in rows] == [["160", "5.00"], ["160", "3.00"], ["640", "1.00"]]
    with pytest.raises(SystemExit, match="LABEL=RESULT.json@MACHINES"):
        main([f"x={new}@many", "--machines", "160", "--out", str(tmp_path / "c.png")])
