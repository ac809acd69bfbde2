"""Topics created on the real broker under kafka.topic_prefix, with their configs."""

from __future__ import annotations

import pytest

from soundwatch.kafka import ensure_topics, make_admin, topic_configs
from soundwatch.settings import TOPIC_FIELDS, load_settings

pytestmark = pytest.mark.integration


def test_ensure_topics_creates_every_pipeline_topic_under_the_prefix_with_its_configs(stack, unique):
    from kafka.admin import ConfigResource, ConfigResourceType

    s = load_settings(kafka={**stack.kafka.model_dump(exclude={"topics"}), "topic_prefix": f"t{unique}."})
    names = [getattr(s.kafka.topics, field) for field in TOPIC_FIELDS]
    assert all(name.startswith(f"t{unique}.") for name in names)
    assert sorted(ensure_topics(s)) == sorted(names)
    assert ensure_topics(s) == []  # idempotent
    admin = make_admin(s)
    try:
        assert set(names) <= set(admin.list_topics())
        name = s.kafka.topics.audio_raw
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])  # modified configs
        # A Kafka cluster reports the configs a topic was created with; the local broker (Tansu) accepts and
        # ignores them (it reports none), so only what the broker reports can be compared here.
        if isinstance(described, dict):  # kafka-python 3: {"topic": {name: {config: {"value": ...}}}}
            reported = {k: v["value"] for k, v in described.get("topic", {}).get(name, {}).items()}
        else:  # kafka-python 2.x: DescribeConfigs responses, resources (..., name, [(config, value, ...)])
            reported = {e[0]: e[1] for r in described for res in r.resources for e in res[4]}
        wanted = topic_configs(s, name)
        assert {k: reported[k] for k in wanted if k in reported} == {k: wanted[k] for k in wanted if k in reported}
        admin.delete_topics(names)
    finally:
        admin.close()
