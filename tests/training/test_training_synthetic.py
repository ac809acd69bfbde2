"""The synthetic generator: deterministic, phase-continuous across chunks, IDs and faults differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from soundwatch.simulator import Fault, MachineSound, render_clip, signature_for, write_dcase_dataset


@pytest.mark.parametrize("fault", [None, *Fault])
def test_chunked_render_equals_one_render(fault: Fault | None) -> None:
    whole = MachineSound(signature_for("fan", "id_00"), 16_000, instance=3)
    parts = MachineSound(signature_for("fan", "id_00"), 16_000, instance=3)
    whole.set_fault(fault)
    parts.set_fault(fault)
    a = whole.render(48_000)
    b = np.concatenate([parts.render(n) for n in (1000, 15_000, 7000, 1, 24_999)])
    assert a.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a).max() <= 1.0


def test_deterministic_and_ids_distinct() -> None:
    assert signature_for("pump", "id_02", seed=1) == signature_for("pump", "id_02", seed=1)
    assert signature_for("pump", "id_02").f0_hz != signature_for("pump", "id_04").f0_hz
    np.testing.assert_array_equal(render_clip("pump", "id_02", 1.0), render_clip("pump", "id_02", 1.0))
    assert not np.allclose(render_clip("pump", "id_02", 1.0, instance=0), render_clip("pump", "id_02", 1.0, instance=1))


@pytest.mark.parametrize("fault", list(Fault))
def test_faults_change_the_spectrum(fault: Fault) -> None:
    normal = render_clip("fan", "id_00", 2.0, instance=5)
    faulty = render_clip("fan", "id_00", 2.0, instance=5, fault=fault)
    import librosa

    def mel_profile(x: np.ndarray) -> np.ndarray:
        mel = librosa.feature.melspectrogram(y=x, sr=16_000, n_fft=1024, hop_length=512, n_mels=128)
        return librosa.power_to_db(mel).mean(axis=1)

    # some mel band moves by more than 1.5 dB on average over the clip
    assert np.abs(mel_profile(normal) - mel_profile(faulty)).max() > 1.5


def test_speed_and_fault_validation() -> None:
    sound = MachineSound(signature_for("valve", "id_00"))
    with pytest.raises(ValueError, match="speed"):
        sound.set_speed(0.0)
    with pytest.raises(ValueError, match="valid faults"):
        Fault.parse("wobble")
    assert Fault.parse("Bearing_Ticks") is Fault.BEARING_TICKS


def test_write_dcase_dataset_layout(tmp_path: Path) -> None:
    summary = write_dcase_dataset(
        tmp_path,
        ["fan"],
        ids_per_type=2,
        n_train=2,
        n_test_normal=1,
        n_test_anomaly=1,
        seconds=0.5,
        sample_rate=16_000,
        seed=0,
    )
    assert summary.files == 2 * (2 + 1 + 1)
    names = sorted(p.name for p in (tmp_path / "fan" / "train").glob("*.wav"))
    assert names[0] == "normal_id_00_00000000.wav"
    assert sorted(p.name for p in (tmp_path / "fan" / "test").glob("anomaly_*.wav"))[0].startswith("anomaly_id_00_")
    info = sf.info(tmp_path / "fan" / "train" / names[0])
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (16_000, 1, "PCM_16", 8000)
