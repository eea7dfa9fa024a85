"""The direct range read a worker uses when its group's committed offset ran ahead of its
checkpoint, on the real broker."""

from __future__ import annotations

import pytest

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
