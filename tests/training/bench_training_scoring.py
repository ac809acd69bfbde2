"""Benchmark (not a test): CPU window-scoring throughput of a clp model, printed as JSON.

Run: ``.venv/bin/python tests/training/bench_training_scoring.py`` — trains a tiny clp model
(1 epoch, synthetic) and scores batches of windows with 1 and 2 torch threads. The stream's
requirement is ~100 windows/s (100 machines in real time, one window per ~1.02 s) on 2 cores.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from soundwatch.model.registry import ModelRegistry
from soundwatch.params import FeatureParams
from soundwatch.simulator import write_dcase_dataset
from training.datasets import scan_dataset
from training.train import TrainConfig, train_machine_type


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dcase_dataset(
            root / "data", ["fan"], ids_per_type=3, n_train=3, n_test_normal=0, n_test_anomaly=0, seconds=10.0
        )
        result = train_machine_type(
            scan_dataset(root / "data"), FeatureParams(), TrainConfig(epochs=1, device="cpu", progress=False)
        )
        reg = ModelRegistry(root / "registry")
        model = reg.load("fan", reg.save(result.artifact))
        rng = np.random.default_rng(0)
        windows = (rng.normal(-40, 10, size=(256, 128, 64))).astype(np.float32)
        ids = [f"id_{2 * (i % 3):02d}" for i in range(256)]
        out: dict[str, object] = {"score_kind": model.score_kind}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for batch in (16, 64):
                model.score_windows(windows[:batch], ids[:batch])  # warm-up
                t0 = time.perf_counter()
                n = 0
                while time.perf_counter() - t0 < 3.0:
                    for i in range(0, 256, batch):
                        model.score_windows(windows[i : i + batch], ids[i : i + batch])
                        n += batch
                out[f"windows_per_s_threads{threads}_batch{batch}"] = round(n / (time.perf_counter() - t0), 1)
        print(json.dumps(out))


if __name__ == "__main__":
    main()
