"""``soundwatch train --method auto``: train the candidate methods that fit a time budget and keep, per
machine type, the one that validates best.

``auto`` is the default method of ``soundwatch train`` (budget: 5 minutes per machine type).

Validation never touches the test split. By default it is the normal-data-only criterion every model
already computes on its held-out *normal* clips (split by recording): the clip AUC of held-out normal
clips against pseudo-anomalous copies, averaged over the two kinds — short events and steady changes
(:mod:`training.selection`); all candidates share the same held-out clips (same split seed), so the
numbers are comparable. Only when the user supplies labelled validation clips
(``--validation DIR``, DCASE layout, normal and anomalous clips of the same machines) does the mean
AUC over machine IDs on those clips decide instead (ties within 0.005 go to the cheaper method).

Candidates are tried cheapest first (:data:`AUTO_ORDER`): the statistic methods (seconds), then the
deep ones. A deep method replaces the best statistic one only when its criterion is at least
:data:`DEEP_MARGIN` higher (so deep candidates are not even trained when a statistic one scores above
``1 - DEEP_MARGIN``): with minutes of normal audio the statistic methods win on real recordings
(README, training section), and a small edge on pseudo-anomalies is not worth a model that costs
minutes to train and milliseconds per window to run. A candidate starts only when the time used
so far plus its expected time (the last candidate's time scaled by the relative costs in
:data:`RELATIVE_COST`) fits the budget; skipped ones are listed with the reason. Every trained
candidate is saved (``evaluate --compare`` can then show them side by side) with the selection table
in its metrics; the winner is saved last, so it is the type's newest version.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from soundwatch.errors import BadInput
from soundwatch.model.filters import clip_score
from soundwatch.model.registry import Artifact
from soundwatch.params import FeatureParams
from training.datasets import ClipRecord, load_windows
from training.evaluate import ClipResult, by_machine, clip_metrics
from training.methods import METHODS, STATS_METHODS, is_stats_method
from training.train import TrainConfig, TrainResult, train_machine_type

log = logging.getLogger(__name__)

AUTO_ORDER: tuple[str, ...] = (*STATS_METHODS, "ae", "clp", "geco", "semi", "sepviews", "advneg")
# Training time relative to clp at default epochs (`soundwatch bench methods`, synthetic, 2-core CPU).
RELATIVE_COST: dict[str, float] = {
    **dict.fromkeys(STATS_METHODS, 0.02),
    "ae": 0.95,
    "clp": 1.0,
    "geco": 1.2,
    "semi": 1.55,
    "sepviews": 1.65,
    "advneg": 1.95,
}
TIE_MARGIN = 0.005
DEEP_MARGIN = 0.03  # a deep method must beat the best statistic method by this much
DEFAULT_BUDGET_S = 300.0


@dataclass
class Candidate:
    method: str
    result: TrainResult | None
    criterion: float | None
    note: str


@dataclass
class AutoResult:
    winner: Candidate
    candidates: list[Candidate]
    criterion: str

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "method": c.method,
                "criterion": None if c.criterion is None else round(c.criterion, 4),
                "train_s": None if c.result is None else round(c.result.seconds, 1),
                "score": None if c.result is None else c.result.artifact.score_kind,
                "note": c.note,
                "chosen": c is self.winner,
            }
            for c in self.candidates
        ]

    def artifacts_in_save_order(self) -> list[Artifact]:
        """Losers first, the winner last (newest version), each with the selection table in its metrics."""
        table = {"criterion": self.criterion, "candidates": self.table(), "chosen": self.winner.method}
        trained = [c for c in self.candidates if c.result is not None and c is not self.winner] + [self.winner]
        out = []
        for c in trained:
            assert c.result is not None
            c.result.artifact.metrics["auto_selection"] = table
            out.append(c.result.artifact)
        return out


def parse_methods(spec: str | None) -> tuple[str, ...]:
    """``"clp,ae"`` -> ``("ae", "clp")`` in :data:`AUTO_ORDER`; ``None`` -> all methods."""
    if not spec:
        return AUTO_ORDER
    wanted = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in wanted if m not in METHODS]
    if bad or not wanted:
        raise BadInput(
            f"unknown method(s) in --methods: {', '.join(bad) or spec!r}", hint=f"choose from: {', '.join(METHODS)}"
        )
    return tuple(m for m in AUTO_ORDER if m in wanted)


def train_auto(
    records: Sequence[ClipRecord],
    params: FeatureParams,
    cfg: TrainConfig,
    *,
    methods: Sequence[str] = AUTO_ORDER,
    time_budget_s: float | None = None,
    validation: Sequence[ClipRecord] = (),
    parent_version: str | None = None,
) -> AutoResult:
    """Train ``methods`` on one machine type's records within ``time_budget_s`` and pick the best."""
    labelled = list(validation)
    use_labels = len({r.is_anomaly for r in labelled}) == 2
    criterion = (
        "mean AUC over machine IDs on the labelled validation clips"
        if use_labels
        else "mean pseudo-anomaly clip AUC (short events, steady changes) on held-out normal clips"
    )
    t0 = time.perf_counter()
    candidates: list[Candidate] = []
    last: tuple[str, float] | None = None
    for method in methods:
        elapsed = time.perf_counter() - t0
        stats_best = max(
            (c.criterion for c in candidates if c.criterion is not None and is_stats_method(c.method)), default=None
        )
        if not is_stats_method(method) and stats_best is not None and stats_best + DEEP_MARGIN > 1.0:
            note = f"skipped: the statistic methods reach {stats_best:.3f}; no method can beat that by {DEEP_MARGIN}"
            candidates.append(Candidate(method, None, None, note))
            continue
        if time_budget_s is not None and last is not None:
            expected = last[1] * RELATIVE_COST.get(method, 2.0) / RELATIVE_COST.get(last[0], 1.0)
            if elapsed + expected > time_budget_s:
                left = max(0.0, time_budget_s - elapsed)
                note = f"skipped: expected {expected:.0f} s, {left:.0f} s of the budget left"
                candidates.append(Candidate(method, None, None, note))
                continue
        result = train_machine_type(records, params, replace(cfg, method=method), parent_version=parent_version)
        last = (method, result.seconds)
        value = _labelled_auc(result.artifact, labelled) if use_labels else _heldout_criterion(result.artifact)
        candidates.append(Candidate(method, result, value, "trained"))
        log.info("auto: %s criterion %.4f (%.1f s)", method, value, result.seconds)
    trained = [c for c in candidates if c.result is not None and c.criterion is not None]
    if not trained:
        raise BadInput("no candidate method fitted the time budget", hint="raise --time-budget or pass --methods")
    return AutoResult(choose(trained), candidates, criterion)


def choose(trained: Sequence[Candidate]) -> Candidate:
    """Best criterion, cheapest within TIE_MARGIN; deep methods only when DEEP_MARGIN above every statistic one."""

    def best_of(group: list[Candidate]) -> Candidate:
        top = max(float(c.criterion or 0.0) for c in group)
        return next(c for c in group if top - float(c.criterion or 0.0) <= TIE_MARGIN)

    stats = [c for c in trained if is_stats_method(c.method)]
    deep = [c for c in trained if not is_stats_method(c.method)]
    if not stats or not deep:
        return best_of(list(trained))
    s, d = best_of(stats), best_of(deep)
    return d if float(d.criterion or 0.0) >= float(s.criterion or 0.0) + DEEP_MARGIN else s


def _heldout_criterion(artifact: Artifact) -> float:
    return float(artifact.metrics["selection"]["mean"])


def _labelled_auc(artifact: Artifact, clips: Sequence[ClipRecord]) -> float:
    """Mean AUC over machine IDs of the artifact's stream-equivalent clip scores on labelled clips."""
    scorer = artifact.scorer()
    ws = load_windows(clips, artifact.feature_params, desc="validation features", progress=False)
    scores = scorer.score(ws.windows, ws.machine_ids()) if len(ws.windows) else np.zeros(0)
    results = [
        ClipResult(rec, clip_score(scores[ws.clip == i], artifact.median_k, artifact.aggregation), math.inf)
        for i, rec in enumerate(ws.records)
    ]
    aucs = [m[0] for m in (clip_metrics(v) for v in by_machine(results).values()) if m is not None]
    if not aucs:
        raise BadInput(
            "the validation clips have no machine with both normal and anomalous clips",
            hint="--validation needs <type>/test/{normal,anomaly}_id_XX_*.wav of one machine",
        )
    return float(np.mean(aucs))
