"""`soundwatch evaluate` on input it cannot use exits 6 with the files and reasons, never 0 with nulls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from soundwatch.model.registry import ModelRegistry
from training.train import TrainResult


def test_evaluate_with_no_readable_test_clip_exits_6_and_lists_them(
    tmp_path: Path, tiny_data: Path, tiny_result: TrainResult, run_soundwatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOUNDWATCH_REDIS__URL", "redis://127.0.0.1:1/0")  # no Redis: the newest model on disk
    registry = tmp_path / "registry"
    ModelRegistry(registry).save(tiny_result.artifact)
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    clips = sorted((data / "valve" / "test").glob("*.wav"))
    assert len(clips) >= 4
    for clip in clips:
        clip.write_bytes(b"RIFF....WAVE but not really")
    result = run_soundwatch(
        "evaluate",
        "--data",
        str(data),
        "--registry",
        str(registry),
        "--device",
        "cpu",
        "--json",
        "--results",
        str(tmp_path / "results"),
    )
    assert result.code == 6, result
    assert f"no test clip of 'valve' under {data} could be read" in result.stderr
    for clip in clips:
        assert str(clip) in result.stderr
    assert result.stdout == "", "no report whose AUC is null"

    # one readable clip per label is enough for a report again
    for clip in clips:
        shutil.copy(tiny_data / "valve" / "test" / clip.name, clip)
    clips[0].write_bytes(b"still broken")
    result = run_soundwatch(
        "evaluate",
        "--data",
        str(data),
        "--registry",
        str(registry),
        "--device",
        "cpu",
        "--json",
        "--results",
        str(tmp_path / "results"),
    )
    assert result.code == 0, result
    assert f"skipped {clips[0]}" in result.stderr
