"""PNG pictures of the fleet and machine dashboards, drawn with matplotlib from the SAME queries.

The queries are taken out of the built dashboard JSON (panel targets and annotations), interpolated
the way Grafana does and run against InfluxDB, so the picture in the demo report shows exactly
what Grafana would show — and can be checked without a Grafana server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dashboards import queries as q
from dashboards.alerting import duration_s
from dashboards.builder import fleet_dashboard, machine_dashboard
from dashboards.influxql import interpolate
from dashboards.machines import Machine, check_machines
from soundwatch.errors import BadInput
from soundwatch.influx.client import InfluxClient, Series
from soundwatch.influx.schema import MachineState
from soundwatch.settings import Settings

_NICE_INTERVALS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400]


def grafana_interval(start_ms: int, end_ms: int, max_points: int = 300) -> str:
    """Roughly Grafana's ``$__interval``: the range split into ~``max_points`` buckets, rounded up."""
    want = max(1.0, (end_ms - start_ms) / 1000 / max_points)
    seconds = next((s for s in _NICE_INTERVALS_S if s >= want), _NICE_INTERVALS_S[-1])
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


@dataclass(frozen=True)
class NamedSeries:
    """A query result series with Grafana's display name (alias with ``$tag_x`` filled in)."""

    name: str
    times_ms: list[int]
    values: list[Any]
    tags: dict[str, str]
    columns: dict[str, list[Any]]


def _display(alias: str | None, series: Series, column: str) -> str:
    if not alias:
        return f"{series.name}.{column}"
    out = alias
    for key, value in series.tags.items():
        out = out.replace(f"$tag_{key}", value)
    return out.replace("$col", column)


class PanelRunner:
    """Runs a dashboard's panel targets and annotations over one time range."""

    def __init__(
        self,
        client: InfluxClient,
        *,
        start_ms: int,
        end_ms: int,
        variables: dict[str, str] | None = None,
        interval: str | None = None,
    ) -> None:
        self.client = client
        self.start_ms, self.end_ms = start_ms, end_ms
        self.interval = interval or grafana_interval(start_ms, end_ms)
        self.variables = variables or {}

    def run(self, query: str, *, time_from: str | None = None) -> list[Series]:
        start = self.start_ms
        if time_from:  # panel "relative time" override, e.g. "5m"
            start = max(start, self.end_ms - 1000 * duration_s(time_from))
        text = interpolate(query, start_ms=start, end_ms=self.end_ms, interval=self.interval, variables=self.variables)
        return self.client.query(text)

    def panel(self, board: dict[str, Any], title: str) -> list[NamedSeries]:
        """Every series of the panel called ``title`` (targets in order), named like Grafana names them."""
        panel = next((p for p in board["panels"] if p.get("title") == title), None)
        if panel is None:
            raise BadInput(f"dashboard {board['uid']} has no panel {title!r}")
        out: list[NamedSeries] = []
        for target in panel.get("targets", []):
            for s in self.run(target["query"], time_from=panel.get("timeFrom")):
                cols = {c: s.column(c) for c in s.columns}
                value_col = s.columns[1]
                out.append(
                    NamedSeries(
                        _display(target.get("alias"), s, value_col),
                        cols["time"],
                        cols[value_col],
                        s.tags,
                        cols,
                    )
                )
        return out

    def annotations(self, board: dict[str, Any], name: str) -> list[dict[str, Any]]:
        """Rows of the annotation query ``name`` (each with ``time`` in ms and the row's columns/tags)."""
        ann = next((a for a in board["annotations"]["list"] if a.get("name") == name), None)
        if ann is None:
            raise BadInput(f"dashboard {board['uid']} has no annotation {name!r}")
        rows: list[dict[str, Any]] = []
        for s in self.run(ann["target"]["query"]):
            rows.extend({**s.tags, **row} for row in s.rows())
        return sorted(rows, key=lambda r: r["time"])


def _ratio_color(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "#9e9e9e"
    return "#d62728" if value >= 1.0 else "#e5b50f" if value >= 0.8 else "#2ca02c"


# the same colours and words as the dashboards' state mappings (dashboards.panels.STATE_MAPPINGS)
_STATE_STYLE = {
    MachineState.NORMAL.value: ("#2ca02c", "normal"),
    MachineState.ALERTING.value: ("#d62728", "ALERTING"),
    MachineState.STALE.value: ("#ff7f0e", "STALE"),
}


def render_fleet(settings: Settings, machines: Sequence[Machine], out: Path, *, start_ms: int, end_ms: int) -> Path:
    """Fleet overview PNG: latest ratio bars, status grid, per-machine heat map over time."""
    import matplotlib  # deferred: loads matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib

    machines = check_machines(machines)
    board = fleet_dashboard(settings.grafana, machines)
    runner = PanelRunner(InfluxClient(settings.influx), start_ms=start_ms, end_ms=end_ms)
    latest = {s.name: s.values[-1] for s in runner.panel(board, "Median score / threshold (latest)")}
    status = {s.name: s.values[-1] for s in runner.panel(board, "Status")}
    heat = runner.panel(board, "Heat map: median score / threshold per machine")

    keys = [m.key for m in machines]
    fig = plt.figure(figsize=(13, 4 + 0.35 * len(keys) * 2), constrained_layout=True)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1], width_ratios=[1, 1])
    ax_bar, ax_status, ax_heat = (
        fig.add_subplot(grid[0, 0]),
        fig.add_subplot(grid[0, 1]),
        fig.add_subplot(grid[1, :]),
    )

    names = sorted(latest, key=lambda k: latest[k])
    ax_bar.barh(names, [latest[n] for n in names], color=[_ratio_color(latest[n]) for n in names])
    ax_bar.axvline(1.0, color="red", linestyle="--", linewidth=1)
    ax_bar.set_title("Median score / threshold (latest)")
    ax_bar.set_xlabel("1.0 = alert line")

    cols = min(4, max(1, len(keys)))
    rows = math.ceil(len(keys) / cols)
    ax_status.set_xlim(0, cols)
    ax_status.set_ylim(0, rows)
    ax_status.invert_yaxis()
    ax_status.axis("off")
    ax_status.set_title(f"Status (last {settings.grafana.nodata_after})")
    for i, key in enumerate(keys):
        r, c = divmod(i, cols)
        color, label = _STATE_STYLE.get(str(status.get(key)), ("#9e9e9e", "no data"))
        ax_status.add_patch(plt.Rectangle((c + 0.04, r + 0.06), 0.92, 0.88, color=color))
        ax_status.text(c + 0.5, r + 0.5, f"{key}\n{label}", ha="center", va="center", color="white", fontsize=9)

    series = {s.name: s for s in heat}
    all_times = sorted({t for s in heat for t in s.times_ms})
    if all_times:
        index = {t: j for j, t in enumerate(all_times)}
        matrix = np.full((len(keys), len(all_times)), np.nan)
        for i, key in enumerate(keys):
            s = series.get(key)
            if s is not None:
                for t, v in zip(s.times_ms, s.values, strict=True):
                    if v is not None:
                        matrix[i, index[t]] = v
        span = [(all_times[0] - start_ms) / 60000, (all_times[-1] - start_ms) / 60000]
        img = ax_heat.imshow(
            matrix,
            aspect="auto",
            cmap="RdYlGn_r",
            vmin=0,
            vmax=2,
            interpolation="nearest",
            extent=(span[0], span[1] + 1e-9, len(keys) - 0.5, -0.5),
        )
        fig.colorbar(img, ax=ax_heat, label="median / threshold")
    ax_heat.set_yticks(range(len(keys)), keys)
    ax_heat.set_xlabel("minutes since range start")
    ax_heat.set_title("Heat map: median score / threshold per machine")
    fig.suptitle(f"soundwatch fleet overview — {_fmt_range(start_ms, end_ms)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def render_machine(
    settings: Settings,
    machines: Sequence[Machine],
    machine: Machine,
    out: Path,
    *,
    start_ms: int,
    end_ms: int,
) -> Path:
    """Machine drill-down PNG: raw/median score, threshold line, alert and model-version annotations."""
    import matplotlib  # deferred: loads matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: loads matplotlib

    board = machine_dashboard(settings.grafana, machines)
    runner = PanelRunner(
        InfluxClient(settings.influx),
        start_ms=start_ms,
        end_ms=end_ms,
        variables={q.VAR_TYPE: machine.machine_type, q.VAR_MACHINE: machine.machine_id},
    )
    score = runner.panel(board, "Anomaly score")
    anomalous = runner.panel(board, "Anomalous windows per interval")
    alerts = runner.annotations(board, "alert state changes")
    models = runner.annotations(board, "model version changes")

    def minutes(t: int) -> float:
        return (t - start_ms) / 60000

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, height_ratios=[3, 1], constrained_layout=True)
    styles = {
        "score": dict(color="#8AB8FF", linewidth=0.8),
        "score_median": dict(color="blue", linewidth=1.8),
        "threshold": dict(color="red", linewidth=1.5, linestyle="--"),
    }
    for s in score:
        ax.plot([minutes(t) for t in s.times_ms], s.values, label=s.name, **styles.get(s.name, {}))
    for a in alerts:
        color = "#d62728" if a.get("state") == "alerting" else "#2ca02c"
        ax.axvline(minutes(a["time"]), color=color, linewidth=1.2)
        ax.annotate(
            str(a.get("state")),
            (minutes(a["time"]), 1.0),
            xycoords=("data", "axes fraction"),
            color=color,
            fontsize=8,
            rotation=90,
            va="top",
            ha="right",
        )
    for m in models:
        ax.axvline(minutes(m["time"]), color="purple", linestyle=":", linewidth=1.2)
        ax.annotate(
            f"model {m.get('model_version')}",
            (minutes(m["time"]), 0.02),
            xycoords=("data", "axes fraction"),
            color="purple",
            fontsize=8,
            rotation=90,
            va="bottom",
            ha="left",
        )
    ax.set_ylabel("anomaly score")
    ax.legend(loc="upper left")
    ax.set_title(f"{machine.key}: raw and median score, threshold, alerts (red/green) and model versions (purple)")
    for s in anomalous:
        ax2.bar(
            [minutes(t) for t in s.times_ms],
            s.values,
            width=max(0.05, _interval_minutes(runner.interval) * 0.9),
            color="#d62728",
        )
    ax2.set_ylabel("anomalous\nwindows")
    ax2.set_xlabel("minutes since range start")
    fig.suptitle(f"soundwatch machine {machine.key} — {_fmt_range(start_ms, end_ms)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _interval_minutes(interval: str) -> float:
    return duration_s(interval) / 60


def _fmt_range(start_ms: int, end_ms: int) -> str:
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    start, end = (time.strftime(fmt, time.gmtime(t / 1000)) for t in (start_ms, end_ms))
    return f"{start} to {end}"


def render(
    settings: Settings,
    out_dir: Path,
    machines: Sequence[Machine],
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    drill_down: Sequence[Machine] | None = None,
) -> list[Path]:
    """Write ``fleet.png`` and one ``machine-<type>-<id>.png`` per drill-down machine (default: all).

    Default range: the last hour.
    """
    machines = check_machines(machines)
    if not machines:
        raise BadInput("no machines to render", "pass --machines TYPE/ID,... or use --from-influx")
    end_ms = end_ms if end_ms is not None else int(time.time() * 1000)
    start_ms = start_ms if start_ms is not None else end_ms - 3600 * 1000
    if start_ms >= end_ms:
        raise BadInput(f"empty time range {start_ms}..{end_ms} ms", "start must be before end")
    out_dir = Path(out_dir)
    paths = [render_fleet(settings, machines, out_dir / "fleet.png", start_ms=start_ms, end_ms=end_ms)]
    for m in check_machines(drill_down if drill_down is not None else machines):
        paths.append(
            render_machine(
                settings,
                machines,
                m,
                out_dir / f"machine-{m.machine_type}-{m.machine_id}.png",
                start_ms=start_ms,
                end_ms=end_ms,
            )
        )
    return paths
