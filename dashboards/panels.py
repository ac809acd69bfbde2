"""Small constructors for Grafana 11 dashboard JSON (panels, InfluxQL targets, layout).

Plain dicts rather than grafana-foundation-sdk builders, so that exporting dashboards needs no
optional dependency; the tests round-trip everything through the SDK's 11.6 models to prove the
JSON matches Grafana's schema.
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

SCHEMA_VERSION = 39  # Grafana 11.0; 11.x/12.x migrate it forward on load
GRID_WIDTH = 24

# Median score / threshold: 1.0 is where the alert rule fires.
RATIO_THRESHOLDS: Json = {
    "mode": "absolute",
    "steps": [
        {"color": "green", "value": None},
        {"color": "#EAB839", "value": 0.8},
        {"color": "red", "value": 1.0},
    ],
}


# The ``state`` of ``machine_status``: STALE stands out, so a silent machine never reads "normal".
STATE_MAPPINGS: list[Json] = [
    {
        "type": "value",
        "options": {
            "normal": {"color": "green", "index": 0, "text": "normal"},
            "alerting": {"color": "red", "index": 1, "text": "ALERTING"},
            "stale": {"color": "orange", "index": 2, "text": "STALE"},
        },
    }
]


def datasource(uid: str) -> Json:
    return {"type": "influxdb", "uid": uid}


def target(ref_id: str, ds_uid: str, query: str, *, alias: str | None = None, table: bool = False) -> Json:
    """A raw InfluxQL query target (``rawQuery``: Grafana sends the string as written)."""
    out: Json = {
        "refId": ref_id,
        "datasource": datasource(ds_uid),
        "query": query,
        "rawQuery": True,
        "resultFormat": "table" if table else "time_series",
    }
    if alias:
        out["alias"] = alias
    return out


class Layout:
    """Places panels left to right, wrapping to a new row, and numbers them (ids are unique per dashboard)."""

    def __init__(self) -> None:
        self._x = 0
        self._y = 0
        self._row_h = 0
        self._next_id = 1

    def place(self, panel: Json, w: int, h: int) -> Json:
        if self._x + w > GRID_WIDTH:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0
        panel["id"] = self._next_id
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        self._next_id += 1
        self._x += w
        self._row_h = max(self._row_h, h)
        return panel

    def newline(self) -> None:
        if self._x:
            self._x, self._y, self._row_h = 0, self._y + self._row_h, 0


def _panel(
    kind: str,
    title: str,
    ds_uid: str,
    targets: list[Json],
    *,
    description: str,
    options: Json,
    defaults: Json,
    overrides: list[Json] | None = None,
) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": datasource(ds_uid),
        "targets": targets,
        "options": options,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
    }


_REDUCE_LAST: Json = {"calcs": ["lastNotNull"], "fields": "", "values": False}
_LEGEND: Json = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
_TOOLTIP: Json = {"mode": "multi", "sort": "desc"}


def timeseries(
    title: str,
    ds_uid: str,
    targets: list[Json],
    *,
    description: str,
    unit: str = "none",
    overrides: list[Json] | None = None,
    bars: bool = False,
) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 20 if bars else 0,
        "showPoints": "never",
        "spanNulls": False,
    }
    return _panel(
        "timeseries",
        title,
        ds_uid,
        targets,
        description=description,
        options={"legend": _LEGEND, "tooltip": _TOOLTIP},
        defaults={"unit": unit, "custom": custom},
        overrides=overrides,
    )


def stat(
    title: str,
    ds_uid: str,
    targets: list[Json],
    *,
    description: str,
    unit: str = "none",
    thresholds: Json | None = None,
    decimals: int | None = None,
    no_value: str = "no data",
    mappings: list[Json] | None = None,
) -> Json:
    defaults: Json = {
        "unit": unit,
        "noValue": no_value,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or {"mode": "absolute", "steps": [{"color": "blue", "value": None}]},
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if mappings:
        defaults["mappings"] = mappings
    return _panel(
        "stat",
        title,
        ds_uid,
        targets,
        description=description,
        options={
            "reduceOptions": _REDUCE_LAST,
            "colorMode": "background",
            "graphMode": "none",
            "textMode": "value_and_name",
            "orientation": "auto",
            "justifyMode": "center",
            "wideLayout": True,
            "showPercentChange": False,
        },
        defaults=defaults,
    )


def show_text_field(panel: Json, field_name: str) -> None:
    """Make a stat panel show the string field ``field_name`` (stat panels reduce numbers only by default)."""
    panel["options"]["reduceOptions"] = {**_REDUCE_LAST, "fields": f"/^{field_name}$/"}
    panel["options"]["textMode"] = "value_and_name"


def bargauge(
    title: str, ds_uid: str, targets: list[Json], *, description: str, thresholds: Json, maximum: float
) -> Json:
    return _panel(
        "bargauge",
        title,
        ds_uid,
        targets,
        description=description,
        options={
            "reduceOptions": _REDUCE_LAST,
            "orientation": "horizontal",
            "displayMode": "lcd",
            "showUnfilled": True,
            "valueMode": "color",
            "namePlacement": "left",
            "sizing": "auto",
            "minVizHeight": 16,
            "minVizWidth": 8,
            "maxVizHeight": 300,
        },
        defaults={
            "unit": "none",
            "decimals": 2,
            "min": 0,
            "max": maximum,
            "color": {"mode": "thresholds"},
            "thresholds": thresholds,
        },
    )


def status_history(title: str, ds_uid: str, targets: list[Json], *, description: str, thresholds: Json) -> Json:
    """Rows = series (machines), columns = time buckets, colour = value: a per-machine heat map."""
    return _panel(
        "status-history",
        title,
        ds_uid,
        targets,
        description=description,
        options={
            "showValue": "never",
            "rowHeight": 0.9,
            "colWidth": 0.95,
            "legend": {**_LEGEND, "showLegend": False},
            "tooltip": {"mode": "single", "sort": "none"},
        },
        defaults={
            "unit": "none",
            "decimals": 2,
            "color": {"mode": "thresholds"},
            "thresholds": thresholds,
            "custom": {"lineWidth": 0, "fillOpacity": 90},
        },
    )


def heatmap(title: str, ds_uid: str, targets: list[Json], *, description: str) -> Json:
    """Distribution of a value over time across all series (Grafana buckets it: ``calculate``)."""
    return _panel(
        "heatmap",
        title,
        ds_uid,
        targets,
        description=description,
        options={
            "calculate": True,
            "calculation": {"yBuckets": {"mode": "size", "value": "0.1"}},
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "steps": 64,
                "exponent": 0.5,
                "fill": "dark-orange",
                "reverse": False,
            },
            "cellGap": 1,
            "yAxis": {"axisPlacement": "left", "unit": "none", "reverse": False},
            "legend": {"show": True},
            "tooltip": {"mode": "single", "yHistogram": False},
            "rowsFrame": {"layout": "auto"},
            "showValue": "never",
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "selectionMode": "x",
        },
        defaults={
            "custom": {
                "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                "scaleDistribution": {"type": "linear"},
            }
        },
    )


def table(
    title: str, ds_uid: str, targets: list[Json], *, description: str, overrides: list[Json] | None = None
) -> Json:
    return _panel(
        "table",
        title,
        ds_uid,
        targets,
        description=description,
        options={
            "showHeader": True,
            "cellHeight": "sm",
            "footer": {"show": False, "reducer": ["sum"], "fields": "", "countRows": False},
        },
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False}},
        overrides=overrides,
    )


def override(name: str, **props: Any) -> Json:
    """Field override by series/field name: ``override("threshold", color=..., custom_lineStyle=...)``."""
    properties = [{"id": key.replace("__", "."), "value": value} for key, value in props.items()]
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


def text(title: str, content: str) -> Json:
    return {
        "type": "text",
        "title": title,
        "options": {
            "mode": "markdown",
            "content": content,
            "code": {"language": "plaintext", "showLineNumbers": False, "showMiniMap": False},
        },
    }


def query_variable(name: str, label: str, ds_uid: str, query: str, *, current: str | None) -> Json:
    """A template variable filled by an InfluxQL ``SHOW TAG VALUES`` query, refreshed on time change."""
    var: Json = {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": datasource(ds_uid),
        "query": query,
        "refresh": 2,
        "sort": 1,
        "multi": False,
        "includeAll": False,
        "hide": 0,
        "skipUrlSync": False,
        "options": [],
    }
    if current is not None:
        var["current"] = {"selected": True, "text": current, "value": current}
    return var


def dashboard(
    uid: str,
    title: str,
    *,
    panels: list[Json],
    description: str,
    tags: list[str],
    variables: list[Json] | None = None,
    annotations: list[Json] | None = None,
    links: list[Json] | None = None,
    refresh: str = "30s",
    time_from: str = "now-6h",
) -> Json:
    builtin: Json = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "panels": panels,
        "templating": {"list": variables or []},
        "annotations": {"list": [builtin, *(annotations or [])]},
        "links": links or [],
    }
