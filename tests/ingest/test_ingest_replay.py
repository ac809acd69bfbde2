"""Integration: replayed files arrive on audio.raw sample for sample, with contiguous sequence numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from ingest_helpers import by_machine, read_chunks

from ingest.gateway import run_gateway
from ingest.producer import quantize_pcm16
from ingest.sources.files import FileReplaySource, discover, machine_of
from soundwatch.audio.audio_io import read_audio
from soundwatch.errors import BadInput
from soundwatch.settings import Settings

SR = 16_000


def _expected_pcm(files: tuple[Path, ...]) -> np.ndarray:
    return np.concatenate([quantize_pcm16(read_audio(f, SR)) for f in files])


def _check_stream(chunks, files: tuple[Path, ...], gateway_id: str) -> None:
    got = np.concatenate([c.samples for c in chunks])
    want = _expected_pcm(files)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, want)
    assert [c.sequence for c in chunks] == list(range(len(chunks)))
    assert all(c.sample_rate == SR and c.gateway_id == gateway_id for c in chunks)
    # audio time advances by exactly the previous chunk's duration
    starts = np.array([c.start_ns for c in chunks])
    durations = np.array([c.n_samples * 1_000_000_000 // SR for c in chunks])
    assert np.all(np.abs(np.diff(starts) - durations[:-1]) <= 1)
    assert all(c.n_samples == SR for c in chunks[:-1])


@pytest.mark.integration
def test_replaying_real_recordings_publishes_exactly_their_samples(
    isolated_settings: Settings, real_mini: Path
) -> None:
    source = FileReplaySource(real_mini / "pump", SR, SR, speed=0)
    assert {m.key for m in source.machines} == {"pump/id_00", "pump/id_02", "pump/id_04", "pump/id_06"}
    report = run_gateway(isolated_settings, source, gateway_id="gw-test", backpressure=True)
    assert report.undelivered_chunks == 0 and report.dropped_chunks == 0
    chunks = read_chunks(isolated_settings, isolated_settings.kafka.topics.audio_raw, report.chunks_in)
    assert len(chunks) == report.chunks_in == report.chunks_sent
    per_machine = by_machine(chunks)
    for machine in source.machines:
        _check_stream(per_machine[machine.key], machine.files, "gw-test")


@pytest.mark.integration
def test_a_file_at_another_rate_is_resampled_like_training_reads_it(
    isolated_settings: Settings, real_mini: Path, tmp_path: Path
) -> None:
    import soxr

    clip = sorted((real_mini / "valve" / "test").glob("normal_id_04_*.wav"))[0]
    audio, sr = sf.read(clip, dtype="float32")
    folder = tmp_path / "valve" / "test"
    folder.mkdir(parents=True)
    flac = folder / "normal_id_04_00000000.flac"
    sf.write(flac, soxr.resample(audio, sr, 22_050), 22_050, subtype="PCM_16")
    source = FileReplaySource(tmp_path, SR, 4000, speed=0)  # 0.25 s chunks
    report = run_gateway(isolated_settings, source, gateway_id="gw-rs", backpressure=True)
    chunks = read_chunks(isolated_settings, isolated_settings.kafka.topics.audio_raw, report.chunks_in)
    stream = by_machine(chunks)["valve/id_04"]
    got = np.concatenate([c.samples for c in stream])
    np.testing.assert_array_equal(got, _expected_pcm((flac,)))
    assert got.size == pytest.approx(audio.size, abs=2)  # 10 s at 16 kHz again
    assert stream[-1].n_samples <= 4000 and all(c.n_samples == 4000 for c in stream[:-1])


def test_dcase_names_give_machine_type_and_id(real_mini: Path, tmp_path: Path) -> None:
    f = real_mini / "fan" / "test" / "anomaly_id_06_00000000.wav"
    assert machine_of(f) == ("fan", "id_06")
    assert machine_of(Path("/d/gearbox/source_test/section_02_source_test_normal_0001.wav")) == (
        "gearbox",
        "section_02",
    )
    assert machine_of(f, "blower", "b7") == ("blower", "b7")
    odd = tmp_path / "recording.wav"
    sf.write(odd, np.zeros(100, dtype=np.float32), SR)
    with pytest.raises(BadInput, match="--machine-id"):
        discover(odd)
    assert discover(odd, machine_id="m1")[0].machine_type == tmp_path.name
    with pytest.raises(BadInput, match="does not exist"):
        discover(tmp_path / "missing")


def test_looping_replay_starts_over_seamlessly(real_mini: Path) -> None:
    import threading

    source = FileReplaySource(real_mini / "ToyConveyor", SR, SR, loop=True, speed=0)
    files = source.machines[0].files
    total = sum(read_audio(f, SR).size for f in files)
    stop = threading.Event()
    gen = source.blocks(stop)
    need = total + 3 * SR
    got = []
    while sum(x.size for x in got) < need:
        got.append(next(gen).samples)
    gen.close()
    stream = np.concatenate(got)[:need]
    whole = np.concatenate([read_audio(f, SR) for f in files])
    np.testing.assert_array_equal(stream[:total], whole)
    np.testing.assert_array_equal(stream[total:], whole[: need - total])
