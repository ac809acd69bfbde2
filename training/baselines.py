"""Reference baselines with no training: what every method must beat on a benchmark.

* ``max_1nn`` / ``mean_1nn`` — the per-band **max** (or **mean**) of a clip's log-mel over time, one
  ``n_mels`` vector per clip; a test clip's score is the Euclidean distance to the nearest training
  clip of the same machine ID / section (all training clips of the type when the ID has none).
  The max catches short, loud events (a click, a burst); the mean catches steady spectral changes.
* ``untrained_knn`` — a randomly initialised (seeded) encoder of the default architecture, its input
  standardised on the training windows, scored like the ``knn`` score of a trained model (mean cosine
  distance to the ``k`` nearest training-window embeddings of the machine, median filter, clip mean).
  What an encoder gives before any learning: a trained method is only useful above it.

Each baseline returns :class:`training.evaluate.ClipResult` s (threshold: the largest leave-one-clip-
out score of the training clips for the 1-NN baselines, the 99th percentile of training clip scores
for ``untrained_knn``), so :func:`training.evaluate.type_metrics` computes their numbers exactly as it
does for models.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from soundwatch.model.filters import clip_score
from soundwatch.model.networks import Encoder, EncoderConfig
from soundwatch.model.scorer import WindowScorer, subsample_bank
from training.datasets import WindowSet
from training.evaluate import ClipResult

BASELINES: tuple[str, ...] = ("max_1nn", "mean_1nn", "untrained_knn")


def clip_stats(ws: WindowSet, stat: str) -> np.ndarray:
    """``[n_clips, n_mels]``: per-band max or mean over every frame of each clip's windows."""
    n_mels = ws.windows.shape[1] if ws.windows.ndim == 3 else 0
    out = np.zeros((len(ws.records), n_mels), dtype=np.float64)
    for i in range(len(ws.records)):
        w = ws.clip_windows(i)  # [n, n_mels, W]
        frames = np.transpose(w, (1, 0, 2)).reshape(n_mels, -1)
        out[i] = frames.max(axis=1) if stat == "max" else frames.mean(axis=1)
    return out


def _nn_distance(x: np.ndarray, bank: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(((x[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2), 0.0))
    return d.min(axis=1)


def stat_1nn(train: WindowSet, test: WindowSet, stat: str) -> list[ClipResult]:
    """Per-band ``stat`` ("max" | "mean") + 1-NN to the machine's training clips (see module docstring)."""
    tr, te = clip_stats(train, stat), clip_stats(test, stat)
    tr_ids = np.array([r.machine_id for r in train.records])
    threshold: dict[str, float] = {}
    for mid in set(tr_ids):
        bank = tr[tr_ids == mid]
        if len(bank) > 1:
            loo = [_nn_distance(bank[i : i + 1], np.delete(bank, i, axis=0))[0] for i in range(len(bank))]
            threshold[mid] = float(np.max(loo))
    fallback = float(np.max(list(threshold.values()))) if threshold else float("inf")
    out = []
    for i, rec in enumerate(test.records):
        bank = tr[tr_ids == rec.machine_id] if rec.machine_id in set(tr_ids) else tr
        score = float(_nn_distance(te[i : i + 1], bank)[0])
        out.append(ClipResult(rec, score, threshold.get(rec.machine_id, fallback)))
    return out


def untrained_knn(
    train: WindowSet, test: WindowSet, *, seed: int = 0, k: int = 5, median_k: int = 5
) -> list[ClipResult]:
    """A seeded, untrained encoder + the kNN window score + the stream's clip statistic."""
    torch.manual_seed(seed)
    n_mels, frames = train.windows.shape[1], train.windows.shape[2]
    enc = Encoder(EncoderConfig(n_mels=n_mels, window_frames=frames))
    enc.norm.fit(torch.from_numpy(np.asarray(train.windows, dtype=np.float32)))
    scorer = WindowScorer("clp", "knn", enc, None, None, {}, {}, k)
    emb = scorer.embed(train.windows).numpy()
    ids = np.array(train.machine_ids())
    scorer.bank = {mid: torch.from_numpy(subsample_bank(emb[ids == mid], seed=seed)) for mid in set(ids)}
    train_scores = scorer.score(train.windows, list(ids))
    fit = [clip_score(train_scores[train.clip == i], median_k) for i in range(len(train.records))]
    threshold = float(np.percentile(fit, 99)) if fit else float("inf")
    scores = scorer.score(test.windows, test.machine_ids()) if len(test.windows) else np.zeros(0)
    return [
        ClipResult(rec, clip_score(scores[test.clip == i], median_k), threshold) for i, rec in enumerate(test.records)
    ]


def run_baseline(name: str, train: WindowSet, test: WindowSet, *, seed: int = 0) -> list[ClipResult]:
    """Clip results of baseline ``name`` (one of :data:`BASELINES`)."""
    runners: dict[str, Callable[[], list[ClipResult]]] = {
        "max_1nn": lambda: stat_1nn(train, test, "max"),
        "mean_1nn": lambda: stat_1nn(train, test, "mean"),
        "untrained_knn": lambda: untrained_knn(train, test, seed=seed),
    }
    if name not in runners:
        raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return runners[name]()
