"""``soundwatch bench methods``: every training method on the same data, compared honestly.

Trains each method on each machine type of a dataset into a private registry, then writes
``evaluate --compare``'s table (``compare.md/.json/.png``) for them. Data:

* nothing given: the synthetic benchmark (:func:`soundwatch.simulator.write_dcase_dataset`, fan and pump,
  three machines each, ten 10 s training clips per machine);
* a DCASE folder with train/ clips: used as it is;
* a folder with test/ clips only (like ``real-mini``): an honest split is made first (symlinks in a
  temporary folder): per machine ID, the first half of its normal clips (sorted by name) become
  training clips and never appear in the test set; the rest and every anomalous clip are the test set.
  With a handful of clips per machine the AUCs are coarse (a few clips decide them); the table says
  how many machines each number averages over.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from soundwatch.model.registry import ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.simulator import write_dcase_dataset
from training.compare import compare
from training.datasets import scan_dataset
from training.train import TrainConfig, train_machine_type


def honest_split(src: Path, dst: Path) -> Path:
    """Symlink ``src`` (test clips only) into ``dst`` with half of each machine's normals moved to train/."""
    records = scan_dataset(src)
    by_id: dict[tuple[str, str], list[Any]] = {}
    for r in records:
        by_id.setdefault((r.machine_type, r.machine_id), []).append(r)
    for recs in by_id.values():
        normals = sorted((r for r in recs if not r.is_anomaly), key=lambda r: r.path.name)
        train = {r.path for r in normals[: len(normals) // 2]}
        for r in recs:
            split = "train" if r.path in train else "test"
            target = dst / r.machine_type / split / r.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(r.path.resolve())
    return dst


def write_basic_benchmark(root: Path, seed: int = 0, sample_rate: int = 16_000) -> int:
    """The easy synthetic benchmark (``synth --preset basic``); returns the number of clips written."""
    return write_dcase_dataset(
        root,
        ["fan", "pump"],
        ids_per_type=3,
        n_train=10,
        n_test_normal=6,
        n_test_anomaly=6,
        seconds=10.0,
        sample_rate=sample_rate,
        seed=seed,
    ).files


def methods_bench(
    data: Path | None,
    out_dir: Path,
    methods: Sequence[str],
    *,
    epochs: int | None = None,
    params: FeatureParams | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``methods`` on every type of ``data`` (see the module docstring) and compare them."""
    params = params or FeatureParams()
    with tempfile.TemporaryDirectory(prefix="soundwatch-methods-") as tmp:
        root = Path(tmp)
        if data is None:
            data_dir = root / "synthetic"
            write_basic_benchmark(data_dir, sample_rate=params.sample_rate)
            source = "synthetic benchmark (fan, pump; 3 machines each)"
        elif any(r.split == "train" for r in scan_dataset(data)):
            data_dir, source = data, str(data)
        else:
            data_dir = honest_split(data, root / "split")
            source = f"{data} (half of each machine's normal clips moved to train/)"
        registry = ModelRegistry(root / "registry")
        records = scan_dataset(data_dir)
        cfg = TrainConfig(epochs=epochs, device="cpu", progress=progress)
        t0 = time.perf_counter()
        for mtype in sorted({r.machine_type for r in records}):
            mine = [r for r in records if r.machine_type == mtype]
            if not any(r.split == "train" and not r.is_anomaly for r in mine):
                continue
            for method in methods:
                registry.save(train_machine_type(mine, params, replace(cfg, method=method)).artifact)
        report = compare(data_dir, registry, out_dir=out_dir, progress=progress)
    report["data"] = source
    report["epochs"] = epochs
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report
