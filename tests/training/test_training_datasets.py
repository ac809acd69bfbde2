"""Layout parsing (DCASE 2020 and 2021+), clear errors, and bad files reported and skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundwatch.errors import BadInput
from soundwatch.params import FeatureParams
from training.datasets import load_windows, scan_dataset


def _touch_wav(path: Path, seconds: float = 2.5, sr: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def test_dcase2020_layout(tmp_path: Path) -> None:
    _touch_wav(tmp_path / "fan" / "train" / "normal_id_00_00000000.wav")
    _touch_wav(tmp_path / "fan" / "test" / "anomaly_id_02_00000007.wav")
    _touch_wav(tmp_path / "pump" / "test" / "normal_id_04_00000001.wav")
    recs = scan_dataset(tmp_path)
    assert [(r.machine_type, r.machine_id, r.split, r.label, r.scheme) for r in recs] == [
        ("fan", "id_02", "test", "anomaly", "dcase2020"),
        ("fan", "id_00", "train", "normal", "dcase2020"),
        ("pump", "id_04", "test", "normal", "dcase2020"),
    ]
    assert [r.machine_type for r in scan_dataset(tmp_path, "pump")] == ["pump"]
    # a single machine-type folder works as the root too
    assert len(scan_dataset(tmp_path / "fan")) == 2


def test_dcase2021_layout(tmp_path: Path) -> None:
    _touch_wav(tmp_path / "gearbox" / "train" / "section_01_source_train_normal_0003_volt_1.3_wt_30.wav")
    _touch_wav(tmp_path / "gearbox" / "test" / "section_00_target_test_anomaly_0012.wav")
    first, second = sorted(scan_dataset(tmp_path), key=lambda r: r.split, reverse=True)
    assert (first.machine_id, first.section, first.domain, first.attributes, first.split, first.label) == (
        "section_01",
        "section_01",
        "source",
        "volt_1.3_wt_30",
        "train",
        "normal",
    )
    assert (second.machine_id, second.domain, second.attributes, second.label) == (
        "section_00",
        "target",
        "",
        "anomaly",
    )


def test_folders_matching_neither_scheme_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no machine-type folders"):
        scan_dataset(tmp_path)
    _touch_wav(tmp_path / "fan" / "train" / "recording_1.wav")
    with pytest.raises(BadInput, match="naming scheme") as info:
        scan_dataset(tmp_path)
    assert "section_XX" in str(info.value) and "normal,anomaly" in str(info.value)
    with pytest.raises(BadInput, match="not found"):
        scan_dataset(tmp_path, "valve")


def test_bad_files_are_reported_and_skipped(tmp_path: Path) -> None:
    good = _touch_wav(tmp_path / "fan" / "train" / "normal_id_00_00000000.wav")
    short = _touch_wav(tmp_path / "fan" / "train" / "normal_id_00_00000001.wav", seconds=0.5)
    rate = _touch_wav(tmp_path / "fan" / "train" / "normal_id_00_00000002.wav", sr=8_000)
    corrupt = tmp_path / "fan" / "train" / "normal_id_00_00000003.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    ws = load_windows(scan_dataset(tmp_path), FeatureParams(), progress=False)
    assert [r.path for r in ws.records] == [good]
    assert ws.windows.shape[1:] == (128, 64) and ws.windows.shape[0] >= 1
    reasons = {s.path: s.reason for s in ws.skipped}
    assert set(reasons) == {short, rate, corrupt}
    assert "shorter than one window" in reasons[short]
    assert "8000 Hz" in reasons[rate]
    assert str(corrupt) in reasons[corrupt]
