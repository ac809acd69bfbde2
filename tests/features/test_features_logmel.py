"""log_mel: the librosa definition, frame for frame, batched like per clip, and fast enough to matter."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch
from features_helpers import pcm16, real_clips

from soundwatch.audio.logmel import LogMel, complete_frames, frames_db, log_mel, mel_filterbank
from soundwatch.params import FeatureParams

DEFAULT = FeatureParams()


def librosa_db(audio: np.ndarray, p: FeatureParams) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=audio,
        sr=p.sample_rate,
        n_fft=p.n_fft,
        hop_length=p.hop_length,
        n_mels=p.n_mels,
        fmin=p.fmin,
        fmax=p.fmax,
        power=p.power,
        center=True,
        pad_mode="constant",
        window="hann",
        htk=False,
        norm="slaney",
    )
    return librosa.power_to_db(mel, ref=1.0, amin=p.amin, top_db=None)


def test_matches_librosa_on_every_real_clip_within_1e_3_db():
    by_length: dict[int, list[np.ndarray]] = {}
    for path in real_clips():
        audio = pcm16(path).astype(np.float32) / 32768
        by_length.setdefault(audio.size, []).append(audio)
    assert sum(len(v) for v in by_length.values()) >= 80
    worst = 0.0
    for n, clips in by_length.items():  # librosa is batched too: one call per clip length
        batch = np.stack(clips)
        ours = log_mel(batch, params=DEFAULT)
        ref = librosa_db(batch, DEFAULT)
        assert ours.shape == (len(clips), 128, complete_frames(n, DEFAULT)) and ours.dtype == np.float32
        assert ref.shape[-1] == ours.shape[-1] + 1  # librosa adds the right-padded frame we never emit
        worst = max(worst, float(np.abs(ours - ref[..., : ours.shape[-1]]).max()))
    assert worst <= 1e-3, f"max |ours - librosa| = {worst} dB"


@pytest.mark.parametrize(
    "overrides",
    [
        {"n_fft": 512, "hop_length": 256, "n_mels": 40},
        {"n_fft": 2048, "hop_length": 512, "n_mels": 64, "fmin": 50.0, "fmax": 7000.0},
        {"power": 1.0, "amin": 1e-5},
        {"n_fft": 1023, "hop_length": 300, "n_mels": 32},  # odd n_fft: edge bins of the frequency-domain window
        {"sample_rate": 22050, "n_fft": 1024, "hop_length": 256},
    ],
)
def test_matches_librosa_for_other_parameters(overrides):
    p = FeatureParams(**overrides)
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(3 * p.sample_rate) * np.linspace(0.01, 0.5, 3 * p.sample_rate)).astype(np.float32)
    ours = log_mel(audio, params=p)
    ref = librosa_db(audio, p)[:, : ours.shape[1]]
    assert ours.shape[1] == complete_frames(audio.size, p)
    assert np.abs(ours - ref).max() <= 1e-3


def test_filterbank_is_librosas_bit_for_bit():
    for p in (DEFAULT, FeatureParams(n_mels=64, fmin=20.0, fmax=6000.0), FeatureParams(n_fft=512, hop_length=128)):
        ref = librosa.filters.mel(
            sr=p.sample_rate,
            n_fft=p.n_fft,
            n_mels=p.n_mels,
            fmin=p.fmin,
            fmax=p.fmax,
            htk=False,
            norm="slaney",
            dtype=np.float32,
        )
        assert np.array_equal(mel_filterbank(p), ref)


def test_complete_frames_follow_the_streaming_rule():
    # frame t is complete when t*hop + n_fft//2 <= n_samples
    assert complete_frames(160_000, DEFAULT) == 312
    assert complete_frames(511, DEFAULT) == 0
    assert complete_frames(512, DEFAULT) == 1
    assert complete_frames(1023, DEFAULT) == 1
    assert complete_frames(1024, DEFAULT) == 2
    odd = FeatureParams(n_fft=1023, hop_length=300)  # a frame reaches n_fft - n_fft//2 = 512 samples ahead
    assert complete_frames(511, odd) == 0 and complete_frames(512, odd) == 1


def test_batched_equals_per_item_and_leading_dims_are_kept():
    clips = np.stack([pcm16(p)[:48_000].astype(np.float32) / 32768 for p in real_clips()[:6]])
    batched = log_mel(clips.reshape(2, 3, -1), params=DEFAULT)
    assert batched.shape == (2, 3, 128, complete_frames(48_000, DEFAULT))
    for i, clip in enumerate(clips):
        np.testing.assert_array_equal(batched.reshape(6, 128, -1)[i], log_mel(clip, params=DEFAULT))


def test_long_clip_processed_in_blocks_equals_pieces():
    audio = np.concatenate([pcm16(p) for p in real_clips()[:3]]).astype(np.float32) / 32768  # 30 s > one block
    whole = log_mel(audio, params=DEFAULT)
    pad = np.concatenate([np.zeros(DEFAULT.n_fft // 2, np.float32), audio])
    np.testing.assert_array_equal(frames_db(pad, whole.shape[1], params=DEFAULT), whole)
    np.testing.assert_array_equal(frames_db(pad[300 * 512 :], 10, params=DEFAULT), whole[:, 300:310])


def test_silence_sits_on_the_floor_and_float64_input_is_accepted():
    np.testing.assert_allclose(log_mel(np.zeros(16_000), params=DEFAULT), DEFAULT.floor_db, atol=1e-4, rtol=0)
    assert log_mel(np.zeros(100, np.float32), params=DEFAULT).shape == (128, 0)


def test_rejects_integer_audio_with_the_fix():
    with pytest.raises(TypeError, match="32768"):
        log_mel(np.zeros(16_000, np.int16), params=DEFAULT)


def test_torch_module_matches_numpy_and_keeps_buffers():
    audio = pcm16(real_clips()[10])[:64_000].astype(np.float32) / 32768
    module = LogMel(DEFAULT)
    assert {name for name, _ in module.named_buffers()} == {"window", "filterbank"}
    out = module(torch.from_numpy(np.stack([audio, audio[::-1].copy()])))
    assert out.dtype == torch.float32 and out.shape == (2, 128, complete_frames(64_000, DEFAULT))
    assert np.abs(out[0].numpy() - log_mel(audio, params=DEFAULT)).max() <= 1e-3
    assert module(torch.zeros(100)).shape == (128, 0)
