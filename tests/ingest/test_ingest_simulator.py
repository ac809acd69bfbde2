"""The simulator source: distinct machines, stationary normal sound, faults that measurably change it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import welch

from ingest.sources.simulator import FaultCommand, SimulatorSource, parse_fault_command, parse_machines
from soundwatch.errors import BadInput

SR = 16_000


def _run(source: SimulatorSource, seconds: int) -> dict[str, list[np.ndarray]]:
    """Per machine, the list of 1 s chunks the source yields for ``seconds`` ticks."""
    out: dict[str, list[np.ndarray]] = {}
    stop = threading.Event()
    gen = source.blocks(stop)
    for block in gen:
        chunks = out.setdefault(f"{block.machine_type}/{block.machine_id}", [])
        chunks.append(block.samples)
        if all(len(v) >= seconds for v in out.values()) and len(out) == len(source.machines):
            break
    gen.close()
    return out


def test_normal_output_is_stationary_second_to_second() -> None:
    src = SimulatorSource(parse_machines("fan/id_00,pump/id_02,valve/id_04"), SR, SR, speed=0)
    for key, chunks in _run(src, 6).items():
        rms = np.array([np.sqrt(np.mean(c.astype(np.float64) ** 2)) for c in chunks])
        assert rms.min() > 0.01, key
        assert rms.max() / rms.min() < 1.25, f"{key}: RMS of successive seconds {rms}"
        dists = [np.abs(_bands_db(chunks[i]) - _bands_db(chunks[i + 1])).mean() for i in range(len(chunks) - 1)]
        assert max(dists) < 1.0, f"{key}: successive seconds differ by {dists} dB"


def test_machines_have_their_own_signatures() -> None:
    src = SimulatorSource(parse_machines("fan/id_00,fan/id_02"), SR, SR, speed=0)
    out = _run(src, 2)
    same = np.abs(_bands_db(out["fan/id_00"][0]) - _bands_db(out["fan/id_00"][1])).mean()
    other = np.abs(_bands_db(out["fan/id_00"][0]) - _bands_db(out["fan/id_02"][0])).mean()
    assert other > 3 * same


def test_a_looped_simulator_repeats_each_machines_first_seconds_exactly() -> None:
    machines = parse_machines("fan/id_00,pump/id_02")
    looped = _run(SimulatorSource(machines, SR, SR, speed=0, loop_s=3), 7)
    live = _run(SimulatorSource(machines, SR, SR, speed=0), 3)
    for key, chunks in looped.items():
        for k, chunk in enumerate(chunks[:7]):
            assert np.array_equal(chunk, live[key][k % 3]), (key, k)  # the same sound, seconds 0-2 again and again


@pytest.mark.parametrize("extra", [{"schedule": [parse_fault_command("fan/id_00:rub")]}, {"loop_s": 0.0}])
def test_a_looped_simulator_refuses_faults_and_empty_loops(extra) -> None:
    with pytest.raises(BadInput):
        SimulatorSource(parse_machines("fan/id_00"), SR, SR, speed=0, **{"loop_s": 3, **extra})


def _bands_db(x: np.ndarray, n_bands: int = 32) -> np.ndarray:
    """Log power in log-spaced bands (averaging bins keeps the estimate steady)."""
    _, p = welch(x, fs=SR, nperseg=1024)
    edges = np.unique(np.geomspace(2, p.size, n_bands + 1).astype(int))
    return 10 * np.log10(np.array([p[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]) + 1e-12)


def _twin_runs(machine: str, command: str, seconds: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The same machine rendered twice, once with ``command`` scheduled: any difference is the fault."""
    faulty = SimulatorSource(parse_machines(machine), SR, SR, schedule=[parse_fault_command(command)], speed=0)
    normal = SimulatorSource(parse_machines(machine), SR, SR, speed=0)
    return _run(faulty, seconds)[machine], _run(normal, seconds)[machine]


@pytest.mark.parametrize("fault", ["bearing_ticks", "imbalance", "resonance_shift", "rub"])
def test_each_scheduled_fault_changes_the_signal_measurably(fault: str) -> None:
    faulty, normal = _twin_runs("fan/id_00", f"fan/id_00:{fault}@2s")
    # before the scheduled time the machine is untouched, bit for bit
    assert np.array_equal(faulty[0], normal[0]) and np.array_equal(faulty[1], normal[1])
    for second in (2, 3):
        shift = np.abs(_bands_db(faulty[second]) - _bands_db(normal[second])).max()
        assert shift > 1.5, f"{fault}: the largest band moved only {shift:.2f} dB in second {second}"


def _band_power(x: np.ndarray, lo: float, hi: float) -> float:
    f, p = welch(x, fs=SR, nperseg=4096)
    return float(p[(f >= lo) & (f <= hi)].sum())


def test_bearing_ticks_add_energy_at_the_structural_resonance() -> None:
    faulty, normal = _twin_runs("pump/id_00", "pump/id_00:bearing_ticks@1")
    centre = SimulatorSource([("pump", "id_00")], SR, SR).sounds["pump/id_00"].signature.tick_resonance_hz
    lo, hi = centre - 300, centre + 300
    assert _band_power(faulty[2], lo, hi) > 1.5 * _band_power(normal[2], lo, hi)


def test_imbalance_raises_the_shaft_harmonic() -> None:
    faulty, normal = _twin_runs("valve/id_04", "valve/id_04:imbalance@1")
    f0 = SimulatorSource([("valve", "id_04")], SR, SR).sounds["valve/id_04"].signature.f0_hz
    lo, hi = f0 * 0.95, f0 * 1.05
    assert _band_power(faulty[2], lo, hi) > 1.5 * _band_power(normal[2], lo, hi)


def test_clearing_a_fault_restores_the_normal_spectrum() -> None:
    src = SimulatorSource(
        [("fan", "id_00")],
        SR,
        SR,
        schedule=[parse_fault_command("fan/id_00:rub@1"), parse_fault_command("fan/id_00:normal@3")],
        speed=0,
    )
    chunks = _run(src, 5)["fan/id_00"]
    assert np.abs(_bands_db(chunks[0]) - _bands_db(chunks[4])).mean() < 1.0
    assert np.abs(_bands_db(chunks[0]) - _bands_db(chunks[1])).max() > 1.5


def test_commands_appended_to_the_control_file_apply_on_the_next_chunk(tmp_path: Path) -> None:
    control = tmp_path / "commands"
    control.write_text("fan/id_00:rub\n")  # written before start: ignored (only new commands count)
    src = SimulatorSource([("fan", "id_00")], SR, SR, control_file=control, speed=0)
    stop = threading.Event()
    gen = src.blocks(stop)
    next(gen)
    assert src.applied == []
    with open(control, "a") as fh:
        fh.write("fan/id_00:imbalance=1.5\nnot a command\nfan/id_00:normal@")  # last line incomplete
    next(gen)
    assert [(c.fault, c.severity) for c in src.applied] == [("imbalance", 1.5)]
    assert src.sounds["fan/id_00"].fault is not None
    with open(control, "a") as fh:
        fh.write("0\n")
    next(gen)
    assert src.applied[-1].fault is None and src.sounds["fan/id_00"].fault is None
    gen.close()


def test_fault_command_syntax() -> None:
    assert parse_fault_command("fan/id_01:bearing_ticks@60s") == FaultCommand(
        "fan", "id_01", "bearing_ticks", 1.0, 60.0
    )
    assert parse_fault_command(" pump/id_00 : imbalance=1.5 @ 30 ") == FaultCommand(
        "pump", "id_00", "imbalance", 1.5, 30.0
    )
    assert parse_fault_command("fan/id_01:normal").fault is None
    with pytest.raises(BadInput, match="valid faults"):
        parse_fault_command("fan/id_01:explosion@3s")
    with pytest.raises(BadInput, match="cannot parse"):
        parse_fault_command("fan id_01 bearing")


def test_machines_spec_and_unknown_machine_in_schedule() -> None:
    assert len(set(parse_machines("7"))) == 7
    with pytest.raises(BadInput, match="twice"):
        parse_machines("fan/id_00,fan/id_00")
    with pytest.raises(BadInput, match="does not run"):
        SimulatorSource([("fan", "id_00")], SR, SR, schedule=[parse_fault_command("pump/id_00:rub@1")])
