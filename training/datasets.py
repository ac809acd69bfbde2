"""DCASE-layout folders -> clip records -> feature windows.

Two naming schemes are understood (both under ``<root>/<machine_type>/<split>/``):

* DCASE 2020 Task 2: ``{normal,anomaly}_id_XX_NNNNNNNN.wav`` -> machine_id ``id_XX``.
* DCASE 2021+: ``section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_<attrs>].wav`` ->
  machine_id ``section_XX``, domain, attribute string (e.g. ``car_A1_spd_28V_mic_1``).
* DCASE 2021+ evaluation clips without a label: ``section_XX_NNNN.wav`` (2022+) or
  ``section_XX_{source,target}_test_NNNN.wav`` (2021), test split only -> label ``unknown``; only
  :func:`scan_dataset` with ``unlabelled=True`` returns them (``evaluate`` scores them, no AUC).

``root`` may be a dataset root holding machine-type folders or one machine-type folder
(``<type>/{train,test}``). Windows come from :func:`soundwatch.audio.windows.offline_windows` — the same
function the stream's windows are checked against — so training sees exactly what is scored
online. Unusable files (corrupt, wrong sample rate, shorter than one window) are reported with
the file and the reason and skipped; they never stop a run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from soundwatch.audio.audio_io import audio_info, read_audio
from soundwatch.errors import BadInput
from soundwatch.params import FeatureParams

log = logging.getLogger(__name__)

Label = Literal["normal", "anomaly", "unknown"]
Split = Literal["train", "test"]
AUDIO_SUFFIXES = (".wav", ".flac")

_DCASE2020 = re.compile(r"^(?P<label>normal|anomaly)_(?P<id>id_\d+)_(?P<index>\d+)$")
_DCASE2021 = re.compile(
    r"^section_(?P<section>\d+)_(?P<domain>source|target)_(?P<split>train|test)_(?P<label>normal|anomaly)"
    r"_(?P<index>\d+)(?:_(?P<attrs>.+))?$"
)
_DCASE_EVAL = re.compile(r"^section_(?P<section>\d+)(?:_(?P<domain>source|target)_test)?_(?P<index>\d+)$")
SCHEMES = (
    "DCASE 2020: <type>/{train,test}/{normal,anomaly}_id_XX_NNNNNNNN.wav",
    "DCASE 2021+: <type>/{train,test}/section_XX_{source,target}_{train,test}_{normal,anomaly}_NNNN[_attrs].wav",
    "DCASE 2021+ evaluation (unlabelled): <type>/test/section_XX[_{source,target}_test]_NNNN.wav",
)


@dataclass(frozen=True)
class ClipRecord:
    path: Path
    machine_type: str
    machine_id: str  # "id_XX" (2020) or "section_XX" (2021+)
    label: Label
    split: Split
    scheme: Literal["dcase2020", "dcase2021"]
    section: str | None = None
    domain: str | None = None
    attributes: str = ""

    @property
    def is_anomaly(self) -> bool:
        return self.label == "anomaly"

    @property
    def is_labelled(self) -> bool:
        return self.label != "unknown"


def parse_clip_name(path: Path, machine_type: str, split: Split) -> ClipRecord | None:
    """A record for ``path`` if its name follows one of the two schemes, else None."""
    stem = path.stem
    m = _DCASE2020.match(stem)
    if m:
        return ClipRecord(path, machine_type, m["id"], m["label"], split, "dcase2020")  # type: ignore[arg-type]
    m = _DCASE2021.match(stem)
    if m:
        section = f"section_{m['section']}"
        return ClipRecord(
            path,
            machine_type,
            section,
            m["label"],
            split,
            "dcase2021",  # type: ignore[arg-type]
            section=section,
            domain=m["domain"],
            attributes=m["attrs"] or "",
        )
    m = _DCASE_EVAL.match(stem)
    if m and split == "test":
        section = f"section_{m['section']}"
        return ClipRecord(
            path, machine_type, section, "unknown", split, "dcase2021", section=section, domain=m["domain"]
        )
    return None


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


def _type_dirs(root: Path) -> list[Path]:
    if (root / "train").is_dir() or (root / "test").is_dir():
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir()))


def scan_dataset(root: Path | str, machine_type: str | None = None, *, unlabelled: bool = False) -> list[ClipRecord]:
    """All labelled clips under ``root`` (optionally one machine type), sorted by path.

    With ``unlabelled``, unlabelled evaluation clips (``section_XX_NNNN.wav``) are included too;
    without it they are left out (training and method selection need labels).

    Raises BadInput when ``root`` has no ``<type>/{train,test}`` folders or when a split folder
    holds audio files of which none follows a known scheme. Single stray files that match
    neither scheme are logged and skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"data folder {root} does not exist", hint="pass --data pointing at a DCASE-layout folder")
    dirs = _type_dirs(root)
    if not dirs:
        raise BadInput(
            f"{root} has no machine-type folders with train/ or test/ inside",
            hint="expected one of: " + "; ".join(SCHEMES),
        )
    if machine_type is not None:
        dirs = [d for d in dirs if d.name == machine_type]
        if not dirs:
            have = ", ".join(d.name for d in _type_dirs(root))
            raise BadInput(f"machine type {machine_type!r} not found under {root}", hint=f"types found: {have}")
    records: list[ClipRecord] = []
    for tdir in dirs:
        for split in ("train", "test"):
            folder = tdir / split
            if not folder.is_dir():
                continue
            files = _audio_files(folder)
            parsed = [parse_clip_name(p, tdir.name, split) for p in files]  # type: ignore[arg-type]
            bad = [p for p, r in zip(files, parsed, strict=True) if r is None]
            if files and len(bad) == len(files):
                raise BadInput(
                    f"no file in {folder} follows a known naming scheme (e.g. {bad[0].name!r})",
                    hint="expected one of: " + "; ".join(SCHEMES),
                )
            for p in bad:
                log.warning("skipping %s: name follows neither DCASE scheme", p)
            records += [r for r in parsed if r is not None and (unlabelled or r.is_labelled)]
    return sorted(records, key=lambda r: str(r.path))


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class WindowSet:
    """Feature windows of many clips: ``windows[i]`` belongs to ``records[clip[i]]``."""

    records: list[ClipRecord]
    windows: np.ndarray  # [N, n_mels, W]
    clip: np.ndarray  # [N] int64 index into records
    skipped: list[Skipped] = field(default_factory=list)

    def clip_windows(self, i: int) -> np.ndarray:
        return self.windows[self.clip == i]

    def machine_ids(self) -> list[str]:
        return [self.records[c].machine_id for c in self.clip]


def clip_windows(path: Path, params: FeatureParams) -> np.ndarray:
    """Windows ``[N, n_mels, W]`` of one file, or BadInput with the file and the reason."""
    from soundwatch.audio.windows import offline_windows  # deferred: loads numba, scipy

    try:
        sr, n_samples, _channels = audio_info(path)
    except BadInput:
        raise
    except Exception as exc:  # soundfile/audioread raise many types for corrupt files
        raise BadInput(f"{path}: unreadable audio ({type(exc).__name__}: {exc})") from exc
    if sr != params.sample_rate:
        raise BadInput(
            f"{path}: sample rate {sr} Hz, the model uses {params.sample_rate} Hz",
            hint="resample the file or train with matching feature parameters",
        )
    min_samples = (params.window_frames - 1) * params.hop_length + 1
    if n_samples < min_samples:
        raise BadInput(f"{path}: {n_samples / sr:.2f} s is shorter than one window ({params.window_seconds:.2f} s)")
    try:
        audio = read_audio(path, params.sample_rate)
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput(f"{path}: unreadable audio ({type(exc).__name__}: {exc})") from exc
    windows, _starts = offline_windows(audio, params=params)
    if windows.shape[0] == 0:
        raise BadInput(f"{path}: too short for one window")
    if not np.isfinite(windows).all():
        raise BadInput(f"{path}: features contain NaN/inf")
    return windows


def load_windows(
    records: Sequence[ClipRecord],
    params: FeatureParams,
    *,
    dtype: type = np.float32,
    desc: str = "features",
    progress: bool = True,
) -> WindowSet:
    """Windows of all ``records``; bad files land in ``skipped`` (also logged), not in an exception."""
    kept: list[ClipRecord] = []
    chunks: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    skipped: list[Skipped] = []
    for rec in tqdm(records, desc=desc, unit="clip", disable=not progress, leave=False):
        try:
            w = clip_windows(rec.path, params)
        except BadInput as exc:
            skipped.append(Skipped(rec.path, exc.message))
            log.warning("skipping %s", exc.message)
            continue
        owners.append(np.full(w.shape[0], len(kept), dtype=np.int64))
        kept.append(rec)
        chunks.append(w.astype(dtype, copy=False))
    if chunks:
        windows = np.concatenate(chunks)
        clip = np.concatenate(owners)
    else:
        windows = np.zeros((0, params.n_mels, params.window_frames), dtype=dtype)
        clip = np.zeros(0, dtype=np.int64)
    return WindowSet(kept, windows, clip, skipped)


def summarize(records: Iterable[ClipRecord]) -> dict[str, object]:
    """Counts per machine id / label / domain for the artifact's data summary."""
    counts: dict[str, int] = {}
    for r in records:
        key = f"{r.machine_id}/{r.split}/{r.label}" + (f"/{r.domain}" if r.domain else "")
        counts[key] = counts.get(key, 0) + 1
    return {"clips": sum(counts.values()), "counts": dict(sorted(counts.items()))}
