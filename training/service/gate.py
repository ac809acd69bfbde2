"""The promotion gate: a retrained candidate replaces the current model only if it is not worse.

Both models are scored on the same evaluation clips, each with its *own* per-machine thresholds
and median filter (exactly what the stream would do with it):

* ``confirmed`` — held-out blocks of the newly confirmed-normal audio (never used for fitting
  or threshold calibration);
* ``validation`` — the earlier validation set: the held-out normal clips of the original
  training data;
* ``test`` — labelled clips (normal + anomaly) where they exist (the DCASE ``test/`` split).

Measures: the false-alarm rate (FAR) = the fraction of median-filtered window scores above the
machine's threshold on *normal* clips of each source; on labelled clips AUC and pAUC
(``max_fpr=0.1``) of clip scores (:func:`soundwatch.model.filters.clip_score`), averaged over machines.

Rule: for every measure that both models have, the candidate may be worse than the current model
by at most the tolerance (FAR up by ``far_tolerance``; AUC / pAUC down by ``auc_tolerance`` /
``pauc_tolerance``). Using the labelled test split here is a *regression check* of one
candidate, not model selection, so it does not tune anything on test data. Every check is kept
with its numbers, and a failing gate's reasons are sentences an operator can act on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
from sklearn.metrics import roc_auc_score

from soundwatch.model.filters import causal_median, clip_score
from soundwatch.settings import GateSettings

SOURCES = ("confirmed", "validation", "test")


class GatedModel(Protocol):
    """What the gate needs of a model (``soundwatch.model.registry.LoadedModel`` has it)."""

    median_k: int

    def score_windows(self, windows: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray: ...

    def threshold_for(self, machine_id: str) -> float: ...


@dataclass(frozen=True)
class EvalClip:
    """Windows of one contiguous stretch of a machine's audio (a clip or an archive block)."""

    machine_id: str
    windows: np.ndarray  # [N, n_mels, W], in time order
    source: str  # one of SOURCES
    anomalous: bool = False


@dataclass
class ModelReport:
    """Measures of one model on the evaluation clips; ``None`` where a source had no data."""

    far: dict[str, float | None] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    auc: float | None = None
    pauc: float | None = None
    per_machine: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    name: str
    candidate: float
    current: float | None
    limit: float
    passed: bool
    text: str


@dataclass
class GateDecision:
    passed: bool
    checks: list[Check]
    candidate: ModelReport
    current: ModelReport | None
    config: GateSettings

    @property
    def reasons(self) -> list[str]:
        """Why the gate failed (empty when it passed)."""
        return [c.text for c in self.checks if not c.passed]

    def summary(self) -> str:
        if self.passed:
            return "passed: " + "; ".join(c.text for c in self.checks) if self.checks else "passed (nothing to compare)"
        return "refused: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
            "candidate": asdict(self.candidate),
            "current": asdict(self.current) if self.current is not None else None,
            "config": self.config.model_dump(),
        }


def _pauc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s, max_fpr=0.1))


def evaluate(model: GatedModel, clips: Sequence[EvalClip]) -> ModelReport:
    """FAR per source (normal clips) and AUC/pAUC on labelled clips, as the stream would score."""
    report = ModelReport()
    over: dict[str, list[int]] = {s: [0, 0] for s in SOURCES}
    clip_rows: dict[str, list[tuple[float, int]]] = {}
    for clip in clips:
        if len(clip.windows) == 0:
            continue
        raw = model.score_windows(clip.windows, [clip.machine_id] * len(clip.windows))
        if not clip.anomalous:
            filtered = causal_median(raw, model.median_k)
            thr = model.threshold_for(clip.machine_id)
            over[clip.source][0] += int((filtered > thr).sum())
            over[clip.source][1] += int(filtered.size)
        if clip.source == "test":
            clip_rows.setdefault(clip.machine_id, []).append(
                (clip_score(raw, model.median_k, getattr(model, "aggregation", "mean")), int(clip.anomalous))
            )
    for source, (n_over, n) in over.items():
        report.far[source] = n_over / n if n else None
        report.windows[source] = n
    aucs, paucs = [], []
    for mid, rows in sorted(clip_rows.items()):
        y = np.array([r[1] for r in rows])
        if y.min() == y.max():
            continue  # AUC needs both labels
        s = np.array([r[0] for r in rows])
        auc, pauc = float(roc_auc_score(y, s)), _pauc(y, s)
        report.per_machine[mid] = {"auc": auc, "pauc": pauc}
        aucs.append(auc)
        paucs.append(pauc)
    if aucs:
        report.auc, report.pauc = float(np.mean(aucs)), float(np.mean(paucs))
    return report


def decide(candidate: ModelReport, current: ModelReport | None, config: GateSettings) -> GateDecision:
    """Compare the reports measure by measure (see the module docstring for the rule)."""
    checks: list[Check] = []
    if current is not None:
        for source in SOURCES:
            c, p = candidate.far.get(source), current.far.get(source)
            if c is None or p is None:
                continue
            limit = p + config.far_tolerance
            ok = c <= limit + 1e-12
            verb = "within" if ok else "exceeds"
            checks.append(
                Check(
                    f"far_{source}",
                    c,
                    p,
                    limit,
                    ok,
                    f"false-alarm rate on {source} normal audio {c:.3f} vs current {p:.3f} "
                    f"({verb} the limit {limit:.3f} = current + {config.far_tolerance})",
                )
            )
        for name, tol in (("auc", config.auc_tolerance), ("pauc", config.pauc_tolerance)):
            c, p = getattr(candidate, name), getattr(current, name)
            if c is None or p is None:
                continue
            limit = p - tol
            ok = c >= limit - 1e-12
            what = "fell to" if c < p else "is"
            verdict = "within" if ok else "below"
            text = (
                f"{name.upper()} on labelled test clips {what} {c:.3f} vs current {p:.3f} "
                f"({verdict} the limit {limit:.3f} = current - {tol})"
            )
            checks.append(Check(name, c, p, limit, ok, text))
    if config.far_target is not None and candidate.far.get("confirmed") is not None:
        c = float(candidate.far["confirmed"])  # type: ignore[arg-type]
        ok = c <= config.far_target
        checks.append(
            Check(
                "far_target",
                c,
                None,
                config.far_target,
                ok,
                f"false-alarm rate on confirmed audio {c:.3f} "
                f"({'meets' if ok else 'misses'} the target {config.far_target})",
            )
        )
    return GateDecision(all(c.passed for c in checks), checks, candidate, current, config)


def run_gate(
    candidate: GatedModel, current: GatedModel | None, clips: Sequence[EvalClip], config: GateSettings | None = None
) -> GateDecision:
    """Evaluate both models on ``clips`` and decide."""
    config = config or GateSettings()
    cand = evaluate(candidate, clips)
    cur = evaluate(current, clips) if current is not None else None
    return decide(cand, cur, config)


__all__ = ["Check", "EvalClip", "GateSettings", "GateDecision", "ModelReport", "decide", "evaluate", "run_gate"]
