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
  (float32 coefficients, exactly as ``librosa.feature.melspectrogram`` uses them). Computed here with
  the same arithmetic (:func:`mel_filterbank`, bit-equal) so workers need not import librosa.
* dB: ``10*log10(max(mel, amin))`` with reference 1.0 and no ``top_db`` clipping; ``amin`` is the floor
  (``FeatureParams.floor_db``). No per-clip normalisation, so a clip's numbers do not depend on its
  neighbours or its length.

This equals ``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0, amin=amin, top_db=None)``
on every frame we return: at most 2e-5 dB apart on the real-mini clips, where the contract allows 1e-3
(tests/features/test_features_logmel.py).

Precision and speed: the FFT runs in float64. A float32 FFT leaks the rounding error of loud low
bands into quiet high bands and misses librosa by more than 1e-3 dB on real clips with 80 dB of
dynamic range (ToyConveyor); librosa itself multiplies by a float64 window and so transforms in
float64 too. (Measured and dropped: a float32 FFT with a per-frame rounding check that recomputes
suspect frames in float64 — 7-17 % of real frames need the recompute, and the float32 loads slow the
kernel, so it was no faster.) The FFT is ducc0's (pocketfft's successor, SIMD across transforms):
1.6x scipy's float64 rfft here, as fast as scipy's float32 one. Everything around it is kept cheap,
on blocks of ~256 frames that stay in cache:

* framing is a strided view of the (float64) audio; no per-frame copy;
* the Hann window is applied in the frequency domain (``Xw[k] = X[k]/2 - (X[k-1] + X[k+1])/4``, exact
  for the periodic Hann window), so the FFT reads the raw overlapping frames;
* the FFT writes its output bin-major (frames contiguous), so the numba kernel's inner loops run over
  frames with unit stride and vectorise; the kernel squares, windows and applies the *sparse* mel
  filterbank (each FFT bin feeds at most two triangles: ~1k multiply-adds per frame instead of the 66k
  of a dense matmul) — about a third of the FFT's time;
* dB is one vectorised ``log`` over the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import ducc0
import numba
import numpy as np
from scipy.signal import get_window

from soundwatch.params import FeatureParams

if TYPE_CHECKING:  # torch is imported only by code that asks for the Module
    from soundwatch.audio.logmel_torch import LogMel

__all__ = ["LogMel", "complete_frames", "frames_db", "hann_window", "log_mel", "mel_filterbank"]

# Frames per block: the block's float64 samples and spectrum (~12 KiB per frame for n_fft=1024) stay
# around 3 MiB, inside a typical L2/L3 share, and memory stays bounded however long or many the clips.
_BLOCK_FRAMES = 256


def __getattr__(name: str) -> Any:  # lazy: `from soundwatch.audio.logmel import LogMel` imports torch only then
    if name == "LogMel":
        from soundwatch.audio.logmel_torch import LogMel  # deferred: loads torch

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


def _hz_to_mel_slaney(hz: np.ndarray) -> np.ndarray:
    """Slaney's Auditory Toolbox mel scale: linear below 1 kHz, logarithmic above (librosa ``htk=False``)."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = hz / f_sp
    log_t = hz >= min_log_hz
    mels[log_t] = min_log_mel + np.log(hz[log_t] / min_log_hz) / logstep
    return mels


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = f_sp * mels
    log_t = mels >= min_log_mel
    hz[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    return hz


@lru_cache(maxsize=16)
def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """float32 ``[n_mels, n_fft//2 + 1]`` Slaney filterbank (read-only, cached).

    The same arithmetic, step by step, as ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax,
    htk=False, norm="slaney", dtype=float32)`` — equal to it bit for bit (tested) — without importing
    librosa, whose first call costs seconds of start-up in every worker.
    """
    fmax = params.fmax if params.fmax is not None else params.sample_rate / 2
    fftfreqs = np.fft.rfftfreq(n=params.n_fft, d=1.0 / params.sample_rate)
    min_mel, max_mel = _hz_to_mel_slaney(np.array([params.fmin, fmax]))
    mel_f = _mel_to_hz_slaney(np.linspace(min_mel, max_mel, params.n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((params.n_mels, params.n_fft // 2 + 1), dtype=np.float32)
    for i in range(params.n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : params.n_mels + 2] - mel_f[: params.n_mels]))[:, np.newaxis]  # Slaney area norm
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=16)
def hann_window(n_fft: int) -> np.ndarray:
    """float64 periodic Hann window of ``n_fft`` samples (librosa's ``window="hann"``), read-only."""
    w = np.asarray(get_window("hann", n_fft, fftbins=True), dtype=np.float64)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=16)
def _bank(params: FeatureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The filterbank as ranges: filter ``m`` has weights ``weight[off[m] : off[m+1]]`` on FFT bins
    ``lo[m] : hi[m]`` (its non-zero span; float64 copies of librosa's float32 values). ~1k non-zeros for
    the defaults instead of 66k dense entries: each bin feeds at most two triangles."""
    fb = mel_filterbank(params)
    lo = np.zeros(fb.shape[0], np.int64)
    hi = np.zeros(fb.shape[0], np.int64)
    for m, row in enumerate(fb):
        nz = np.flatnonzero(row)
        if nz.size:  # an empty filter (too many mels for n_fft) stays all-zero, as in librosa
            lo[m], hi[m] = nz[0], nz[-1] + 1
    off = np.concatenate([[0], np.cumsum(hi - lo)]).astype(np.int64)
    weight = np.concatenate([fb[m, lo[m] : hi[m]] for m in range(fb.shape[0])]).astype(np.float64)
    return lo, hi, off, weight


@numba.njit(cache=True, nogil=True)
def _mel_kernel(
    spec, lo_src, lo_conj, hi_src, hi_conj, lo, hi, off, weight, half_power, amin, out, out_col, p, acc
):  # pragma: no cover - jitted
    """Unwindowed frame spectra -> ``out[r, :, out_col + f]`` = Hann-windowed mel power, floored at ``amin``
    (float32, not yet in dB).

    ``spec`` is the rfft output viewed as float64 ``[n_bins, R, 2*F]``: bin-major, the frames of a row side
    by side (interleaved re, im), so every inner loop runs over frames with unit stride and vectorises.
    The periodic Hann window is applied in the frequency domain: ``w[n] = 0.5 - 0.25 e^{+2 pi i n/N}
    - 0.25 e^{-2 pi i n/N}``, so ``Xw[k] = 0.5 X[k] - 0.25 (X[k-1] + X[k+1])`` exactly; the neighbours
    outside ``0..n_bins-1`` come from conjugate symmetry (``X[-1]`` is bin ``lo_src``, ``X[n_bins]`` is bin
    ``hi_src``, conjugated where the flag says). ``p`` (``[n_bins, F]``) and ``acc`` (``[F]``) are float64
    scratch; all arithmetic is float64 and every frame gets the same operations in the same order, so a
    frame's result does not depend on its neighbours or its block.
    """
    n_bins, n_r, two_f = spec.shape
    n_f = two_f // 2
    n_mels = lo.shape[0]
    for r in range(n_r):
        for k in range(n_bins):
            km, sm = (k - 1, 1.0) if k > 0 else (lo_src, -1.0 if lo_conj else 1.0)
            kp, sp = (k + 1, 1.0) if k < n_bins - 1 else (hi_src, -1.0 if hi_conj else 1.0)
            xc, xm, xp, pk = spec[k, r], spec[km, r], spec[kp, r], p[k]
            for f in range(n_f):
                re = 0.5 * xc[2 * f] - 0.25 * (xm[2 * f] + xp[2 * f])
                im = 0.5 * xc[2 * f + 1] - 0.25 * (sm * xm[2 * f + 1] + sp * xp[2 * f + 1])
                pk[f] = re * re + im * im
        if half_power != 1.0:
            for k in range(n_bins):
                for f in range(n_f):
                    p[k, f] = p[k, f] ** half_power
        for m in range(n_mels):
            acc[:n_f] = 0.0
            base = off[m] - lo[m]
            for k in range(lo[m], hi[m]):
                w = weight[base + k]
                pk = p[k]
                for f in range(n_f):
                    acc[f] += w * pk[f]
            om = out[r, m]
            for f in range(n_f):
                om[out_col + f] = max(acc[f], amin)


def _edge_sources(n_fft: int) -> tuple[int, bool, int, bool]:
    """Where ``X[-1]`` and ``X[n_bins]`` of a real ``n_fft``-point DFT live among bins ``0..n_fft//2``."""
    n_bins = n_fft // 2 + 1

    def source(j: int) -> tuple[int, bool]:
        j %= n_fft
        return (j, False) if j < n_bins else (n_fft - j, True)

    return (*source(-1), *source(n_bins))


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


def frames_db(audio: np.ndarray, n_frames: int, *, params: FeatureParams, pad_left: int = 0) -> np.ndarray:
    """Log-mel of ``n_frames`` frames of ``audio`` preceded by ``pad_left`` zeros: frame ``t`` covers
    padded samples ``[t*hop, t*hop + n_fft)``. ``[..., L] -> [..., n_mels, n_frames]`` float32 dB.

    The building block of :func:`log_mel` (``pad_left = n_fft//2``) and of the streaming windower
    (which keeps the already-padded tail between chunks, ``pad_left = 0``).
    """
    x = np.asarray(audio)
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"audio must be float in [-1, 1], got {x.dtype} (PCM16: divide by 32768)")
    n_fft, hop = params.n_fft, params.hop_length
    need = 0 if n_frames == 0 else (n_frames - 1) * hop + n_fft
    if n_frames < 0 or pad_left < 0 or pad_left + x.shape[-1] < need:
        raise ValueError(f"{n_frames} frames need {need} padded samples, got {pad_left} + {x.shape[-1]}")
    lead = x.shape[:-1]
    out = np.empty((*lead, params.n_mels, n_frames), np.float32)
    if n_frames == 0 or out.size == 0:
        return out
    x2 = x.reshape(-1, x.shape[-1])
    out2 = out.reshape(-1, params.n_mels, n_frames)
    n_bins = n_fft // 2 + 1
    edges = _edge_sources(n_fft)
    bank = _bank(params)
    half_power = float(params.power) / 2.0
    amin = float(np.float32(params.amin))
    blocks = list(_blocks(x2.shape[0], n_frames))
    # Scratch reused by every block (fresh multi-MiB arrays per block would cost page faults each time).
    seg_len = [(c.stop - c.start - 1) * hop + n_fft for _, c in blocks]
    seg_buf = np.empty(max((r.stop - r.start) * n for (r, _), n in zip(blocks, seg_len, strict=True)), np.float64)
    spec_buf = np.empty(n_bins * max((r.stop - r.start) * (c.stop - c.start) for r, c in blocks), np.complex128)
    p = np.empty((n_bins, _BLOCK_FRAMES), np.float64)
    acc = np.empty(_BLOCK_FRAMES, np.float64)
    for (rows, cols), length in zip(blocks, seg_len, strict=True):
        # The block's samples in float64, once per sample (frames overlap 2x, so not per frame), zero
        # padding included; the FFT then reads the overlapping frames through a strided view and writes
        # the spectra bin-major (frames contiguous) for the kernel.
        a = cols.start * hop - pad_left  # first unpadded sample of the block (< 0: inside the zero padding)
        n_rows, n_cols = rows.stop - rows.start, cols.stop - cols.start
        seg = seg_buf[: n_rows * length].reshape(n_rows, length)
        seg[:, : max(0, -a)] = 0.0
        seg[:, max(0, -a) :] = x2[rows, max(0, a) : a + length]
        frames = np.lib.stride_tricks.as_strided(
            seg, shape=(n_rows, n_cols, n_fft), strides=(seg.strides[0], hop * 8, 8), writeable=False
        )
        spec = spec_buf[: n_bins * n_rows * n_cols].reshape(n_bins, n_rows, n_cols)
        ducc0.fft.r2c(frames, axes=(2,), out=spec.transpose(1, 2, 0), nthreads=1)
        _mel_kernel(spec.view(np.float64), *edges, *bank, half_power, amin, out2[rows], cols.start, p, acc)
    # dB in one vectorised pass: 10*log10(x) as ln(x) * 10/ln(10); numpy's float32 log is SIMD and
    # ~3x faster than its log10, and a scalar log inside the kernel would cost more than the FFT.
    np.log(out, out=out)
    out *= np.float32(10.0 / np.log(10.0))
    return out


def log_mel(audio: np.ndarray, *, params: FeatureParams) -> np.ndarray:
    """Log-mel spectrogram in dB: ``[..., n_samples]`` float audio -> ``[..., n_mels, n_frames]`` float32.

    ``n_frames = complete_frames(n_samples, params)``; vectorised over all leading dimensions (many
    clips or machines at once). ``audio`` must already be at ``params.sample_rate``
    (:func:`soundwatch.audio.audio_io.read_audio` resamples files).
    """
    x = np.asarray(audio)
    if x.ndim == 0:
        raise ValueError("audio must have a time axis: [..., n_samples]")
    return frames_db(x, complete_frames(x.shape[-1], params), params=params, pad_left=params.n_fft // 2)
