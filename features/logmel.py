"""The one log-mel front end shared by training, evaluation and the stream.

Definition (the parity contract, see :class:`soundwatch.params.FeatureParams`):

* STFT frames are centred like ``librosa.stft(center=True, pad_mode="constant")``: frame ``t`` covers
  samples ``[t*hop - n_fft//2, t*hop - n_fft//2 + n_fft)`` of the audio, with zeros before sample 0.
* Only *complete* frames are returned: frame ``t`` is complete when its support ends inside the audio,
  ``t*hop + (n_fft - n_fft//2) <= n_samples`` (``t*hop + n_fft//2 <= n_samples`` for the usual even
  ``n_fft``). A stream cannot know where the audio ends, so it never zero-pads on the right; offline
  features use the same rule so that both agree frame for frame. For 10 s at 16 kHz with the defaults
  that is 312 frames (librosa's ``center=True`` gives 313: the last one pads zeros on the right).
* Periodic Hann window (``scipy.signal.get_window("hann", n_fft, fftbins=True)``), ``|X|**power``.
* Filterbank: ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney")`` — the
  Slaney mel scale with Slaney area normalisation, librosa's default and the DCASE baselines' choice
  (float32 coefficients, exactly as ``librosa.feature.melspectrogram`` uses them).
* dB: ``10*log10(max(mel, amin))`` with reference 1.0 and no ``top_db`` clipping; ``amin`` is the floor
  (``FeatureParams.floor_db``). No per-clip normalisation, so a clip's numbers do not depend on its
  neighbours or its length.

This equals ``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0, amin=amin, top_db=None)``
within 1e-5 dB on every frame we return (tests/features/test_logmel.py).

Precision and speed: the FFT runs in float64. A float32 FFT leaks rounding error of the loud low
bands into quiet high bands and misses librosa by >1e-3 dB on real clips with 80 dB of dynamic range
(ToyConveyor); librosa itself multiplies by a float64 window and so transforms in float64 too. The
rest is kept cheap: one strided view for framing, one window-multiply pass, a batched real FFT
(``scipy.fft``, pocketfft) over all frames of all clips at once, and one fused numba kernel that
squares, applies the *sparse* mel filterbank (each FFT bin feeds at most two triangles, so ~1k
multiply-adds per frame instead of the 66k of a dense matmul) and takes the log. Frames are processed
in blocks so the float64 intermediates stay in cache and memory stays bounded for long clips.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numba
import numpy as np
import scipy.fft

from soundwatch.params import FeatureParams

if TYPE_CHECKING:  # torch is imported only by code that asks for the Module
    from features.logmel_torch import LogMel

__all__ = ["LogMel", "complete_frames", "frames_db", "hann_window", "log_mel", "mel_filterbank"]

# Frames per block: the float64 windowed frames and their spectrum (n_fft*8 + (n_fft/2+1)*16 bytes each,
# 16 KiB for n_fft=1024) stay around 8 MiB, inside a typical L3 share, and memory stays bounded.
_BLOCK_FRAMES = 512


def __getattr__(name: str) -> Any:  # lazy: `from features.logmel import LogMel` imports torch only then
    if name == "LogMel":
        from features.logmel_torch import LogMel

        return LogMel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def complete_frames(n_samples: int, params: FeatureParams) -> int:
    """Number of complete centred frames in ``n_samples`` samples (see the module docstring).

    >>> complete_frames(160_000, FeatureParams())
    312
    """
    right = params.n_fft - params.n_fft // 2  # samples a frame reaches at or after its centre
    if n_samples < right:
        return 0
    return (n_samples - right) // params.hop_length + 1


@lru_cache(maxsize=16)
def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """float32 ``[n_mels, n_fft//2 + 1]`` Slaney filterbank, exactly librosa's (read-only, cached)."""
    import librosa  # heavy import, only when a new parameter set needs its filterbank

    fb = librosa.filters.mel(sr=params.sample_rate, n_fft=params.n_fft, n_mels=params.n_mels, fmin=params.fmin,
                             fmax=params.fmax, htk=False, norm="slaney", dtype=np.float32)  # fmt: skip
    fb.setflags(write=False)
    return fb


@lru_cache(maxsize=16)
def hann_window(n_fft: int) -> np.ndarray:
    """float64 periodic Hann window of ``n_fft`` samples (librosa's ``window="hann"``), read-only."""
    from scipy.signal import get_window

    w = np.asarray(get_window("hann", n_fft, fftbins=True), dtype=np.float64)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=16)
def _bank_by_bin(params: FeatureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank in compressed-sparse-column form ``(ptr, mel, weight)``: FFT bin ``k`` feeds
    filters ``mel[ptr[k]:ptr[k+1]]`` with ``weight[...]`` (float64 copies of librosa's float32 values).
    A Slaney bank has at most two non-zeros per bin, ~1k in all for the defaults."""
    fb = mel_filterbank(params)
    mel_idx, bin_idx = np.nonzero(fb)
    order = np.lexsort((mel_idx, bin_idx))  # by bin, then mel
    mel_idx, bin_idx = mel_idx[order], bin_idx[order]
    ptr = np.zeros(fb.shape[1] + 1, np.int64)
    np.add.at(ptr, bin_idx + 1, 1)
    return np.cumsum(ptr), mel_idx.astype(np.int64), fb[mel_idx, bin_idx].astype(np.float64)


@numba.njit(cache=True, nogil=True)
def _mel_kernel(spec, ptr, mel, weight, half_power, out, out_col):  # pragma: no cover - jitted
    """spec complex128 [B, F, n_bins] -> out[b, :, out_col + f] = mel power (float32, not yet in dB).

    One pass over the spectrum: each bin's power is computed once and scattered into the (at most
    two) filters it feeds; accumulation in float64."""
    n_b, n_f, n_bins = spec.shape
    n_mels = out.shape[1]
    acc = np.zeros(n_mels, np.float64)
    for b in range(n_b):
        for f in range(n_f):
            acc[:] = 0.0
            for k in range(n_bins):
                if ptr[k] == ptr[k + 1]:
                    continue
                re = spec[b, f, k].real
                im = spec[b, f, k].imag
                p = re * re + im * im
                if half_power != 1.0:
                    p = p**half_power
                for j in range(ptr[k], ptr[k + 1]):
                    acc[mel[j]] += weight[j] * p
            for m in range(n_mels):
                out[b, m, out_col + f] = acc[m]


def _blocks(n_batch: int, n_frames: int) -> Iterator[tuple[slice, slice]]:
    """(batch rows, frame columns) blocks of about ``_BLOCK_FRAMES`` frames."""
    if n_frames >= _BLOCK_FRAMES:
        for b in range(n_batch):
            for f0 in range(0, n_frames, _BLOCK_FRAMES):
                yield slice(b, b + 1), slice(f0, min(f0 + _BLOCK_FRAMES, n_frames))
    else:
        rows = max(1, _BLOCK_FRAMES // max(n_frames, 1))
        for b0 in range(0, n_batch, rows):
            yield slice(b0, min(b0 + rows, n_batch)), slice(0, n_frames)


def frames_db(padded: np.ndarray, n_frames: int, *, params: FeatureParams) -> np.ndarray:
    """Log-mel of ``n_frames`` frames read from already-padded audio: frame ``t`` is
    ``padded[..., t*hop : t*hop + n_fft]``. ``[..., L] -> [..., n_mels, n_frames]`` float32 dB.

    The building block of :func:`log_mel` (which pads ``n_fft//2`` zeros on the left) and of the
    streaming windower (which keeps the padded tail between chunks).
    """
    x = np.asarray(padded)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"audio must be float32 or float64 in [-1, 1], got {x.dtype}")
    n_fft, hop = params.n_fft, params.hop_length
    need = 0 if n_frames == 0 else (n_frames - 1) * hop + n_fft
    if n_frames < 0 or x.shape[-1] < need:
        raise ValueError(f"{n_frames} frames need {need} padded samples, got {x.shape[-1]}")
    lead = x.shape[:-1]
    out = np.empty((*lead, params.n_mels, n_frames), np.float32)
    if n_frames == 0 or out.size == 0:
        return out
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    out2 = out.reshape(-1, params.n_mels, n_frames)
    item = x2.strides[1]
    frames = np.lib.stride_tricks.as_strided(
        x2, shape=(x2.shape[0], n_frames, n_fft), strides=(x2.strides[0], hop * item, item), writeable=False
    )
    window = hann_window(n_fft)
    ptr, mel, weight = _bank_by_bin(params)
    half_power = float(params.power) / 2.0
    for rows, cols in _blocks(x2.shape[0], n_frames):
        windowed = np.multiply(frames[rows, cols], window, dtype=np.float64)
        spec = scipy.fft.rfft(windowed, axis=-1, overwrite_x=True)
        _mel_kernel(spec, ptr, mel, weight, half_power, out2[rows], cols.start)
    # dB in one vectorised pass: 10*log10(x) as ln(x) * 10/ln(10); numpy's float32 log is SIMD and
    # ~3x faster than its log10, and a scalar log inside the kernel would cost more than the FFT.
    np.maximum(out, np.float32(params.amin), out=out)
    np.log(out, out=out)
    out *= np.float32(10.0 / np.log(10.0))
    return out


def log_mel(audio: np.ndarray, *, params: FeatureParams) -> np.ndarray:
    """Log-mel spectrogram in dB: ``[..., n_samples]`` float audio -> ``[..., n_mels, n_frames]`` float32.

    ``n_frames = complete_frames(n_samples, params)``; vectorised over all leading dimensions (many
    clips or machines at once). ``audio`` must already be at ``params.sample_rate``
    (:func:`features.audio_io.read_audio` resamples files).
    """
    x = np.asarray(audio)
    if x.ndim == 0:
        raise ValueError("audio must have a time axis: [..., n_samples]")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"audio must be float in [-1, 1], got {x.dtype} (PCM16: divide by 32768)")
    n = complete_frames(x.shape[-1], params)
    pad = params.n_fft // 2
    padded = np.zeros((*x.shape[:-1], pad + x.shape[-1]), dtype=x.dtype if x.dtype == np.float64 else np.float32)
    padded[..., pad:] = x
    return frames_db(padded, n, params=params)
