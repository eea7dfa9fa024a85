"""The fixtures isolate tests: a test that shared a topic with another read its records."""

from __future__ import annotations

from streamer.settings import Settings


def test_every_topic_is_unique_to_the_test(settings: Settings) -> None:
    defaults = Settings()
    topics = [name for name in Settings.model_fields if name.endswith("_topic")]
    assert len(topics) >= 8
    for name in topics:
        assert getattr(settings, name) != getattr(defaults, name), name
    assert settings.app_id != defaults.app_id
