"""Topic names behind kafka.topic_prefix, and the configs soundwatch creates its topics with."""

from __future__ import annotations

import os

import pytest

from features.app import CHANGELOG_CONFIGS, app_id, changelog_topic
from soundwatch.errors import ConfigError
from soundwatch.kafka import audio_raw_retention_bytes, topic_configs
from soundwatch.settings import TOPIC_FIELDS, load_settings


def test_the_prefix_goes_in_front_of_every_topic_name_once(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_KAFKA__TOPIC_PREFIX", "plant1.")
    monkeypatch.setenv("SOUNDWATCH_KAFKA__TOPICS__ALERTS", "maintenance.alerts")
    s = load_settings()
    names = {field: getattr(s.kafka.topics, field) for field in TOPIC_FIELDS}
    assert names == {
        "audio_raw": "plant1.audio.raw",
        "features": "plant1.features.logmel",
        "alerts": "plant1.maintenance.alerts",
        "scores": "plant1.scores",
        "deadletter": "plant1.deadletter",
    }
    assert app_id(s) == "plant1.soundwatch-features"  # the Faust app id names the changelog topic
    assert changelog_topic(s) == "plant1.soundwatch-features-windower-state-changelog"
    # passed on to a child process as environment variables, the names keep one prefix
    monkeypatch.setattr(os, "environ", {**os.environ, **s.to_env()})
    assert load_settings().kafka.topics == s.kafka.topics


def test_a_prefix_kafka_refuses_is_a_settings_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOUNDWATCH_KAFKA__TOPIC_PREFIX", "plant 1/")
    with pytest.raises(ConfigError, match="kafka.topic_prefix"):
        load_settings()


def test_audio_raw_is_sized_for_32_kb_per_second_per_machine_and_other_topics_by_time(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    s = load_settings(kafka={"topics": {"machines": 1000, "partitions": 24, "audio_raw_retention_s": "1d"}})
    assert audio_raw_retention_bytes(s) == 42 * 1.5 * 32_000 * 86_400  # ceil(1000/24) machines, key skew 1.5
    t = s.kafka.topics
    assert topic_configs(s, t.audio_raw) == {
        "cleanup.policy": "delete",
        "retention.ms": "86400000",
        "retention.bytes": str(42 * 3 * 16_000 * 86_400),
    }
    assert topic_configs(s, t.alerts) == {"cleanup.policy": "delete", "retention.ms": str(90 * 86_400_000)}
    assert topic_configs(s, t.scores)["retention.ms"] == str(3 * 86_400_000)
    assert topic_configs(s, t.deadletter)["retention.ms"] == str(14 * 86_400_000)
    assert topic_configs(s, t.features)["retention.ms"] == "86400000"
    assert topic_configs(s, "someone-elses-topic") == {}
    assert CHANGELOG_CONFIGS == {"cleanup.policy": "compact"}  # where the feature workers' state lives
