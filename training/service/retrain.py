"""Retraining from confirmed-normal audio, read top to bottom (:func:`retrain_once`).

1. **Current model** of the machine type (Redis current, else newest on disk) and its data cutoff
   (``data_summary.data_cutoff``): only audio confirmed *after* it is new.
2. **Gather**: confirmed-normal intervals (Redis, not revoked) that end after the cutoff; their
   audio from the archive, clipped to ``[max(from, cutoff), to)``. Audio is cut into blocks of
   ``block_seconds`` (windows never straddle a block or a gap); per machine, blocks are split at
   random into *fit* / *calibration* / *gate* sets, so thresholds and the gate never see the
   audio the weights were tuned on.
3. **Replay** so the model does not forget: a random sample of the earlier training data — the
   normal training clips of the original data folder (``data_root``) and audio of earlier
   confirmed intervals still in the archive — about ``replay_ratio`` windows per new window.
4. **Update the current version** (never from scratch). Encoder methods (``clp`` and every
   :class:`training.methods.encoder.EncoderMethod`) have three ``encoder_update`` modes:

   * ``bank`` (default): no gradient steps. The encoder is kept, so the parent's kNN bank stays
     valid and *grows* by the embeddings of the new confirmed-normal windows (a full bank makes
     room for them by evicting a random part of the old rows, keeping at least half old). The
     candidate scores ``knn``: a kNN density is exactly what adapts to drift when the new normal
     joins the bank, while ``neglogp`` depends only on the unchanged weights — it could only
     "adapt" by raising thresholds, i.e. by muting the machine. Thresholds are recalibrated
     (step 5) and, when the parent also scored ``knn``, never set below the parent's: with the same
     encoder and a superset bank every kNN score is <= the parent's, so on any normal audio the
     candidate cannot raise an alarm the parent did not — the gate's false-alarm checks pass by
     construction, AUC on the earlier labelled clips is unchanged unless the new audio resembles
     their anomalies (which is what the gate should refuse: faulty audio confirmed as normal).
   * ``head`` (opt-in): the convolutional trunk, input statistics and BatchNorm statistics are
     frozen; the projection layer and the ID classifier continue the ArcFace stage on new +
     replayed windows at ``lr``; the bank is rebuilt in the new space from new windows + the replay
     pool. ``full`` (opt-in): as ``head`` with every encoder weight trainable (the issue's original
     recipe). Both keep the parent's score kind; a machine ID never seen gets a new class row.

   Why ``bank`` is the default (measured on the retraining tests' 4-epoch synthetic-fan ``clp``,
   +10 % speed drift, gate tolerances FAR 0.05 / AUC 0.05 / pAUC 0.1, target FAR 0.05):
   ``bank`` — drifted FAR 0.95 -> 0.00, AUC 0.977 -> 0.977, validation FAR 0.00 -> 0.00, 7/8
   faults still alert (the same 7 as before the drift), passes; ``head`` (lr 1e-4) — FAR -> 0.00,
   AUC 0.969, pAUC 0.901 -> 0.868, validation FAR 0.03, passes with less margin; ``full`` (lr
   2e-4) passes here but on the no-drift end-to-end round is usually refused for lost AUC. A
   ``bank`` candidate kept at the parent's ``neglogp`` got AUC 0.55 and alerted 1/8 faults; a
   ``neglogp`` parent refreshed into ``knn`` went from AUC 0.55 to 0.98 and validation FAR 0.75
   to 0.06, 7/8 faults. ``epochs``/``lr`` apply to ``head``/``full`` and to ``ae``, which always
   continues its reconstruction objective (its errors do not come from a bank). Statistic methods
   (``stats-*``) have no weights to tune: their per-machine densities are refitted on the new
   confirmed-normal windows + the replay pool, with the parent's standardiser ("refit").
5. **Recalibrate** per-machine thresholds on the calibration blocks plus the earlier validation
   clips (:func:`training.calibration.fit_threshold` on median-filtered window scores).
6. **Gate** (:mod:`training.service.gate`) candidate vs current on the gate blocks, the earlier validation
   clips and labelled test clips. The candidate is always saved, with the decision and its
   reasons in ``metrics.gate``; only a passing one becomes current (Redis SET + reload message).

``run_schedule(cron, ...)`` repeats rounds on a cron schedule (croniter); a failed round is
logged and the loop continues.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from soundwatch.errors import BadInput, SoundwatchError
from soundwatch.model.filters import causal_median
from soundwatch.model.registry import Artifact, ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.settings import ArchiveSettings, RetrainSettings, Settings
from training.calibration import fit_threshold
from training.datasets import load_windows, scan_dataset
from training.methods import method_for
from training.methods.base import FineTuned
from training.service.archive import ArchiveReader, AudioPiece
from training.service.confirmations import ConfirmationStore, ConfirmedInterval, format_time
from training.service.gate import EvalClip, GateDecision, run_gate
from training.train import split_holdout

log = logging.getLogger(__name__)

NS = 1_000_000_000
CLIP_WINDOWS = 8  # windows of a 10 s clip: sizes how many earlier clips to load for replay


@dataclass
class ArchiveBlock:
    """Windows of one block of confirmed audio."""

    machine_id: str
    windows: np.ndarray
    start_ns: int
    interval_id: int


@dataclass
class RetrainOutcome:
    machine_type: str
    parent_version: str | None
    version: str | None  # None when the round was skipped
    promoted: bool
    decision: GateDecision | None
    message: str
    stats: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- gathering
def _iso_to_ns(text: str | None) -> int:
    if not text:
        return 0
    dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * NS)


def _windows_of(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    from soundwatch.audio.windows import offline_windows  # deferred: loads numba

    min_samples = (params.window_frames - 1) * params.hop_length + 1
    if audio.size < min_samples:
        return np.zeros((0, params.n_mels, params.window_frames), dtype=np.float32)
    windows, _starts = offline_windows(np.asarray(audio, dtype=np.float32), params=params)
    return np.asarray(windows, dtype=np.float32)


def blocks_from_pieces(
    pieces: Sequence[AudioPiece], params: FeatureParams, block_seconds: float, interval_id: int = 0
) -> list[ArchiveBlock]:
    """Cut contiguous audio into blocks and window each block separately."""
    out: list[ArchiveBlock] = []
    for piece in pieces:
        if piece.sample_rate != params.sample_rate:
            log.warning(
                "skipping %.1f s of %s/%s at %d Hz: the model uses %d Hz",
                piece.duration_s,
                piece.machine_type,
                piece.machine_id,
                piece.sample_rate,
                params.sample_rate,
            )
            continue
        step = int(block_seconds * params.sample_rate)
        for a in range(0, piece.samples.size, step):
            seg = piece.samples[a : a + step]
            w = _windows_of(seg, params)
            if len(w):
                out.append(
                    ArchiveBlock(piece.machine_id, w, piece.start_ns + a * NS // params.sample_rate, interval_id)
                )
    return out


def gather_confirmed(
    store: ConfirmationStore,
    reader: ArchiveReader,
    machine_type: str,
    since_ns: int,
    params: FeatureParams,
    block_seconds: float,
    intervals: Sequence[ConfirmedInterval] | None = None,
) -> tuple[list[ArchiveBlock], list[dict]]:
    """Blocks of confirmed-normal archived audio after ``since_ns`` and what was used, per interval."""
    if intervals is None:
        intervals = store.intervals(machine_type=machine_type, since_ns=since_ns)
    blocks: list[ArchiveBlock] = []
    used: list[dict] = []
    for iv in intervals:
        t0 = max(iv.from_ns, since_ns)
        pieces = reader.read_range(iv.machine_type, iv.machine_id, t0, iv.to_ns)
        got = blocks_from_pieces(pieces, params, block_seconds, iv.id)
        seconds = sum(p.duration_s for p in pieces)
        if seconds == 0:
            log.warning(
                "confirmed interval #%d (%s %s..%s) has no archived audio",
                iv.id,
                iv.machine,
                format_time(t0),
                format_time(iv.to_ns),
            )
        used.append(
            {
                "interval": iv.id,
                "machine_id": iv.machine_id,
                "from_ns": t0,
                "to_ns": iv.to_ns,
                "seconds": round(seconds, 3),
                "by": iv.by,
                "forced": iv.forced,
            }
        )
        blocks += got
    return blocks, used


def split_blocks(
    blocks: Sequence[ArchiveBlock], calib_fraction: float, gate_fraction: float, seed: int
) -> tuple[list[ArchiveBlock], list[ArchiveBlock], list[ArchiveBlock]]:
    """(fit, calib, gate) per machine; a machine with fewer than 3 blocks only contributes to fit."""
    rng = np.random.default_rng(seed)
    fit: list[ArchiveBlock] = []
    calib: list[ArchiveBlock] = []
    gate: list[ArchiveBlock] = []
    for mid in sorted({b.machine_id for b in blocks}):
        mine = [b for b in blocks if b.machine_id == mid]
        if len(mine) < 3:
            fit += mine
            continue
        order = rng.permutation(len(mine))
        n_gate = max(1, round(gate_fraction * len(mine))) if gate_fraction > 0 else 0
        n_cal = max(1, round(calib_fraction * len(mine))) if calib_fraction > 0 else 0
        gate += [mine[i] for i in sorted(order[:n_gate])]
        calib += [mine[i] for i in sorted(order[n_gate : n_gate + n_cal])]
        fit += [mine[i] for i in sorted(order[n_gate + n_cal :])]
    return fit, calib, gate


@dataclass
class EarlierData:
    """What the original training data offers: replay windows, validation clips, labelled test clips."""

    replay: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (machine_id, windows of a clip)
    validation: list[EvalClip] = field(default_factory=list)
    test: list[EvalClip] = field(default_factory=list)
    root: str | None = None


def load_earlier_data(
    root: Path | None,
    machine_type: str,
    params: FeatureParams,
    *,
    holdout_fraction: float,
    seed: int,
    replay_clips: int,
    progress: bool,
) -> EarlierData:
    """Re-derive the original split (same rule and seed as training) from the DCASE folder."""
    if root is None:
        return EarlierData()
    if not Path(root).is_dir():
        log.warning("original training data %s is gone: no replay, no earlier validation set", root)
        return EarlierData()
    records = scan_dataset(root, machine_type)
    train = [r for r in records if r.split == "train" and r.label == "normal"]
    fit, hold = split_holdout(train, holdout_fraction, seed) if train else ([], [])
    rng = np.random.default_rng(seed + 1)
    pick = sorted(rng.choice(len(fit), size=min(replay_clips, len(fit)), replace=False)) if fit else []
    out = EarlierData(root=str(root))
    ws = load_windows([fit[i] for i in pick], params, desc=f"{machine_type} replay", progress=progress)
    out.replay = [(r.machine_id, ws.clip_windows(i)) for i, r in enumerate(ws.records)]
    ws = load_windows(hold, params, desc=f"{machine_type} earlier validation", progress=progress)
    out.validation = [EvalClip(r.machine_id, ws.clip_windows(i), "validation") for i, r in enumerate(ws.records)]
    test = [r for r in records if r.split == "test"]
    ws = load_windows(test, params, desc=f"{machine_type} labelled test", progress=progress)
    out.test = [EvalClip(r.machine_id, ws.clip_windows(i), "test", r.is_anomaly) for i, r in enumerate(ws.records)]
    return out


# ---------------------------------------------------------------------------- fine-tuning
def fine_tune(
    parent: Any,
    windows: np.ndarray,
    machine_ids: Sequence[str],
    cfg: RetrainSettings,
    bank_windows: np.ndarray | None = None,
    bank_ids: Sequence[str] = (),
    bank_new: np.ndarray | None = None,
    *,
    encoder_mode: str = "bank",
    score_kind: str | None = None,
) -> FineTuned:
    """Update ``parent`` (a LoadedModel) with ``windows`` of ``machine_ids`` the way its method fine-tunes
    (:meth:`training.methods.base.Method.fine_tune`; step 4 of the module docstring)."""
    return method_for(parent.method).fine_tune(
        parent,
        windows,
        machine_ids,
        cfg,
        bank_windows,
        bank_ids,
        bank_new,
        encoder_mode=encoder_mode,
        score_kind=score_kind,
    )


def calibrate(
    scorer: Any, clips: Sequence[tuple[str, np.ndarray]], median_k: int, machine_ids: Sequence[str]
) -> tuple[dict[str, float], float, str]:
    """Per-machine thresholds on median-filtered window scores of normal ``clips`` (machine, windows)."""
    per: dict[str, list[np.ndarray]] = {}
    for mid, w in clips:
        if len(w):
            per.setdefault(mid, []).append(causal_median(scorer.score(w, [mid] * len(w)), median_k))
    if not per:
        raise BadInput("no normal audio to calibrate thresholds on")
    pooled = np.concatenate([np.concatenate(v) for v in per.values()])
    default, rule = fit_threshold(pooled)
    thresholds = {mid: fit_threshold(np.concatenate(per[mid]))[0] if mid in per else default for mid in machine_ids}
    return thresholds, default, rule


class _InMemoryModel:
    """A candidate seen through the LoadedModel interface, before it is saved."""

    def __init__(
        self, scorer: Any, median_k: int, thresholds: dict[str, float], default: float, aggregation: str = "mean"
    ) -> None:
        self.scorer = scorer
        self.median_k = median_k
        self.aggregation = aggregation
        self.thresholds = thresholds
        self.default_threshold = default

    def score_windows(self, windows: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray:
        return self.scorer.score(np.asarray(windows, dtype=np.float32), list(machine_ids))

    def threshold_for(self, machine_id: str) -> float:
        return self.thresholds.get(machine_id, self.default_threshold)


# ---------------------------------------------------------------------------- one round
def retrain_once(
    settings: Settings,
    machine_type: str,
    cfg: RetrainSettings | None = None,
    *,
    archive: ArchiveSettings | None = None,
    registry: Any = None,
    store: ConfirmationStore | None = None,
    score_kind: str | None = None,
) -> RetrainOutcome:
    """One retraining round for ``machine_type`` (see the module docstring). ``cfg.encoder_update``
    (encoder methods only): ``bank`` (default), ``head`` or ``full``; ``score_kind`` overrides the
    candidate's score (default: ``knn`` for ``bank``, else the parent's)."""
    cfg = cfg or settings.retrain
    archive = archive or settings.archive
    registry = registry or ModelRegistry(settings.registry_root, settings.redis)
    store = store or ConfirmationStore(settings.redis)
    t_start = time.perf_counter()

    # 1. the current model and its data cutoff
    parent_version = registry.resolve_version(machine_type)
    parent = registry.load(machine_type, parent_version, device=cfg.device)
    summary = dict(parent.metadata.data_summary)
    cutoff_ns = _iso_to_ns(summary.get("data_cutoff"))
    params = parent.feature_params

    # 2. new confirmed-normal audio
    reader = ArchiveReader(archive.root)
    try:
        blocks, used = gather_confirmed(store, reader, machine_type, cutoff_ns, params, cfg.block_seconds)
        new_seconds = sum(u["seconds"] for u in used)
        if new_seconds < cfg.min_confirmed_seconds or not blocks:
            msg = (
                f"{machine_type}: {new_seconds:.0f} s of confirmed-normal audio since {format_time(cutoff_ns)} "
                f"(need {cfg.min_confirmed_seconds:.0f} s); nothing to do"
            )
            return RetrainOutcome(
                machine_type,
                parent_version,
                None,
                False,
                None,
                msg,
                {"new_seconds": new_seconds, "intervals": len(used)},
            )
        fit, calib, gate_blocks = split_blocks(blocks, cfg.calib_fraction, cfg.gate_fraction, cfg.seed)

        # 3. replay: a pool of earlier training clips + earlier confirmed audio still archived
        n_new = sum(len(b.windows) for b in fit)
        n_replay = int(min(cfg.replay_max_windows, cfg.replay_ratio * n_new))
        data_root = cfg.data_root or (Path(summary["data_root"]) if summary.get("data_root") else None)
        earlier = load_earlier_data(
            data_root,
            machine_type,
            params,
            holdout_fraction=cfg.holdout_fraction,
            seed=int(summary.get("seed", cfg.seed)),
            replay_clips=math.ceil(cfg.replay_max_windows / CLIP_WINDOWS),
            progress=cfg.progress,
        )
        pool = list(earlier.replay)
        previous = [u for u in summary.get("confirmed", []) if u.get("to_ns", 0) <= cutoff_ns]
        rng = np.random.default_rng(cfg.seed + 2)
        for u in [previous[i] for i in rng.permutation(len(previous))[:50]]:
            pieces = reader.read_range(machine_type, u["machine_id"], int(u["from_ns"]), int(u["to_ns"]))
            pool += [(b.machine_id, b.windows) for b in blocks_from_pieces(pieces, params, cfg.block_seconds)]
    finally:
        reader.close()
    empty = np.zeros((0, params.n_mels, params.window_frames), dtype=np.float32)
    pool_w = np.concatenate([w for _, w in pool]) if pool else empty
    pool_ids = [m for m, w in pool for _ in range(len(w))]
    if len(pool_w) > cfg.replay_max_windows:
        keep = np.sort(np.random.default_rng(cfg.seed + 3).choice(len(pool_w), cfg.replay_max_windows, replace=False))
        pool_w, pool_ids = pool_w[keep], [pool_ids[i] for i in keep]
    # training replays ~replay_ratio windows per new window; the kNN bank uses the whole pool
    pick = np.sort(np.random.default_rng(cfg.seed + 4).choice(len(pool_w), min(n_replay, len(pool_w)), replace=False))
    replay_w, replay_ids = pool_w[pick], [pool_ids[i] for i in pick]
    if not len(pool_w):
        log.warning(
            "%s: no earlier training data to replay (data_root=%s): the model may forget earlier sounds; "
            "pass --data with the original training folder",
            machine_type,
            data_root,
        )
    new_w = [b.windows for b in fit]
    new_ids = [b.machine_id for b in fit for _ in range(len(b.windows))]
    fit_w = np.concatenate([*new_w, replay_w])
    fit_ids = new_ids + replay_ids
    # the kNN bank: every new fit window and the whole pool, each window once
    bank_w = np.concatenate([*new_w, pool_w])

    # 4. fine-tune from the current version
    cand = fine_tune(
        parent,
        fit_w,
        fit_ids,
        cfg,
        bank_windows=bank_w,
        bank_ids=new_ids + pool_ids,
        bank_new=np.arange(len(bank_w)) < len(new_ids),
        encoder_mode=cfg.encoder_update,
        score_kind=score_kind,
    )

    # 5. thresholds on calibration blocks + the earlier validation clips
    machine_ids = sorted(set(parent.machine_ids) | {b.machine_id for b in blocks})
    calib_clips = [(b.machine_id, b.windows) for b in calib] + [(c.machine_id, c.windows) for c in earlier.validation]
    if not calib_clips:  # tiny rounds: fall back to the fitted blocks (recorded in the metrics)
        calib_clips = [(b.machine_id, b.windows) for b in fit]
    thresholds, default_thr, rule = calibrate(cand.scorer, calib_clips, parent.median_k, machine_ids)
    threshold_policy = "recalibrated"
    if cand.encoder_mode == "bank" and parent.score_kind == cand.score_kind:
        # same encoder, a bank that only grew: every score is <= the parent's, so keeping a threshold at
        # least the parent's cannot raise a false alarm the parent did not raise (see the module docstring)
        thresholds = {m: max(t, parent.thresholds[m]) if m in parent.thresholds else t for m, t in thresholds.items()}
        default_thr = max(default_thr, parent.default_threshold)
        threshold_policy = "max(parent, recalibrated)"

    # 6. gate
    eval_clips = (
        [EvalClip(b.machine_id, b.windows, "confirmed") for b in gate_blocks] + earlier.validation + earlier.test
    )
    candidate_model = _InMemoryModel(cand.scorer, parent.median_k, thresholds, default_thr, parent.aggregation)
    decision = run_gate(candidate_model, parent, eval_clips, cfg.gate)

    new_cutoff = max(cutoff_ns, max(u["to_ns"] for u in used))
    stats = {
        "new_seconds": round(new_seconds, 2),
        "intervals": [u["interval"] for u in used],
        "blocks": {"fit": len(fit), "calib": len(calib), "gate": len(gate_blocks)},
        "new_windows": n_new,
        "replay_windows": int(len(replay_w)),
        "bank_pool_windows": int(len(pool_w)),
        "encoder_update": cand.encoder_mode,
        "score_kind": [parent.score_kind, cand.score_kind],
        "threshold_policy": threshold_policy,
        "epochs": 0 if cand.encoder_mode == "bank" else cfg.epochs,
        "lr": cfg.lr,
        "fine_tune_loss": cand.losses,
        "seconds": round(time.perf_counter() - t_start, 2),
    }
    data_summary = {
        "kind": "retrain",
        "parent_version": parent_version,
        "data_root": earlier.root or summary.get("data_root"),
        "data_cutoff": datetime.fromtimestamp(new_cutoff / NS, UTC).isoformat(),
        "previous_data_cutoff": summary.get("data_cutoff"),
        "confirmed": (summary.get("confirmed", []) + used)[-500:],
        "seed": int(summary.get("seed", cfg.seed)),
        "trained_at": datetime.now(UTC).isoformat(),
        **stats,
    }
    metrics = {"gate": decision.to_dict(), "retrain": stats, "threshold_calibration": rule}
    artifact = Artifact(
        machine_type=machine_type,
        method=cand.method,
        score_kind=cand.score_kind,
        feature_params=params,
        median_k=parent.median_k,
        aggregation=parent.aggregation,
        model_config=cand.model_config,
        state=cand.state,
        class_map=cand.class_map,
        id_classes=cand.id_classes,
        thresholds=thresholds,
        default_threshold=default_thr,
        threshold_rule=rule,
        knn_k=cand.knn_k,
        bank=cand.bank,
        data_summary=data_summary,
        metrics=metrics,
        parent_version=parent_version,
        class_source=cand.class_source,
    )
    version = registry.save(artifact)
    if decision.passed:
        registry.set_current(machine_type, version)
        msg = f"{machine_type}: {version} (from {parent_version}) promoted — gate {decision.summary()}"
    else:
        msg = f"{machine_type}: {version} (from {parent_version}) kept but NOT promoted — gate {decision.summary()}"
    log.info(msg)
    return RetrainOutcome(machine_type, parent_version, version, decision.passed, decision, msg, stats)


def machine_types_to_retrain(settings: Settings, registry: Any = None) -> list[str]:
    registry = registry or ModelRegistry(settings.registry_root, settings.redis)
    types = registry.machine_types()
    if not types:
        raise BadInput(
            f"no trained models under {settings.registry_root}", "train one first with `soundwatch train --data DIR`"
        )
    return types


def retrain_round(
    settings: Settings, machine_type: str | None, cfg: RetrainSettings, archive: ArchiveSettings
) -> list[RetrainOutcome]:
    """One round over one or all machine types; one type failing does not stop the others."""
    types = [machine_type] if machine_type else machine_types_to_retrain(settings)
    outcomes = []
    for mtype in types:
        try:
            outcomes.append(retrain_once(settings, mtype, cfg, archive=archive))
        except SoundwatchError as exc:
            if machine_type:
                raise
            log.error("retraining %s failed: %s", mtype, exc)
            outcomes.append(RetrainOutcome(mtype, None, None, False, None, f"{mtype}: failed: {exc.message}"))
    return outcomes


def run_schedule(
    cron: str, job: Callable[[], object], stop: threading.Event | None = None, now: Callable[[], float] = time.time
) -> None:
    """Run ``job`` at every time ``cron`` names until ``stop`` is set; errors are logged, never fatal."""
    from croniter import croniter  # deferred: loads croniter

    if not croniter.is_valid(cron):
        raise BadInput(f"invalid cron expression {cron!r}", "use five fields, e.g. '0 3 * * *' (03:00 every day)")
    stop = stop or threading.Event()
    it = croniter(cron, now())
    while not stop.is_set():
        due = it.get_next(float)
        log.info("next retraining round at %s", datetime.fromtimestamp(due, UTC).isoformat())
        if stop.wait(max(0.0, due - now())):
            break
        try:
            job()
        except SoundwatchError as exc:
            log.error("retraining round failed: %s", exc)
        except Exception:  # a long-running scheduler must survive a bad round; the traceback is logged
            log.exception("retraining round crashed")


__all__ = [
    "ArchiveBlock",
    "RetrainSettings",
    "RetrainOutcome",
    "blocks_from_pieces",
    "calibrate",
    "fine_tune",
    "gather_confirmed",
    "load_earlier_data",
    "retrain_once",
    "retrain_round",
    "run_schedule",
    "split_blocks",
]
