"""Statistic methods (``stats-*``): per-band statistics of the log-mel windows + a density per machine.

No network and no epochs: fitting is a mean, a covariance or a bank of training windows per
machine (:mod:`soundwatch.model.stats`), so a type trains in seconds. The variants differ in the
statistics and the density; which one suits a type is what ``--method auto`` finds out:

* ``stats-max``: per-band maximum (short events: clicks, bursts, stuck moments), Mahalanobis;
* ``stats-q25max``: 25 % quantile + maximum (steady floor and events), Mahalanobis;
* ``stats-q25knn``: 25 % quantile (the steady spectrum), 3-NN distance;
* ``stats-meanknn``: per-band mean (a steady spectral shift), 3-NN distance;
* ``stats-q25maxmean``: 25 % quantile + maximum + mean, Mahalanobis: events (max), dropouts and
  steady shifts (mean, q25) in one density — on real-uav the only variant whose streamed score
  crossed the threshold for both repeating clicks and repeating dropouts at -10 / -15 dB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from soundwatch.model.stats import StatsConfig, StatsModel

VARIANTS: dict[str, StatsConfig] = {
    "stats-max": StatsConfig(("max",), "maha"),
    "stats-q25max": StatsConfig(("q25", "max"), "maha"),
    "stats-q25knn": StatsConfig(("q25",), "knn", knn_k=3),
    "stats-meanknn": StatsConfig(("mean",), "knn", knn_k=3),
    "stats-q25maxmean": StatsConfig(("q25", "max", "mean"), "maha"),
}


def fit(method: str, windows: np.ndarray, machine_ids: Sequence[str], seed: int = 0) -> StatsModel:
    """Fit statistic method ``method`` on normal training windows ``[N, n_mels, W]``."""
    if method not in VARIANTS:
        raise ValueError(f"{method!r} is not a statistic method; valid: {', '.join(VARIANTS)}")
    return StatsModel.fit(windows, machine_ids, VARIANTS[method], seed)
