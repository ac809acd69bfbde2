"""The workers' Prometheus metrics follow Prometheus naming: base units, counters as ``_total``."""

from __future__ import annotations

import re

from scoring.metrics import ScoringMetrics

NON_BASE_UNITS = re.compile(r"_(ms|milliseconds|us|microseconds|minutes|hours|kb|mb|bytes_kb)(_|$)")


def test_scoring_metric_names_use_base_units_and_total_for_counters():
    families = list(ScoringMetrics().registry.collect())
    assert len(families) > 10
    for family in families:
        assert family.name.startswith("soundwatch_scoring_")
        assert not NON_BASE_UNITS.search(family.name), f"{family.name}: use base units (_seconds, _bytes)"
        if family.type == "counter":
            assert f"{family.name}_total" in {s.name for s in family.samples} or not family.samples
    names = {f.name for f in families}
    assert "soundwatch_scoring_inference_seconds" in names  # renamed from _inference_ms (README, Upgrading)
