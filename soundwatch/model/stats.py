"""Statistic anomaly scores of log-mel windows: per-band statistics + a density per machine (numpy only).

A window ``[n_mels, W]`` (dB) becomes, per mel band, statistics over its W frames (``q25``: the
25 % quantile, the steady floor of the sound; ``max``: the loudest moment, which keeps short events;
``mean``, ``std``, ``delta``: the mean absolute frame-to-frame change). The features are standardised
with the type's training mean / std and clipped to ``[-Z_CLIP, Z_CLIP]`` so one extreme band cannot
dominate. Each machine then has its own density:

* ``maha``: Mahalanobis distance to the machine's mean under a Ledoit-Wolf shrunk covariance
  (few-shot: a plain covariance of 256 features from a few hundred windows is singular);
* ``knn``: mean Euclidean distance to the ``k`` nearest training windows of the machine.

A machine the model has not seen is scored against the union model ``"*"`` of all machines of the
type. Why statistics: with minutes of normal audio per machine, these densities beat every trained
encoder on real recordings (issue #15, README training section). The model is a few arrays plus a
JSON config (:meth:`StatsModel.to_arrays`, :meth:`StatsModel.config`), so the registry stores and
signs it like any other weights file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURES = ("q25", "max", "mean", "std", "delta")
DENSITIES = ("maha", "knn")
Z_CLIP = 5.0
UNION = "*"
BANK_LIMIT = 4096  # kNN training windows kept per machine


@dataclass(frozen=True)
class StatsConfig:
    features: tuple[str, ...] = ("q25", "max")
    density: str = "maha"
    knn_k: int = 1

    def __post_init__(self) -> None:
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features:
            raise ValueError(f"stats features {bad or list(self.features)} invalid; choose from {FEATURES}")
        if self.density not in DENSITIES:
            raise ValueError(f"stats density {self.density!r} invalid; choose from {DENSITIES}")
        if self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1, got {self.knn_k}")

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "density": self.density, "knn_k": self.knn_k}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatsConfig:
        return cls(tuple(d["features"]), str(d["density"]), int(d["knn_k"]))


def window_features(windows: np.ndarray, features: Sequence[str]) -> np.ndarray:
    """``[B, n_mels, W]`` dB windows -> ``[B, n_mels * len(features)]`` float64 per-band statistics."""
    raw = np.asarray(windows)
    if raw.dtype not in (np.float32, np.float64):
        raw = raw.astype(np.float64)
    if raw.ndim != 3:
        raise ValueError(f"windows must be [B, n_mels, W], got shape {raw.shape}")
    # order statistics (q25's two, max) are taken on the windows as they come (float32 from the stream:
    # half the bytes to sort) and are the same numbers in float64; sums need float64
    x = raw.astype(np.float64) if any(f not in ("q25", "max") for f in features) else raw
    parts = []
    for f in features:
        if f == "q25":
            parts.append(quantile_last_axis(raw, 0.25))
        elif f == "max":
            parts.append(raw.max(axis=2).astype(np.float64))
        elif f == "mean":
            parts.append(x.mean(axis=2))
        elif f == "std":
            parts.append(x.std(axis=2))
        elif f == "delta":
            parts.append(np.abs(np.diff(x, axis=2)).mean(axis=2) if x.shape[2] > 1 else np.zeros(x.shape[:2]))
        else:
            raise ValueError(f"unknown stats feature {f!r}; choose from {FEATURES}")
    return np.concatenate(parts, axis=1)


def quantile_last_axis(x: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(x, q, axis=-1)`` of ``x`` in float64 (its default linear method, the same floats), from
    one partial sort of the two order statistics it needs, on ``x`` as given (float32 sorts faster and its
    order statistics are the float64 ones): the q25 feature was the scoring worker's largest cost."""
    n = x.shape[-1]
    virtual = q * (n - 1)
    lo = int(np.floor(virtual))
    hi = min(lo + 1, n - 1)
    part = np.partition(x, (lo, hi) if hi != lo else lo, axis=-1)
    a, b = part[..., lo].astype(np.float64), part[..., hi].astype(np.float64)
    t = virtual - lo
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t  # numpy's _lerp, both branches


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf shrunk covariance of rows ``x`` [N, D] (the estimator of sklearn's ``ledoit_wolf``)."""
    n, d = x.shape
    xc = x - x.mean(axis=0)
    emp = xc.T @ xc / n
    mu = np.trace(emp) / d
    if n < 2:
        return np.eye(d) * max(mu, 1e-6)
    x2 = xc**2
    beta_ = float((x2.T @ x2).sum() / n - (emp**2).sum()) / n
    delta = float(((emp - mu * np.eye(d)) ** 2).sum())
    shrink = 1.0 if delta == 0 else min(beta_, delta) / delta
    cov = (1.0 - shrink) * emp + shrink * mu * np.eye(d)
    return cov + 1e-6 * max(mu, 1e-6) * np.eye(d)


@dataclass
class Density:
    """One machine's density: ``loc`` + ``prec`` (maha) or ``bank`` (knn)."""

    loc: np.ndarray | None = None
    prec: np.ndarray | None = None
    bank: np.ndarray | None = None

    @classmethod
    def fit(cls, z: np.ndarray, cfg: StatsConfig, seed: int = 0) -> Density:
        if cfg.density == "maha":
            return cls(loc=z.mean(axis=0), prec=np.linalg.inv(ledoit_wolf(z)))
        if z.shape[0] > BANK_LIMIT:
            idx = np.sort(np.random.default_rng(seed).choice(z.shape[0], BANK_LIMIT, replace=False))
            z = z[idx]
        return cls(bank=np.ascontiguousarray(z))

    def score(self, z: np.ndarray, knn_k: int) -> np.ndarray:
        if self.prec is not None and self.loc is not None:
            d = z - self.loc
            # (d P) . d row by row: a BLAS product, not einsum's unoptimised triple loop (the scoring
            # worker's largest cost with a statistics model)
            return np.sqrt(np.maximum(((d @ self.prec) * d).sum(axis=1), 0.0))
        assert self.bank is not None
        d2 = (z**2).sum(1)[:, None] + (self.bank**2).sum(1)[None, :] - 2.0 * z @ self.bank.T
        dist = np.sqrt(np.maximum(d2, 0.0))
        k = min(knn_k, self.bank.shape[0])
        return np.partition(dist, k - 1, axis=1)[:, :k].mean(axis=1)


class StatsModel:
    """Standardiser of one machine type + a :class:`Density` per machine and the union ``"*"``."""

    def __init__(self, cfg: StatsConfig, mean: np.ndarray, std: np.ndarray, densities: dict[str, Density]) -> None:
        if UNION not in densities:
            raise ValueError(f"a stats model needs the union density {UNION!r}")
        self.cfg = cfg
        self.mean = mean
        self.std = std
        self.densities = densities

    @classmethod
    def fit(cls, windows: np.ndarray, machine_ids: Sequence[str], cfg: StatsConfig, seed: int = 0) -> StatsModel:
        """Fit on normal training windows ``[N, n_mels, W]`` of ``machine_ids[i]``."""
        return cls.fit_features(window_features(windows, cfg.features), machine_ids, cfg, seed)

    @classmethod
    def fit_features(cls, feats: np.ndarray, machine_ids: Sequence[str], cfg: StatsConfig, seed: int = 0) -> StatsModel:
        """:meth:`fit` from precomputed :func:`window_features` (cross-fitting reuses them)."""
        if len(feats) < 2:
            raise ValueError(f"a stats model needs at least 2 training windows, got {len(feats)}")
        mean = feats.mean(axis=0)
        std = feats.std(axis=0) + 1e-3
        z = np.clip((feats - mean) / std, -Z_CLIP, Z_CLIP)
        ids = np.asarray(machine_ids)
        densities = {m: Density.fit(z[ids == m], cfg, seed) for m in sorted(set(machine_ids))}
        densities[UNION] = Density.fit(z, cfg, seed)
        return cls(cfg, mean, std, densities)

    def standardise(self, windows: np.ndarray) -> np.ndarray:
        return np.clip((window_features(windows, self.cfg.features) - self.mean) / self.std, -Z_CLIP, Z_CLIP)

    def score(self, windows: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray:
        """Window scores ``[B]`` float64, high = anomalous; unknown machines use the union density."""
        if len(machine_ids) != len(windows):
            raise ValueError(f"{len(windows)} windows but {len(machine_ids)} machine ids")
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float64)
        return self.score_features(window_features(windows, self.cfg.features), machine_ids)

    def score_features(self, feats: np.ndarray, machine_ids: Sequence[str]) -> np.ndarray:
        """:meth:`score` from precomputed :func:`window_features`."""
        out = np.zeros(len(feats), dtype=np.float64)
        z = np.clip((feats - self.mean) / self.std, -Z_CLIP, Z_CLIP)
        rows: dict[str, list[int]] = {}
        for i, mid in enumerate(machine_ids):
            rows.setdefault(mid, []).append(i)
        for mid, idx in rows.items():
            out[idx] = self.densities.get(mid, self.densities[UNION]).score(z[idx], self.cfg.knn_k)
        return out

    # -- serialisation: arrays + JSON ------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON part: the config and the machine order of the arrays."""
        return {**self.cfg.to_dict(), "machines": sorted(self.densities)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean, "std": self.std}
        for i, mid in enumerate(sorted(self.densities)):
            d = self.densities[mid]
            for name in ("loc", "prec", "bank"):
                value = getattr(d, name)
                if value is not None:
                    out[f"m{i}.{name}"] = value
        return out

    @classmethod
    def from_arrays(cls, config: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> StatsModel:
        """Inverse of :meth:`config` + :meth:`to_arrays`; KeyError/ValueError when they do not match."""
        cfg = StatsConfig.from_dict(config)
        densities = {}
        for i, mid in enumerate(config["machines"]):
            names = [n for n in ("loc", "prec", "bank") if f"m{i}.{n}" in arrays]
            parts = {n: np.asarray(arrays[f"m{i}.{n}"], np.float64) for n in names}
            if not parts:
                raise ValueError(f"stats model: no density arrays for machine {mid!r}")
            densities[str(mid)] = Density(**parts)
        return cls(cfg, np.asarray(arrays["mean"], np.float64), np.asarray(arrays["std"], np.float64), densities)

    def refit(self, windows: np.ndarray, machine_ids: Sequence[str], seed: int = 0) -> StatsModel:
        """A new model with the densities of ``machine_ids`` refitted on ``windows`` (same standardiser).

        Machines without new windows keep their density; the union is refitted on all new windows
        plus nothing else (it is only a fallback). Used by retraining: old + confirmed normal windows in.
        """
        z = self.standardise(windows)
        ids = np.asarray(machine_ids)
        densities = dict(self.densities)
        for mid in sorted(set(machine_ids)):
            densities[mid] = Density.fit(z[ids == mid], self.cfg, seed)
        densities[UNION] = Density.fit(z, self.cfg, seed)
        return StatsModel(self.cfg, self.mean, self.std, densities)
