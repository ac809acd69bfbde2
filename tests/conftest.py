"""Shared fixtures.

Integration tests use the real local stack (``soundwatch services up``). When a
service does not answer, the test is skipped with the command to run — except
under ``CI=true``, where a missing service is a failure.

Every test gets its own topic names, InfluxDB database and Redis key prefix, so
tests (and several test processes) never see each other's data.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from soundwatch.settings import Settings, get_settings, load_settings

# The tests run as production should: with a registry signing key (CI may set its own), so every
# registry a test opens, in this process or in a worker it starts, signs what it saves and refuses
# unsigned or mis-signed artifacts. A test about the unsigned case passes signing_key=None.
os.environ.setdefault("SOUNDWATCH_REGISTRY_SIGNING_KEY", "soundwatch-tests-signing-key-7f3c9a")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_MINI = (REPO_ROOT.parent / "shared" / "data" / "real-mini").resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing_service(what: str) -> None:
    message = f"{what}; start the local stack with `soundwatch services up` (or `make services`)"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _fresh_process_settings() -> Iterator[None]:
    """Each test reads the process settings (``get_settings``) from its own environment, not a cached copy."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_soundwatch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., CliRun]]:
    """``run("models", "show", ...)``: the console script's ``main()`` in this process, as a user runs it
    (exit code, stdout, stderr); logger levels that ``--debug`` changes are restored afterwards."""
    noisy = ("", "kafka", "aiokafka", "faust", "mode", "urllib3")
    levels = {name: logging.getLogger(name).level for name in noisy}

    def run(*args: str) -> CliRun:
        from deploy.main import main

        monkeypatch.setattr(sys, "argv", ["soundwatch", *args])
        get_settings.cache_clear()  # a fresh process reads its environment
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        out, err = capsys.readouterr()
        return CliRun(code, out, err)

    yield run
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def stack() -> Settings:
    """Base settings after checking that Kafka, Redis and InfluxDB answer."""
    from deploy.local_stack import LocalStack

    base = load_settings()
    down = [s for s in LocalStack(base).status() if not s.answering]
    if down:
        _missing_service(", ".join(f"{s.name} at {s.address} is down ({s.detail})" for s in down))
    return base


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def isolated_settings(stack: Settings, unique: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing at the live stack with test-private topics, database, Redis prefix and dirs."""
    from soundwatch.influx.client import InfluxClient
    from soundwatch.kafka import ensure_topics

    topics = {name: f"t{unique}.{name}" for name in ("audio_raw", "features", "alerts", "scores", "deadletter")}
    settings = load_settings(
        kafka={**stack.kafka.model_dump(), "topics": {**topics, "partitions": 4}},
        influx={**stack.influx.model_dump(), "database": f"test_{unique}"},
        redis={**stack.redis.model_dump(), "key_prefix": f"test:{unique}"},
        ingest={**stack.ingest.model_dump(), "spool_dir": tmp_path / "spool", "state_dir": tmp_path / "gateway"},
        stream={**stack.stream.model_dump(), "data_dir": tmp_path / "faust", "app_id": f"features-{unique}"},
        scoring={**stack.scoring.model_dump(), "group_id": f"scoring-{unique}", "metrics_port": 0},
        registry_root=tmp_path / "registry",
    )
    ensure_topics(settings)
    with InfluxClient(settings.influx) as influx:
        influx.create_database()
        yield settings
        influx.drop_database()


@pytest.fixture(scope="session")
def real_mini() -> Path:
    if not REAL_MINI.is_dir():
        pytest.fail(f"real-mini clips not found at {REAL_MINI}: the repo must sit beside ../shared")
    return REAL_MINI
