"""Feature parameters: the one typed object shared by training, evaluation and the stream.

It is saved in every model artifact and carried (as canonical JSON) in every
feature-window message, so a scoring worker can refuse windows computed with
parameters other than its model's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FeatureParams(BaseModel):
    """Log-mel front end and sliding-window parameters.

    Filterbank: librosa's Slaney-style mel scale (``htk=False``) with Slaney area
    normalisation (``norm="slaney"``), ``fmin=0``, ``fmax=sample_rate/2`` — the
    defaults of ``librosa.filters.mel`` and of the DCASE baselines.
    STFT: Hann window of ``n_fft`` samples, centred frames with zero padding
    (``center=True, pad_mode="constant"``) so frame ``t`` covers samples around
    ``t * hop_length``. Power spectrum ``|X|**power``, then
    ``10*log10(max(mel, amin))`` with ``amin`` giving the dB floor (no per-clip
    max normalisation: that would make stream and training disagree).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_rate: int = Field(16_000, gt=0)
    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(128, gt=0)
    power: float = Field(2.0, gt=0)
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = None
    amin: float = Field(1e-10, gt=0, description="power floor before dB; -100 dB at 1e-10")
    window_frames: int = Field(64, gt=0, description="frames per model input window (W)")
    hop_frames: int = Field(32, gt=0, description="frames between consecutive windows (H)")
    pad_mode: Literal["constant"] = "constant"

    @model_validator(mode="after")
    def _check(self) -> FeatureParams:
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        nyquist = self.sample_rate / 2
        if self.fmax is not None and not (self.fmin < self.fmax <= nyquist):
            raise ValueError(f"need fmin < fmax <= sample_rate/2 ({nyquist}); got fmin={self.fmin}, fmax={self.fmax}")
        if self.hop_frames > self.window_frames:
            raise ValueError(f"hop_frames ({self.hop_frames}) > window_frames ({self.window_frames}) would skip audio")
        return self

    @property
    def floor_db(self) -> float:
        return 10.0 * math.log10(self.amin)

    @property
    def window_seconds(self) -> float:
        return self.window_frames * self.hop_length / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop_frames * self.hop_length / self.sample_rate

    def canonical_json(self) -> str:
        return _canonical_json(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def differences(self, other: FeatureParams) -> dict[str, tuple[object, object]]:
        """Fields whose values differ, as ``{name: (self_value, other_value)}``."""
        a, b = self.model_dump(), other.model_dump()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    @classmethod
    def from_json(cls, text: str) -> FeatureParams:
        return cls.model_validate_json(text)


@functools.lru_cache(maxsize=64)
def _canonical_json(params: FeatureParams) -> str:
    """Memoised: the stream compares every stored windower state and window against it (the model is
    frozen and hashable by value, so a changed copy is another key)."""
    return json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
