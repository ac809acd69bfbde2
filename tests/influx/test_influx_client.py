"""The core InfluxDB client and schema: credentials only in the Authorization header, both dialects,
errors that say what to do — against real servers (a private auth-enabled influxd, the shared one)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from influx_v2_bridge import V2Bridge
from pydantic import SecretStr

from deploy.private_services import PrivateInflux
from soundwatch.errors import ConfigError, ServiceUnavailable
from soundwatch.influx.client import InfluxClient, InfluxQueryError, InfluxWriteError, auth_header
from soundwatch.influx.schema import MachineState, machine_status_point, pipeline_point
from soundwatch.settings import InfluxSettings

USER, PASSWORD = "writer", "s3cret:with/odd+chars"


@pytest.fixture
def auth_influx(tmp_path: Path):
    if shutil.which("influxd") is None:
        pytest.skip("influxd not installed (apt-get install -y influxdb)")
    server = PrivateInflux(tmp_path / "influxd", auth=True, access_log=True).start()
    try:
        server.create_admin(USER, PASSWORD)
        yield server
    finally:
        server.kill()


def _request_lines(server: PrivateInflux) -> list[str]:
    """The access log's request lines: ``[httpd] <ip> - <user> [<time>] "<method> <uri> ..."``."""
    return [line for line in server.log_path.read_text().splitlines() if line.startswith("[httpd]")]


@pytest.mark.integration
def test_v1_credentials_travel_in_a_basic_header_never_in_the_url(auth_influx):
    settings = InfluxSettings(url=auth_influx.url, database="sw_auth", username=USER, password=SecretStr(PASSWORD))
    with InfluxClient(settings) as client:
        client.create_database()
        client.write([pipeline_point("scoring", "w-1", {"windows_per_s": 2.5, "consumer_lag": 3}, 10**18).to_line()])
        (series,) = client.query('SELECT * FROM "pipeline"', epoch="ns")
    assert series.rows() == [
        {"time": 10**18, "consumer_lag": 3, "stage": "scoring", "windows_per_s": 2.5, "worker": "w-1"}
    ]
    lines = [line for line in _request_lines(auth_influx) if "/write" in line or "/query" in line]
    ours = [line for line in lines if "CREATE+USER" not in line]
    assert len(ours) == 3
    for line in ours:
        assert f" - {USER} [" in line  # the server authenticated the user from the header
        uri = re.search(r'"(?:GET|POST) (\S+) HTTP', line).group(1)
        assert not re.search(r"[?&](u|p)=", uri), uri  # nothing credential-like in the URL


@pytest.mark.integration
def test_wrong_credentials_say_which_settings_to_fix(auth_influx):
    wrong = InfluxSettings(url=auth_influx.url, database="sw_auth", username=USER, password=SecretStr("nope"))
    with InfluxClient(wrong) as client:
        with pytest.raises(ConfigError, match="refused the credentials") as query_error:
            client.query("SHOW DATABASES")
        with pytest.raises(InfluxWriteError, match="HTTP 401") as write_error:
            client.write([pipeline_point("scoring", "w-1", {"windows_per_s": 1.0}, 1).to_line()])
    assert write_error.value.retryable  # credentials can be fixed while the worker waits
    for hint in (query_error.value.hint, write_error.value.hint):
        assert "SOUNDWATCH_INFLUX__USERNAME/PASSWORD" in (hint or "")
    assert "nope" not in str(query_error.value) + str(write_error.value)


@pytest.mark.integration
def test_query_errors_are_typed(isolated_settings):
    with InfluxClient(isolated_settings.influx) as client:
        assert client.query('SELECT * FROM "nothing_here"') == []
        with pytest.raises(InfluxQueryError, match="rejected") as bad:
            client.query("SELECT FROM WHERE")
        assert "error parsing query" in bad.value.error
    ix = isolated_settings.influx
    missing_db = ix.model_copy(update={"database": "missing_" + ix.database})
    with InfluxClient(missing_db) as client, pytest.raises(InfluxQueryError) as missing:
        client.query('SELECT * FROM "x"')
    assert "database not found" in missing.value.error
    down = InfluxClient(InfluxSettings(url="http://127.0.0.1:1", timeout_s=2))
    with down, pytest.raises(ServiceUnavailable, match="cannot reach InfluxDB at http://127.0.0.1:1"):
        down.query("SHOW DATABASES")


@pytest.mark.integration
def test_v2_dialect_sends_a_token_header_to_write_and_query(isolated_settings):
    s = isolated_settings
    with V2Bridge(s.influx.url, token="t0ken", org="plant") as bridge:
        v2 = s.influx.model_copy(
            update={
                "api": "v2",
                "url": bridge.url,
                "token": SecretStr("t0ken"),
                "org": "plant",
                "bucket": s.influx.database,
            }
        )
        with InfluxClient(v2) as client:
            client.write([pipeline_point("features", "f-1", {"windows_per_s": 4.0}, 10**18).to_line()])
            (series,) = client.query('SELECT "windows_per_s" FROM "pipeline"')
        assert series.rows() == [{"time": 10**12, "windows_per_s": 4.0}]  # epoch ms by default
        assert [r["path"] for r in bridge.requests] == ["/api/v2/write", "/query"]
        assert all("token" not in r and "p" not in r for r in bridge.requests)  # the token is not in the URL
        assert bridge.requests[1]["db"] == s.influx.database  # 2.x: database = bucket (DBRP mapping)


def test_auth_header_per_dialect():
    assert auth_header(InfluxSettings()) == {}
    basic = auth_header(InfluxSettings(username="u", password=SecretStr("p:w")))
    assert basic == {"Authorization": "Basic dTpwOnc="}  # base64("u:p:w")
    assert auth_header(InfluxSettings(api="v2", token=SecretStr("tk"))) == {"Authorization": "Token tk"}
    # a 2.x/3.x server's 1.x-compatible endpoints take the token too
    assert auth_header(InfluxSettings(api="v1", token=SecretStr("tk"))) == {"Authorization": "Token tk"}


def test_machine_status_point_stale_wins_over_alerting():
    assert MachineState.of(alerting=True, stale=True) is MachineState.STALE
    assert MachineState.of(alerting=True, stale=False) is MachineState.ALERTING
    assert MachineState.of(alerting=False, stale=False) is MachineState.NORMAL
    point = machine_status_point(
        machine_type="fan", machine_id="id_00", seconds_since_audio=75.5, alerting=True, stale=True, time_ns=5
    )
    assert point.to_line() == (
        'machine_status,machine_id=id_00,machine_type=fan alerting=1i,seconds_since_audio=75.5,stale=1i,state="stale" 5'
    )
