"""A thin torch Module over the log-mel definition of :mod:`soundwatch.audio.logmel` (for GPU batches).

Same frames, window, filterbank and dB as :func:`soundwatch.audio.logmel.log_mel`; it computes in float64
by default so it agrees with the numpy path (and librosa) within 1e-3 dB; ``dtype=torch.float32``
is faster on GPUs but can miss by a few 1e-3 dB in quiet bands of clips with 80 dB dynamic range.
"""

from __future__ import annotations

import torch

from soundwatch.audio.logmel import complete_frames, hann_window, mel_filterbank
from soundwatch.params import FeatureParams


class LogMel(torch.nn.Module):
    """``[..., n_samples]`` float audio -> ``[..., n_mels, complete_frames(n_samples)]`` float32 dB.

    Filterbank and window are buffers, so ``.to(device)`` moves them with the module.
    """

    window: torch.Tensor
    filterbank: torch.Tensor

    def __init__(self, params: FeatureParams | None = None, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.params = params or FeatureParams()
        self.compute_dtype = dtype
        self.register_buffer("window", torch.from_numpy(hann_window(self.params.n_fft).copy()).to(dtype))
        fb = torch.from_numpy(mel_filterbank(self.params).T.copy()).to(dtype)  # [n_bins, n_mels]
        self.register_buffer("filterbank", fb)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        p = self.params
        if not audio.is_floating_point():
            raise TypeError(f"audio must be float in [-1, 1], got {audio.dtype}")
        n_frames = complete_frames(audio.shape[-1], p)
        if n_frames == 0:
            return audio.new_zeros((*audio.shape[:-1], p.n_mels, 0), dtype=torch.float32)
        pad = p.n_fft // 2
        x = torch.nn.functional.pad(audio.to(self.compute_dtype), (pad, 0))
        frames = x.unfold(-1, p.n_fft, p.hop_length)[..., :n_frames, :]  # [..., F, n_fft]
        spec = torch.fft.rfft(frames * self.window)
        power = spec.real.square() + spec.imag.square()
        if p.power != 2.0:
            power = power.pow(p.power / 2.0)
        mel = (power @ self.filterbank).to(torch.float32)  # [..., F, n_mels]
        db = mel.clamp_min(p.amin).log10().mul(10.0)
        return db.transpose(-1, -2).contiguous()

    def extra_repr(self) -> str:
        return f"params={self.params.canonical_json()}, dtype={self.compute_dtype}"
