"""The README's capacity picture: CPU-seconds per machine-hour of each process, from `bench e2e --json` runs.

``python -m deploy.capacity_chart LABEL=RESULT.json[@N] [...] --machines N --out docs/capacity-cpu.png``
draws, for each run, the step with ``N`` machines (``@N`` after a run: that run's step) as one bar per
process (gateway, features, scoring, broker, influxd), side by side, and prints the same figures as a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROLES = ("gateway", "features", "scoring", "broker", "influxd")


def step_of(result: dict[str, Any], machines: int) -> dict[str, Any]:
    for step in result.get("steps", []):
        if step.get("machines") == machines:
            return step
    have = [s.get("machines") for s in result.get("steps", [])]
    raise SystemExit(f"no step with {machines} machines in this result (steps: {have})")


def table(runs: list[tuple[str, dict[str, Any]]]) -> str:
    head = "| run | machines | " + " | ".join(ROLES) + " | total | p99 (s) | sustained |"
    rows = [head, "|" + "---|" * (len(ROLES) + 5)]
    for label, step in runs:
        cpu = step.get("cpu_s_per_machine_hour", {})
        cells = [f"{cpu[r]:.2f}" if r in cpu else "–" for r in ROLES]
        rows.append(
            f"| {label} | {step['machines']} | " + " | ".join(cells) + f" | {cpu.get('total', float('nan')):.2f} | "
            f"{step['latency_p99_s']:.2f} | {'yes' if step['sustained'] else 'no'} |"
        )
    return "\n".join(rows)


def draw(runs: list[tuple[str, dict[str, Any]]], out: Path) -> None:
    import matplotlib  # deferred: loads matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib

    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    width = 0.8 / max(1, len(runs))
    for i, (label, step) in enumerate(runs):
        cpu = step.get("cpu_s_per_machine_hour", {})
        xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(ROLES))]
        bars = ax.bar(xs, [cpu.get(r, 0.0) for r in ROLES], width, label=f"{label} ({step['machines']} machines)")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(ROLES)), ROLES)
    ax.set_ylabel("CPU-s per machine-hour")
    ax.set_title("bench e2e: CPU per machine by process (lower is better)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "runs", nargs="+", help="LABEL=RESULT.json[@N] (the JSON `bench e2e --json` prints; @N: its step of N)"
    )
    parser.add_argument("--machines", type=int, required=True, help="the step (machine count) to compare")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        label, _, path = spec.partition("=")
        path, at, step = path.rpartition("@") if "@" in path else (path, "", "")
        if not path or (at and not step.isdigit()):
            raise SystemExit(f"{spec!r}: expected LABEL=RESULT.json or LABEL=RESULT.json@MACHINES")
        runs.append((label, step_of(json.loads(Path(path).read_text()), int(step) if at else args.machines)))
    draw(runs, args.out)
    print(table(runs))


if __name__ == "__main__":
    main()
