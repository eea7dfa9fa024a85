"""`streamer replay` against a real broker: a range the topics no longer hold is refused with
the earliest time per topic; the replay reads without a consumer group and writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiokafka import TopicPartition
from aiokafka.admin.records_to_delete import RecordsToDelete

from streamer.app import topic_plan
from streamer.errors import RangeNotHeldError
from streamer.funnel.definition import load_funnels
from streamer.kafka_io import ensure_topic_plan, make_admin, read_topic, topic_partitions
from streamer.loaders import replay_events
from streamer.range_replay import replay_range
from streamer.settings import Settings
from streamer.simulate import TrafficModel

START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=2)


def traffic() -> list[dict[str, object]]:
    sessions = TrafficModel().sessions(seed=5, count=300, start=START, sessions_per_second=2.0)
    events = [event for session in sessions for event in session]
    return sorted(events, key=lambda e: (str(e["occurred_at"]), str(e["event_id"])))


async def test_a_range_older_than_retention_is_refused_naming_each_topics_earliest_time(
    settings: Settings,
) -> None:
    await ensure_topic_plan(settings, topic_plan(settings))
    events = traffic()
    await replay_events(settings, events)
    funnels = load_funnels(settings.funnels)
    end = START + timedelta(minutes=30)
    held = await replay_range(settings, funnels, START, end, run_info=False)
    assert held.events.in_range == len(events)
    # Retention moves the log start of one clickstream partition past the range's start.
    tp = TopicPartition(settings.clickstream_topic, 0)
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.delete_records({tp: RecordsToDelete(before_offset=50)}, timeout_ms=10_000)
    finally:
        await admin.close()
    with pytest.raises(RangeNotHeldError) as refused:
        await replay_range(settings, funnels, START, end)
    message = str(refused.value)
    assert f"{settings.clickstream_topic} from " in message
    assert settings.checkout_topic not in message
    assert "choose --from at or after that" in message
    # Nothing was written by the replays: no group, no output topic has a record.
    for topic in (settings.windows_topic, settings.alerts_topic, settings.partials_topic):
        assert await read_topic(settings, topic) == []
    assert await topic_partitions(settings, settings.clickstream_topic) == [0, 1, 2, 3]
