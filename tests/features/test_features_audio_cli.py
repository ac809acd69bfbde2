"""read_audio / audio_info and the `features extract` command."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import soundfile as sf
import typer
from features_helpers import pcm16, real_clips
from typer.testing import CliRunner

from features.cli import app, bench
from soundwatch.audio.audio_io import audio_info, read_audio
from soundwatch.audio.windows import offline_windows
from soundwatch.errors import BadInput, ExitCode
from soundwatch.params import FeatureParams

P = FeatureParams()
runner = CliRunner()


def test_read_audio_is_pcm16_scaled_to_float32():
    clip = real_clips()[0]
    audio = read_audio(clip, 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    np.testing.assert_array_equal(audio, pcm16(clip).astype(np.float32) / 32768)
    assert audio_info(clip) == (16_000, audio.size, 1)


def test_multichannel_takes_channel_0_and_other_rates_are_resampled_with_a_warning(tmp_path, caplog):
    rng = np.random.default_rng(0)
    stereo = np.stack([rng.uniform(-0.5, 0.5, 8000), np.zeros(8000)], axis=1).astype(np.float32)
    path = tmp_path / "two.wav"
    sf.write(path, stereo, 8000, subtype="FLOAT")
    assert audio_info(path) == (8000, 8000, 2)
    with caplog.at_level(logging.WARNING, logger="soundwatch.audio.audio_io"):
        audio = read_audio(path, 16_000)
    assert audio.dtype == np.float32 and abs(audio.size - 16_000) <= 1
    assert np.abs(audio).max() > 0.1  # channel 0, not the silent channel 1, and not a mix
    assert "two.wav" in caplog.text and "8000 Hz" in caplog.text and "16000 Hz" in caplog.text
    np.testing.assert_array_equal(read_audio(path, 8000), stereo[:, 0])


@pytest.mark.parametrize(
    "content, reason",
    [(None, "no such file"), (b"RIFF\x00\x00\x00\x00WAVEgarbage", "path"), (b"", "path")],
)
def test_unreadable_files_raise_bad_input_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "clip.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInput) as err:
        read_audio(path, 16_000)
    assert str(path) in err.value.message
    if reason == "no such file":
        assert "no such file" in err.value.message
    with pytest.raises(BadInput):
        audio_info(path)


def test_empty_and_non_finite_audio_are_bad_input(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000)
    with pytest.raises(BadInput, match="no samples"):
        read_audio(empty, 16_000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1], np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(BadInput, match="NaN"):
        read_audio(nan, 16_000)


def test_extract_dir_writes_the_offline_windows_per_file(tmp_path):
    src = tmp_path / "in" / "fan"
    src.mkdir(parents=True)
    clips = real_clips()[:2]
    for clip in clips:
        (src / clip.name).write_bytes(clip.read_bytes())
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    result = runner.invoke(app, ["extract", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    for clip in clips:
        data = np.load(tmp_path / "out" / "fan" / clip.with_suffix(".npz").name)
        ref, starts = offline_windows(read_audio(clip, 16_000), params=P)
        np.testing.assert_array_equal(data["windows"], ref)
        np.testing.assert_array_equal(data["start_frames"], starts)
        assert FeatureParams.from_json(str(data["params"])) == P
        assert int(data["n_samples"]) == pcm16(clip).size
    assert not list((tmp_path / "out").rglob("*.tmp.npz"))


def test_extract_reports_bad_files_and_exits_bad_input(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF....WAVEnope")
    (tmp_path / "in" / "good.wav").write_bytes(real_clips()[0].read_bytes())
    result = runner.invoke(app, ["extract", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, BadInput) and result.exception.exit_code == ExitCode.BAD_INPUT
    assert "1 of 2" in result.exception.message
    assert (tmp_path / "out" / "good.npz").is_file() and not (tmp_path / "out" / "broken.npz").exists()
    missing = runner.invoke(app, ["extract", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert isinstance(missing.exception, BadInput)
    bad_format = runner.invoke(app, ["extract", str(tmp_path / "in"), "--out", str(tmp_path), "--format", "csv"])
    assert bad_format.exit_code == 2 and "npz" in bad_format.output


def test_bench_prints_one_json_object_with_the_ratios():
    cli = typer.Typer()
    cli.command()(bench)
    result = runner.invoke(cli, ["--json", "--no-stream", "--seconds", "20", "--repeats", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for key in (
        "ours_audio_s_per_cpu_s",
        "librosa_audio_s_per_cpu_s",
        "floor_audio_s_per_cpu_s",
        "speedup_vs_librosa",
        "ratio_to_floor",
    ):
        assert isinstance(data[key], float) and data[key] > 0
    assert data["max_abs_db_vs_librosa"] <= 1e-3
