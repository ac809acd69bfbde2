"""Score a micro-batch of feature windows. No Kafka, no InfluxDB: the worker and the benchmark share it.

For each machine type in the batch: find the current model (unknown type ->
rejected), refuse windows whose feature parameters or shape differ from the
model's, run one batched forward pass (CUDA with autocast when the model lives
there, CPU otherwise, always under ``torch.inference_mode``), then per window, in
stream order: median filter (``k = model.median_k``), the machine ID's
threshold, the alert state machine. Window scores come from
``LoadedModel.score_windows`` — the same function ``evaluate`` uses.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from scoring.alerts import Observation
from scoring.batcher import chunks
from scoring.models import ModelCache, ScoringModel
from scoring.state import StateTable
from soundwatch.contracts import AlertEvent, ContractError, FeatureWindow, Reason, Score
from soundwatch.params import FeatureParams

log = logging.getLogger(__name__)

C = TypeVar("C")  # caller's context per window (the worker passes the Kafka record)


@dataclass(frozen=True)
class Scored(Generic[C]):
    window: FeatureWindow
    context: C
    score: Score
    alert: AlertEvent | None


@dataclass(frozen=True)
class Rejected(Generic[C]):
    context: C
    error: ContractError


@dataclass
class BatchResult(Generic[C]):
    scored: list[Scored[C]]
    rejected: list[Rejected[C]]
    inference_s: float = 0.0


def _inference_context(device: str) -> contextlib.AbstractContextManager:
    # no autocast here: the model's scorer enters it once (soundwatch.model.device.autocast)
    return torch.inference_mode()


class ParamsCheck:
    """Compare a window's feature-parameter JSON with a model's, caching verdicts per distinct string."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], str | None] = {}

    def problem(self, window_params: str, model: ScoringModel) -> str | None:
        expected = model.feature_params
        key = (window_params, expected.fingerprint())
        if key not in self._cache:
            self._cache[key] = self._compare(window_params, expected, model)
            if len(self._cache) > 1024:  # unbounded variety means garbage input; keep memory flat
                self._cache.clear()
        return self._cache[key]

    @staticmethod
    def _compare(window_params: str, expected: FeatureParams, model: ScoringModel) -> str | None:
        if window_params == expected.canonical_json():
            return None
        try:
            got = FeatureParams.from_json(window_params)
        except ValueError as exc:
            return f"feature_params is not valid FeatureParams JSON: {str(exc)[:300]}"
        diff = got.differences(expected)
        if not diff:
            return None
        fields = ", ".join(f"{name}: window {a!r} vs model {b!r}" for name, (a, b) in sorted(diff.items()))
        return (
            f"window computed with feature parameters that differ from model "
            f"{model.machine_type}/{model.version}: {fields}"
        )


class ScoringCore(Generic[C]):
    """Stateful scorer: owns the per-machine states; the model cache decides versions."""

    def __init__(self, models: ModelCache, states: StateTable, *, max_batch: int, default_k: int) -> None:
        self.models = models
        self.states = states
        self.max_batch = max_batch
        self.default_k = default_k  # used when a model artifact does not name its median filter length
        self._params = ParamsCheck()

    def process(self, items: Sequence[tuple[FeatureWindow, C]]) -> BatchResult[C]:
        """Score ``items`` (one micro-batch, stream order kept per machine)."""
        result: BatchResult[C] = BatchResult([], [])
        by_type: dict[str, list[tuple[FeatureWindow, C]]] = {}
        for window, ctx in items:
            by_type.setdefault(window.machine_type, []).append((window, ctx))
        self.states.prefetch(f"{w.machine_type}/{w.machine_id}" for w, _ in items)
        for machine_type, group in by_type.items():
            model = self.models.get(machine_type)
            if model is None:
                err = ContractError(Reason.UNKNOWN_MACHINE_TYPE, self.models.why_missing(machine_type))
                result.rejected.extend(Rejected(ctx, err) for _, ctx in group)
                continue
            accepted = []
            for window, ctx in group:
                problem = self._check(window, model)
                if problem is not None:
                    result.rejected.append(Rejected(ctx, problem))
                else:
                    accepted.append((window, ctx))
            if accepted:
                self._score_group(model, accepted, result)
        return result

    def _check(self, window: FeatureWindow, model: ScoringModel) -> ContractError | None:
        problem = self._params.problem(window.feature_params, model)
        if problem is not None:
            return ContractError(Reason.FEATURE_PARAMS_MISMATCH, problem)
        fp = model.feature_params
        if window.values.shape != (fp.n_mels, fp.window_frames):
            return ContractError(
                Reason.INVALID_FIELD,
                f"window shape {window.values.shape} is not the model's "
                f"[n_mels={fp.n_mels}, window_frames={fp.window_frames}]",
            )
        return None

    def _score_group(self, model: ScoringModel, group: list[tuple[FeatureWindow, C]], out: BatchResult[C]) -> None:
        scores: list[float] = []
        started = time.perf_counter()
        try:
            with _inference_context(self.models.device):
                for part in chunks(group, self.max_batch):
                    x = np.stack([w.values for w, _ in part])
                    ids = [w.machine_id for w, _ in part]
                    part_scores = np.asarray(model.score_windows(x, ids), dtype=np.float64).reshape(-1)
                    if part_scores.size != len(part):
                        raise ValueError(f"score_windows returned {part_scores.size} scores for {len(part)} windows")
                    scores.extend(float(s) for s in part_scores)
        except Exception as exc:  # a failing model must not stop the worker; the records stay replayable in the DLQ
            log.exception("model %s/%s failed on a batch of %d windows", model.machine_type, model.version, len(group))
            err = ContractError(
                Reason.INVALID_FIELD,
                f"model {model.machine_type}/{model.version} failed on this window: {type(exc).__name__}: {exc}",
            )
            out.rejected.extend(Rejected(ctx, err) for _, ctx in group)
            return
        finally:
            out.inference_s += time.perf_counter() - started
        for (window, ctx), raw in zip(group, scores, strict=True):
            if not math.isfinite(raw):
                out.rejected.append(
                    Rejected(
                        ctx,
                        ContractError(
                            Reason.NON_FINITE,
                            f"model {model.machine_type}/{model.version} scored this window {raw}",
                        ),
                    )
                )
                continue
            try:
                out.scored.append(self._finish(model, window, ctx, raw))
            except ContractError as exc:  # e.g. a non-finite threshold in the artifact: refuse, do not crash
                out.rejected.append(Rejected(ctx, exc))

    def _finish(self, model: ScoringModel, window: FeatureWindow, ctx: C, raw: float) -> Scored[C]:
        key = f"{window.machine_type}/{window.machine_id}"
        state = self.states.get(key, model.version, int(getattr(model, "median_k", 0) or self.default_k))
        median = state.filter(window.end_ns, raw)
        threshold = float(model.threshold_for(window.machine_id))
        obs = Observation(window.machine_type, window.machine_id, model.version, window.end_ns, median, threshold)
        alert = state.alert_step(obs)
        score = Score(
            machine_type=window.machine_type,
            machine_id=window.machine_id,
            model_version=model.version,
            timestamp_ns=window.end_ns,
            score=raw,
            score_median=median,
            threshold=threshold,
            anomalous=obs.anomalous,
            segment=window.segment,
            start_frame=window.start_frame,
            origin_ns=window.origin_ns,
        )
        return Scored(window, ctx, score, alert)
