"""Waiting on a worker without sleeping blind: metrics reached, topics read to a count,
end markers sent and seen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streamer.kafka_io import make_producer, read_topic
from streamer.metrics import OUTCOMES
from streamer.settings import Settings
from streamer.testing import MetricValues, WorkerProcess, metric, scrape_metrics


def processed(values: MetricValues, settings: Settings) -> float:
    return sum(
        metric(values, "streamer_events_total", topic=topic, outcome=outcome)
        for topic in (settings.clickstream_topic, settings.checkout_topic)
        for outcome in OUTCOMES
    )


def wait_for(predicate: Callable[[], bool], worker: WorkerProcess, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker.assert_running()
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"condition not met in {timeout}s; worker log:\n{worker.log_tail()}")


def wait_processed(worker: WorkerProcess, settings: Settings, count: int) -> MetricValues:
    """Until ``count`` input messages are applied and stored in a checkpoint (so a worker
    started after this one does not apply them again)."""

    def done() -> bool:
        values = scrape_metrics(worker.metrics_url)
        unacked = sum(v for (name, _), v in values.items() if name == "streamer_unacked_messages")
        return processed(values, settings) >= count and unacked == 0

    wait_for(done, worker)
    return scrape_metrics(worker.metrics_url)


async def read_at_least(
    settings: Settings, topic: str, minimum: int, timeout: float = 30
) -> list[tuple[bytes | None, bytes | None]]:
    """The records of ``topic`` once there are ``minimum`` of them, or when ``timeout`` is
    over (the caller checks how many came)."""
    deadline = asyncio.get_running_loop().time() + timeout
    records = await read_topic(settings, topic)
    while len(records) < minimum and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.3)
        records = await read_topic(settings, topic)
    return records


async def read_exactly(
    settings: Settings, topic: str, expected: int, timeout: float = 30, grace: float = 1.0
) -> list[tuple[bytes | None, bytes | None]]:
    """The records of ``topic`` once there are ``expected`` of them, checked again after
    ``grace`` seconds so that a surplus is seen (the worker's producer sends asynchronously)."""
    await read_at_least(settings, topic, expected, timeout)
    await asyncio.sleep(grace)
    records = await read_topic(settings, topic)
    assert len(records) == expected, f"{topic}: {len(records)} records, expected {expected}"
    return records


# The end marker of an input partition: not JSON, so the worker dead-letters it and counts it
# apart from every real event (reason not_json). A partition is read in order: once its marker
# is counted, everything before it on that partition has been applied.
END_MARKER = b'{"end marker": '


async def send_end_markers(settings: Settings) -> int:
    """An end marker at the end of every partition of both input topics; how many."""
    producer = make_producer(settings, acks="all")
    await producer.start()
    count = 0
    try:
        for topic in (settings.clickstream_topic, settings.checkout_topic):
            for partition in range(settings.topic_partitions):
                await producer.send_and_wait(
                    topic, value=END_MARKER, key=b"end-marker", partition=partition
                )
                count += 1
    finally:
        await producer.stop()
    return count


def end_markers_read(values: MetricValues, settings: Settings) -> float:
    return sum(
        metric(values, "streamer_dead_letters_total", topic=topic, reason="not_json")
        for topic in (settings.clickstream_topic, settings.checkout_topic)
    )
