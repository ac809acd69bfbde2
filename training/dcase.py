"""DCASE Task 2 (2021-2024) metrics exactly as each edition's official evaluator computes them.

Pure functions over (section, domain, label, score, decision) tuples; :mod:`training.evaluate` feeds
them. What the official evaluators (``dcase202X_task2_evaluator.py``) do:

* **2021** — every (section, domain) is evaluated on its own clips: AUC and pAUC of the source test
  clips, AUC and pAUC of the target test clips. Score files per domain:
  ``anomaly_score_<type>_section_XX_{source,target}_test.csv``. The ranking score is the harmonic
  mean of all AUCs and pAUCs over machine types, sections and domains.
* **2022, 2023, 2024** (their evaluators compute it identically) — per section: ``AUC (source)``
  on the source normal clips and *every* anomalous clip of the section (both domains),
  ``AUC (target)`` likewise with the target normals, and one ``pAUC`` over all clips of the section
  (both domains pooled). Score files per section: ``anomaly_score_<type>_section_XX_test.csv``.
  The official score is the harmonic mean of [all AUC (source)] + [all AUC (target)] + [all pAUC]
  (each pAUC once), values floored at ``sys.float_info.epsilon``.

pAUC is ``sklearn.metrics.roc_auc_score(y, s, max_fpr=0.1)`` in every edition: the McClish-standardised
partial AUC (chance = 0.5, perfect = 1.0), the very call the evaluators make. Decisions give the
false-alarm rate (FP / normals) and recall (TP / anomalies) at the model's threshold.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score

Edition = Literal["2021", "2022", "2023", "2024"]
EDITIONS: tuple[str, ...] = ("2021", "2022", "2023", "2024")
MAX_FPR = 0.1
DOMAINS = ("source", "target")


@dataclass(frozen=True)
class ScoredClip:
    """One test clip as the evaluator sees it; ``label`` None = unlabelled (evaluation set)."""

    name: str
    section: str  # "section_00"
    domain: str | None  # "source" | "target" | None (not in the name)
    label: int | None  # 1 anomaly, 0 normal, None unknown
    score: float
    decision: int


def _auc(y: Sequence[int], s: Sequence[float]) -> float | None:
    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(np.asarray(y), np.asarray(s)))


def _pauc(y: Sequence[int], s: Sequence[float]) -> float | None:
    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(np.asarray(y), np.asarray(s), max_fpr=MAX_FPR))


def section_metrics(clips: Sequence[ScoredClip], edition: Edition) -> dict[str, Any]:
    """The evaluator's numbers for one section of one type (unlabelled clips ignored).

    2022+: ``auc_source``, ``auc_target`` (domain normals + all anomalies), ``pauc`` (both domains).
    2021: ``auc_source``, ``pauc_source``, ``auc_target``, ``pauc_target`` (each domain's clips only).
    Always ``auc`` / ``pauc`` over the whole section (domains pooled). A value whose clips are all of
    one label (or absent) is None.
    """
    lab = [c for c in clips if c.label is not None]
    y = [int(c.label) for c in lab]  # type: ignore[arg-type]
    s = [c.score for c in lab]
    out: dict[str, Any] = {"auc": _auc(y, s), "pauc": _pauc(y, s)}
    for d in DOMAINS:
        if edition == "2021":
            mine = [c for c in lab if c.domain == d]
            yd, sd = [int(c.label) for c in mine], [c.score for c in mine]  # type: ignore[arg-type]
            out[f"auc_{d}"], out[f"pauc_{d}"] = _auc(yd, sd), _pauc(yd, sd)
        else:
            mine = [c for c in lab if c.domain == d or c.label == 1]
            if not any(c.domain == d for c in mine):
                out[f"auc_{d}"] = None
                continue
            out[f"auc_{d}"] = _auc([int(c.label) for c in mine], [c.score for c in mine])  # type: ignore[arg-type]
    return out


def official_terms(sections: Iterable[dict[str, Any]], edition: Edition) -> list[float]:
    """The values the edition's official score is the harmonic mean of (missing ones left out)."""
    secs = list(sections)
    if edition == "2021":
        keys = [f"{m}_{d}" for d in DOMAINS for m in ("auc", "pauc")]
        vals = [s.get(k) for s in secs for k in keys]
    else:
        vals = [s.get("auc_source") for s in secs] + [s.get("auc_target") for s in secs] + [s.get("pauc") for s in secs]
    return [float(v) for v in vals if v is not None]


def official_score(sections: Iterable[dict[str, Any]], edition: Edition) -> float | None:
    """Harmonic mean of :func:`official_terms`, each floored at machine epsilon as the evaluator does."""
    terms = official_terms(sections, edition)
    if not terms:
        return None
    return float(hmean(np.maximum(np.asarray(terms), sys.float_info.epsilon)))


def decision_rates(labels: Sequence[int | None], decisions: Sequence[int]) -> dict[str, Any]:
    """False-alarm rate (FP / normals), recall (TP / anomalies), precision and F1 of labelled clips."""
    y = np.asarray([lab for lab in labels if lab is not None], dtype=int)
    d = np.asarray([dec for lab, dec in zip(labels, decisions, strict=True) if lab is not None], dtype=int)
    tp = int(np.sum((y == 1) & (d == 1)))
    fp = int(np.sum((y == 0) & (d == 1)))
    fn = int(np.sum((y == 1) & (d == 0)))
    tn = int(np.sum((y == 0) & (d == 0)))
    eps = sys.float_info.epsilon
    prec = tp / max(tp + fp, eps)
    rec = tp / max(tp + fn, eps)
    return {
        "false_alarm_rate": fp / (fp + tn) if fp + tn else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "precision": prec,
        "f1": 2 * prec * rec / max(prec + rec, eps),
        "n_normal": fp + tn,
        "n_anomaly": tp + fn,
    }


def detect_edition(names: Iterable[str], attributes: Iterable[str]) -> Edition:
    """The edition a DCASE 2021+ folder follows, from its file names.

    2021 names carry no attribute string (``section_00_source_test_normal_0000.wav``) and its
    evaluation clips keep the domain (``section_03_source_test_0000.wav``); 2022-2024 add attributes
    and drop the domain from evaluation names (``section_00_0000.wav``). 2022, 2023 and 2024 share
    the metric and file names, so ``2023`` stands for all three.
    """
    names, attrs = list(names), list(attributes)
    if any(a for a in attrs):
        return "2023"
    if any(("_source_" in n or "_target_" in n) for n in names) and not any(_no_domain(n) for n in names):
        return "2021"
    return "2023"


def _no_domain(name: str) -> bool:
    return "_source_" not in name and "_target_" not in name


def score_file_names(machine_type: str, section: str, edition: Edition) -> dict[str | None, tuple[str, str]]:
    """``{domain: (anomaly score file, decision file)}`` the edition's evaluator reads for a section.

    2022+: one pair for the whole section (key None); 2021: one pair per domain.
    """
    if edition == "2021":
        return {
            d: (
                f"anomaly_score_{machine_type}_{section}_{d}_test.csv",
                f"decision_result_{machine_type}_{section}_{d}_test.csv",
            )
            for d in DOMAINS
        }
    return {
        None: (f"anomaly_score_{machine_type}_{section}_test.csv", f"decision_result_{machine_type}_{section}_test.csv")
    }
