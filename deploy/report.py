"""The demo's HTML report: per-machine score timelines with threshold and alert spans, the
spectrogram of each window that raised an alert, and extra pictures (dashboard renderings).

Everything is embedded (base64 PNG), so the report is one file that can be mailed or archived.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from deploy.observer import MachineView, percentile  # noqa: E402
from soundwatch.contracts import FeatureWindow  # noqa: E402
from soundwatch.params import FeatureParams  # noqa: E402


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _times(ns: Sequence[int]) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(t / 1e9, tz=dt.UTC) for t in ns]


def timeline_png(view: MachineView) -> str:
    """Raw and median-filtered score, the threshold, and shaded alert spans."""
    fig, ax = plt.subplots(figsize=(10, 2.8))
    t = _times(view.times_ns)
    ax.plot(t, view.scores, color="#9aa5b1", lw=0.8, label="window score")
    ax.plot(t, view.medians, color="#1f5fbf", lw=1.8, label="median-filtered score")
    ax.step(t, view.thresholds, where="post", color="#d64545", ls="--", lw=1.2, label="threshold")
    end = t[-1] if t else None
    for start_ns, stop_ns in view.alert_spans():
        ax.axvspan(
            _times([start_ns])[0],
            _times([stop_ns])[0] if stop_ns else end,
            color="#d64545",
            alpha=0.15,
            label="alerting" if start_ns == view.alert_spans()[0][0] else None,
        )
    ax.set_title(f"{view.key}  (model {view.model_version})", loc="left", fontsize=10)
    ax.set_ylabel("anomaly score")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.legend(loc="upper left", fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    return _png(fig)


def spectrogram_png(window: FeatureWindow) -> str:
    """Log-mel spectrogram of one window, in dB, time in seconds from the window start."""
    params = FeatureParams.from_json(window.feature_params)
    fig, ax = plt.subplots(figsize=(6, 3))
    seconds = window.n_frames * params.hop_length / params.sample_rate
    im = ax.imshow(window.values, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, window.n_mels))
    fig.colorbar(im, ax=ax, label="dB")
    when = _times([window.end_ns])[0].strftime("%H:%M:%S")
    ax.set_title(
        f"{window.machine_type}/{window.machine_id}: window ending {when} UTC (raised the alert)",
        fontsize=9,
        loc="left",
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel band")
    return _png(fig)


def write_report(
    path: Path,
    views: Sequence[MachineView],
    *,
    title: str,
    summary: dict[str, str],
    images: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Write the HTML report; ``images`` are extra (caption, PNG path) pairs, e.g. dashboard renderings."""
    rows, sections = [], []
    for v in views:
        n_alerts = sum(1 for s in v.alert_spans())
        lat = f"{percentile(v.latencies_s, 50):.2f} / {percentile(v.latencies_s, 99):.2f}" if v.latencies_s else "-"
        state = "ALERTING" if v.state.value == "alerting" else "normal"
        rows.append(
            f"<tr class='{state.lower()}'><td>{html.escape(v.key)}</td><td>{len(v.scores)}</td>"
            f"<td>{(v.medians[-1] if v.medians else float('nan')):.3f}</td>"
            f"<td>{(v.thresholds[-1] if v.thresholds else float('nan')):.3f}</td>"
            f"<td>{v.ratio:.2f}</td><td>{state}</td><td>{n_alerts}</td><td>{lat}</td></tr>"
        )
        if not v.scores:
            continue
        parts = [f"<h3>{html.escape(v.key)}</h3>", f"<img src='data:image/png;base64,{timeline_png(v)}'>"]
        for a in v.alerts:
            when = _times([a.timestamp_ns])[0].strftime("%H:%M:%S")
            parts.append(
                f"<p class='event'>{when} UTC: {a.previous.value} &rarr; <b>{a.current.value}</b> "
                f"(median {a.score_median:.3f} vs threshold {a.threshold:.3f}) "
                f"{html.escape(a.message)}</p>"
            )
        for w in v.alert_windows[:3]:
            parts.append(f"<img src='data:image/png;base64,{spectrogram_png(w)}'>")
        sections.append("\n".join(parts))
    extra = "".join(
        f"<h3>{html.escape(caption)}</h3><img src='data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}'>"
        for caption, p in images
        if p.is_file()
    )
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items())
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}}tr.alerting td{{background:#fde2e2}}
img{{max-width:100%}}.event{{margin:2px 0;font-size:90%}}</style></head><body>
<h1>{html.escape(title)}</h1><table>{facts}</table>
<h2>Machines</h2><table><tr><th>machine</th><th>windows</th><th>median score</th><th>threshold</th>
<th>score/threshold</th><th>state</th><th>alerts</th><th>latency p50/p99 s</th></tr>{"".join(rows)}</table>
<h2>Score timelines</h2>{"".join(sections)}
{("<h2>Dashboards (rendered from the Grafana panel queries against InfluxDB)</h2>" + extra) if extra else ""}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path
