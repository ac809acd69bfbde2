"""Which processes make up the pipeline on one machine, as ``soundwatch`` command lines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from deploy.pipeline import StageProcess
from soundwatch.settings import Settings


@dataclass(frozen=True)
class PlantSource:
    """Where the gateway's audio comes from: the simulator (machines + fault schedule) or recorded files."""

    kind: str = "sim"  # "sim" | "files"
    machines: str = "fan/id_00,fan/id_02,fan/id_04,pump/id_00,pump/id_02"
    faults: tuple[str, ...] = ()
    data: Path | None = None
    speed: float = 1.0
    loop: bool = True
    sim_loop_s: float | None = None  # sim: repeat each machine's first seconds (benchmarks: see bench_e2e)
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def gateway_args(self) -> list[str]:
        args = ["gateway", "--source", self.kind, "--speed", f"{self.speed:g}"]
        if self.kind == "sim":
            args += ["--machines", self.machines]
            for fault in self.faults:
                args += ["--fault", fault]
            if self.sim_loop_s is not None:
                args += ["--loop-seconds", f"{self.sim_loop_s:g}"]
        else:
            if self.data is None:
                raise ValueError("a files source needs data")
            args += ["--path", str(self.data)]
            if self.loop:
                args.append("--loop")
        return [*args, *self.extra_args]


def pipeline_stages(
    settings: Settings, source: PlantSource, *, log_dir: Path, feature_workers: int = 1, scoring_workers: int = 1
) -> list[StageProcess]:
    """Gateway, ``feature_workers`` Faust workers and ``scoring_workers`` scoring workers, in data-flow order.

    Workers of one stage share the consumer group and split the partitions; each gets its own
    web/metrics port and Faust data directory so several can run on one host.
    """
    stages = [StageProcess("gateway", source.gateway_args(), log_dir / "gateway.log")]
    for i in range(feature_workers):
        env = {"SOUNDWATCH_STREAM__DATA_DIR": str(settings.stream.data_dir / f"worker-{i}")}
        stages.append(
            StageProcess(f"features-{i}", ["features", "run", "--web-port", "0"], log_dir / f"features-{i}.log", env)
        )
    for i in range(scoring_workers):
        port = settings.scoring.metrics_port + i if settings.scoring.metrics_port else 0
        env = {"SOUNDWATCH_SCORING__METRICS_PORT": str(port)}
        stages.append(StageProcess(f"scoring-{i}", ["score", "run"], log_dir / f"scoring-{i}.log", env))
    return stages
