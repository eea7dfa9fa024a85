"""The direct range read a worker uses when its group's committed offset ran ahead of its
checkpoint, on the real broker."""

from __future__ import annotations

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataRequest

from streamer import kafka_access, kafka_io
from streamer.kafka_io import ensure_topics, read_range
from streamer.settings import Settings
from streamer.testing import produce

pytestmark = pytest.mark.integration


async def test_read_range_returns_exactly_the_offsets_asked_for(settings: Settings) -> None:
    topic = settings.clickstream_topic
    await ensure_topics(settings, [topic], partitions=1)
    await produce(settings, [(topic, b"k", f"m{i}".encode()) for i in range(10)])
    earliest, records = await read_range(settings, topic, 0, 3, 7)
    assert earliest == 0
    assert [(r.offset, r.value) for r in records] == [(i, f"m{i}".encode()) for i in range(3, 7)]
    _, empty = await read_range(settings, topic, 0, 5, 5)
    assert empty == []


async def test_read_range_past_the_log_end_times_out_with_a_clear_error(
    settings: Settings,
) -> None:
    topic = settings.clickstream_topic
    await ensure_topics(settings, [topic], partitions=1)
    await produce(settings, [(topic, b"k", b"only")])
    with pytest.raises(TimeoutError, match=r"offsets 0\.\.4 within 2s"):
        await read_range(settings, topic, 0, 0, 5, timeout=2)


async def test_a_topic_another_worker_creates_during_the_access_check_is_no_acl_error(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers starting together: one creates a changelog topic between the other's metadata
    request (topic unknown) and its validate-only create (topic exists). That is a race, not a
    missing Describe ACL (a fresh-clone CI once stopped a worker with that error); the check
    asks again and passes."""
    topic = f"{settings.app_id}-raced-changelog"
    created: list[str] = []

    def client_that_loses_the_race(*args: object, **kwargs: object) -> AIOKafkaClient:
        client = kafka_io.make_client(*args, **kwargs)  # type: ignore[arg-type]
        send = client.send

        async def send_then_create(node_id: int, request: object, **options: object) -> object:
            response = await send(node_id, request, **options)
            if isinstance(request, MetadataRequest) and not created:
                created.append(topic)  # the other worker's create lands now
                await ensure_topics(settings, [topic], partitions=1)
            return response

        client.send = send_then_create
        return client

    monkeypatch.setattr(kafka_access, "make_client", client_that_loses_the_race)
    await kafka_access.require_access(settings, kafka_access.AccessNeeds(create=(topic,)))
    assert created == [topic]  # the race did happen, and the check passed after it
