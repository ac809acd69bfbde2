"""Label-free choices: the held-out split by recording and the pseudo-anomaly criterion.

Held-out split (:func:`split_holdout`): per machine, clips of the same operating condition
(domain + attributes) sorted by name; a contiguous block of ``round(fraction * n)`` of them is held
out (at least one per machine with two or more clips). Clips cut from one recording carry
consecutive numbers, so a block keeps a recording on one side (except at most at its two edges),
where a random pick would put neighbouring seconds of one recording on both sides and flatter the model.

Criterion (:func:`criterion`): clip-level AUC of held-out normal clips against pseudo-anomalous
copies of them (:mod:`training.pseudo`), per kind (``short``, ``steady``), averaged over the two
kinds so that a family cannot win on one kind of fault alone. Clip scores use the stream's median
filter and the clip aggregation, so the same numbers choose ``median_k`` and the aggregation
(:func:`choose_pooling`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from soundwatch.model.filters import clip_score
from soundwatch.params import FeatureParams
from training.datasets import ClipRecord
from training.pseudo import KINDS, pseudo_windows

POOLING_TIE = 0.005
# (median_k, aggregation) in order of preference on ties: the stream's default filter first.
POOLINGS: tuple[tuple[int, str], ...] = (
    (3, "mean"),
    (5, "mean"),
    (1, "mean"),
    (3, "top3"),
    (1, "top3"),
    (5, "top3"),
    (1, "max"),
    (3, "max"),
    (5, "max"),
)


def split_holdout(
    records: Sequence[ClipRecord], fraction: float, seed: int
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """(fit, holdout): per machine and condition a contiguous block of clips held out (module docstring)."""
    rng = np.random.default_rng(seed)
    fit: list[ClipRecord] = []
    hold: list[ClipRecord] = []
    for mid in sorted({r.machine_id for r in records}):
        mine = [r for r in records if r.machine_id == mid]
        groups: dict[tuple[str, str], list[ClipRecord]] = {}
        for r in sorted(mine, key=lambda r: str(r.path)):
            groups.setdefault((r.domain or "", r.attributes), []).append(r)
        held: list[ClipRecord] = []
        for key in sorted(groups):
            g = groups[key]
            n = round(fraction * len(g))
            if n:
                start = int(rng.integers(len(g) - n + 1))
                held += g[start : start + n]
        if not held and len(mine) >= 2:
            largest = max(groups.values(), key=len)
            held = [largest[-1]]
        fit += [r for r in sorted(mine, key=lambda r: str(r.path)) if r not in held]
        hold += sorted(held, key=lambda r: str(r.path))
    return fit, hold


@dataclass
class PseudoSet:
    """Held-out normal clips and their pseudo-anomalous copies, each as (machine_id, windows)."""

    normal: list[tuple[str, np.ndarray]]
    pseudo: dict[str, list[tuple[str, np.ndarray]]]

    @classmethod
    def make(
        cls, clips: Sequence[tuple[str, np.ndarray]], params: FeatureParams, seed: int = 0, copies: int = 2
    ) -> PseudoSet:
        """``copies`` pseudo-anomalous versions of each normal clip per kind (seeded)."""
        rng = np.random.default_rng(seed)
        pseudo = {
            kind: [(m, pseudo_windows(w, kind, rng, params)) for m, w in clips for _ in range(copies)] for kind in KINDS
        }
        return cls(list(clips), pseudo)


@dataclass
class ScoredSet:
    """Raw window scores of a :class:`PseudoSet` (scored once, pooled many ways)."""

    normal: list[np.ndarray]
    pseudo: dict[str, list[np.ndarray]]


def score_set(score_fn: Callable[[np.ndarray, Sequence[str]], np.ndarray], ps: PseudoSet) -> ScoredSet:
    def run(clips: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        return [np.asarray(score_fn(w, [m] * len(w)), dtype=np.float64) for m, w in clips]

    return ScoredSet(run(ps.normal), {k: run(v) for k, v in ps.pseudo.items()})


def criterion(scored: ScoredSet, median_k: int, aggregation: str) -> dict[str, float]:
    """AUC per pseudo-anomaly kind and their ``mean`` (module docstring)."""
    normal = [clip_score(s, median_k, aggregation) for s in scored.normal]
    out = {}
    for kind, clips in scored.pseudo.items():
        pseudo = [clip_score(s, median_k, aggregation) for s in clips]
        y = np.r_[np.zeros(len(normal)), np.ones(len(pseudo))]
        out[kind] = float(roc_auc_score(y, np.r_[normal, pseudo]))
    out["mean"] = float(np.mean([out[k] for k in scored.pseudo]))
    return out


def choose_pooling(scored: ScoredSet) -> tuple[int, str, dict[str, dict[str, float]]]:
    """(median_k, aggregation, table): the best criterion; ties within POOLING_TIE go to the earlier of POOLINGS."""
    table = {f"k{k}-{agg}": criterion(scored, k, agg) for k, agg in POOLINGS}
    best = max(v["mean"] for v in table.values())
    for k, agg in POOLINGS:
        if best - table[f"k{k}-{agg}"]["mean"] <= POOLING_TIE:
            return k, agg, table
    raise AssertionError("unreachable: the best pooling is within the tie margin of itself")
