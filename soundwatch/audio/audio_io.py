"""Reading audio files the one way training, evaluation, ``features extract`` and the replay gateway do."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from soundwatch.errors import BadInput

log = logging.getLogger(__name__)

__all__ = ["audio_info", "read_audio"]


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """``(sample_rate, n_samples, channels)`` from the file header, without decoding the audio.

    Raises :class:`~soundwatch.errors.BadInput` when the file cannot be opened or parsed.
    """
    import soundfile as sf  # deferred: loads soundfile

    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError, sf.LibsndfileError) as exc:  # LibsndfileError subclasses RuntimeError
        raise BadInput(f"{path}: {_reason(exc, path)}", "check that the file exists and is WAV/FLAC/OGG audio") from exc
    return int(info.samplerate), int(info.frames), int(info.channels)


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate``.

    * Multichannel files: **channel 0 only** (MIMII/DCASE convention: channel 0 is the reference
      microphone); channels are not mixed, which would change the spectrum.
    * A file at another rate is resampled with soxr (``"HQ"``) and a warning names the file and both
      rates: features are only comparable at one rate.
    * Raises :class:`~soundwatch.errors.BadInput` (``"<path>: <reason>"``) for a missing, unreadable
      or corrupt file, a file with no samples, or one with NaN/inf samples.
    """
    import soundfile as sf  # deferred: loads soundfile

    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, sf.LibsndfileError) as exc:
        raise BadInput(f"{path}: {_reason(exc, path)}", "check that the file exists and is WAV/FLAC/OGG audio") from exc
    if data.shape[0] == 0:
        raise BadInput(f"{path}: the file holds no samples", "remove or replace the empty file")
    audio = np.ascontiguousarray(data[:, 0])
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise BadInput(f"{path}: {bad} of {audio.size} samples are NaN or inf", "re-export the file")
    if file_rate != sample_rate:
        import soxr  # deferred: loads soxr

        log.warning(
            "%s: resampling from %d Hz to %d Hz (features are defined at %d Hz)",
            path,
            file_rate,
            sample_rate,
            sample_rate,
        )
        audio = soxr.resample(audio, file_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return audio


def _reason(exc: BaseException, path: str | Path | None = None) -> str:
    if path is not None and not Path(path).exists():
        return "no such file"
    text = str(exc).strip() or type(exc).__name__
    # soundfile prefixes "Error opening '<path>': "; the caller already names the file
    if text.startswith("Error opening") and "': " in text:
        text = text.split("': ", 1)[1]
    return text
