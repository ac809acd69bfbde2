"""Shared fixtures.

Integration tests use the real local stack (``soundwatch services up``). When a
service does not answer, the test is skipped with the command to run — except
under ``CI=true``, where a missing service is a failure.

Every test gets its own topic names, InfluxDB database and Redis key prefix, so
tests (and several test processes) never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from soundwatch.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_MINI = (REPO_ROOT.parent / "shared" / "data" / "real-mini").resolve()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing_service(what: str) -> None:
    message = f"{what}; start the local stack with `soundwatch services up` (or `make services`)"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


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
