"""The Grafana InfluxDB (InfluxQL) data source the dashboards and rules refer to by uid."""

from __future__ import annotations

from typing import Any, Literal

from soundwatch.settings import Settings

NAME = "soundwatch-influxdb"


def datasource(settings: Settings, *, secrets: Literal["env", "inline"]) -> dict[str, Any]:
    """Data source definition (shared by file provisioning and the HTTP API).

    ``secrets="env"`` writes ``$SOUNDWATCH_INFLUX__PASSWORD``-style references that Grafana's
    provisioning expands from its environment, so exported files never hold a secret;
    ``"inline"`` puts the values in (for ``push``, which sends them over the API).
    InfluxDB 2.x/3.x are queried with InfluxQL too: database = bucket (DBRP mapping), and the
    token goes in an ``Authorization: Token`` header.
    """
    influx = settings.influx
    ds: dict[str, Any] = {
        "name": NAME,
        "uid": settings.grafana.datasource_uid,
        "type": "influxdb",
        "access": "proxy",
        "url": influx.url,
        "isDefault": False,
        "jsonData": {
            "dbName": influx.database if influx.api == "v1" else influx.bucket,
            "httpMode": "GET",
            "version": "InfluxQL",
            "timeInterval": "1s",
        },
    }
    secure: dict[str, str] = {}
    if influx.api == "v1" and influx.username:
        ds["user"] = influx.username
        if influx.password is not None:
            secure["password"] = (
                influx.password.get_secret_value() if secrets == "inline" else "$SOUNDWATCH_INFLUX__PASSWORD"
            )
    if influx.api == "v2" and influx.token is not None:
        ds["jsonData"]["httpHeaderName1"] = "Authorization"
        token = influx.token.get_secret_value() if secrets == "inline" else "$SOUNDWATCH_INFLUX__TOKEN"
        secure["httpHeaderValue1"] = f"Token {token}"
    if secure:
        ds["secureJsonData"] = secure
    return ds
