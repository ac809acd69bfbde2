"""Fixtures of the scoring tests (helpers live in scoring_helpers.py)."""

from __future__ import annotations

import pytest

from soundwatch.settings import Settings, load_settings


@pytest.fixture
def scoring_settings(isolated_settings: Settings) -> Settings:
    """Isolated settings tuned for quick tests: small batches, short waits, alert after 3 windows."""
    s = isolated_settings
    return load_settings(
        **{
            k: getattr(s, k).model_dump()
            for k in ("kafka", "redis", "influx", "grafana", "ingest", "stream", "services")
        },
        features=s.features.model_dump(),
        scoring={
            **s.scoring.model_dump(),
            "max_batch": 16,
            "max_wait_ms": 20,
            "alert_after": 3,
            "resolve_after": 3,
            "device": "cpu",
        },
        registry_root=s.registry_root,
    )
