"""Waiting on a worker without sleeping blind: metrics reached, topics read to a count,
end markers sent and seen, the group's committed offsets at the end of its topics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from aiokafka import TopicPartition

from streamer.kafka_io import (
    make_consumer,
    make_producer,
    read_topic,
    stop_consumer,
    topic_partitions,
)
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


def wait_processed(
    worker: WorkerProcess, settings: Settings, count: int, timeout: float = 90
) -> MetricValues:
    """Until ``count`` input messages are applied and stored in a checkpoint (so a worker
    started after this one does not apply them again)."""

    def done() -> bool:
        values = scrape_metrics(worker.metrics_url)
        unacked = sum(v for (name, _), v in values.items() if name == "streamer_unacked_messages")
        return processed(values, settings) >= count and unacked == 0

    wait_for(done, worker, timeout)
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
    settings: Settings, topic: str, expected: int, workers: Sequence[WorkerProcess]
) -> list[tuple[bytes | None, bytes | None]]:
    """The records of ``topic`` once every input record has gone through ``workers`` and its
    outputs are on the broker (:func:`outputs_settled`): there must be ``expected`` of them,
    a surplus included (a copy cannot arrive later)."""
    await outputs_settled(settings, workers)
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


async def committed_to_end(
    settings: Settings, topics: Sequence[str], workers: Sequence[WorkerProcess], timeout: float
) -> None:
    """Until the worker group's committed offset on every partition of ``topics`` reaches
    that partition's end offset as of this call (the end of the log is the end marker: no
    record added, so no output changes). A stage commits an offset only once the outputs of
    everything before it are on the broker (decision 0001; the windows stage once its window
    records, alerts and state writes are confirmed), so they are readable when this returns."""
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        for p in await topic_partitions(settings, topic)
    ]
    consumer = make_consumer(settings, group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while True:
            behind = {
                f"{tp.topic}/{tp.partition}": (committed, ends[tp])
                for tp in partitions
                if (committed := (await consumer.committed(tp)) or 0) < ends[tp]
            }
            if not behind:
                return
            for worker in workers:
                if worker.process is not None:
                    worker.assert_running()
            if time.monotonic() > deadline:
                tails = "\n---\n".join(w.log_tail() for w in workers)
                raise AssertionError(
                    f"after {timeout}s the group's offsets (committed, end) are still {behind}"
                    f"\n{tails}"
                )
            await asyncio.sleep(0.3)
    finally:
        await stop_consumer(consumer)


async def outputs_settled(
    settings: Settings, workers: Sequence[WorkerProcess], timeout: float = 120
) -> None:
    """Until every record on the input topics has gone through every stage and whatever it
    makes the workers publish (partials, dead letters, abandonments, window records, alerts)
    is on the broker: each stage's input committed to its end, in pipeline order, each end
    taken once the stage before had committed (so it includes that stage's last outputs).
    For one worker from a first start (what its callers run): in a 4 x 2 run with a worker
    joining, two input partitions stayed committed at 0 to the end (see wait_published)."""
    stages = [[settings.clickstream_topic, settings.checkout_topic]]
    if not settings.source_keyed_by_session:
        stages.append([settings.rekeyed_topic])
    stages.append([settings.partials_topic])
    for topics in stages:
        await committed_to_end(settings, topics, workers, timeout)
