"""Run generated traffic through real workers on the real broker and collect what they publish.

Shared by the end-to-end truth tests: pre-load a backlog on both topics, start workers (with
default settings), optionally disturb them (SIGKILL, a second worker joining and leaving, a
broker restart), then wait until every window the oracle knows is published final.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streamer.app import topic_plan
from streamer.kafka_io import (
    ensure_topic_plan,
    make_admin,
    make_consumer,
    make_producer,
    read_topic,
    stop_consumer,
)
from streamer.settings import Settings
from streamer.testing import WorkerProcess, free_port, metric, produce, scrape_metrics
from tests.support.compare import abandonment_numbers, latest_windows, window_numbers
from tests.support.kafka_waits import committed_to_end, processed
from tests.support.traffic import Dataset, closing_messages


@dataclass
class Published:
    windows: dict  # type: ignore[type-arg]
    segments: dict  # type: ignore[type-arg]
    final: dict[str, bool]
    abandonments: dict  # type: ignore[type-arg]
    alerts: list[bytes]
    restarts_to_first_event_s: list[float] = field(default_factory=list)


async def preload(settings: Settings, dataset: Dataset) -> int:
    """Create the topics and write the whole dataset, then the closing events."""
    await ensure_topic_plan(settings, topic_plan(settings))
    sent = await produce(settings, dataset.messages(settings))
    await send_closing(settings, dataset.closing_ms)
    return sent


async def send_closing(
    settings: Settings, at_ms: int, tag: str = "", partitions: Mapping[str, int] | None = None
) -> None:
    """Closing events at ``at_ms`` on every partition of both topics (see tests.support.traffic);
    ``tag``: in their event ids, for a second round; ``partitions``: each topic's partition
    count when not ``topic_partitions``."""
    await send_to_partitions(settings, closing_messages(settings, at_ms, tag, partitions))


async def send_to_partitions(
    settings: Settings, messages: list[tuple[str, int, bytes, bytes]]
) -> None:
    """(topic, partition, key, value) messages, each to its own partition."""
    producer = make_producer(settings, acks="all")
    await producer.start()
    try:
        for topic, partition, key, value in messages:
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


def worker(settings: Settings, tmp_path: Path, name: str) -> WorkerProcess:
    """A worker of the same app with its own web port, state folder and log."""
    own = settings.model_copy(
        update={"web_port": free_port(), "data_dir": tmp_path / f"state-{name}"}
    )
    return WorkerProcess(own, tmp_path / f"{name}.log")


async def wait_published(
    settings: Settings,
    expected: Any,  # the oracle's result (or the core's, shaped alike)
    workers: list[WorkerProcess],
    timeout: float = 240,
) -> Published:
    """Poll the output topics until every window the oracle has is final and every
    abandonment (and retraction) is there."""
    starts = {(funnel, start) for funnel, start, _ in expected.windows}
    wanted_abandonments = len(expected.abandonments) + sum(
        1 for a in expected.abandonments.values() if a["retracted_ms"] is not None
    )
    deadline = time.monotonic() + timeout
    while True:
        for process in workers:
            if process.process is not None:
                process.assert_running()
        records = await read_topic(settings, settings.windows_topic)
        latest = latest_windows(value for _, value in records)
        finals = {(w.funnel, round(w.window_start.timestamp() * 1000)) for w in latest.values()
                  if w.final}  # fmt: skip
        abandonments = await read_topic(settings, settings.abandonments_topic)
        ids = {value for _, value in abandonments}
        if starts <= finals and len(ids) >= wanted_abandonments:
            break
        if time.monotonic() > deadline:
            logs = "\n---\n".join(f"{_progress(w)}\n{w.log_tail(40)}" for w in workers)
            missing = sorted(starts - finals)[:5]
            raise AssertionError(
                f"after {timeout}s: {len(starts - finals)} of {len(starts)} windows not final "
                f"(first {missing}), {len(ids)} of {wanted_abandonments} abandonment records"
                f"\n{logs}"
            )
        await asyncio.sleep(2)
    # Anything published twice (a replay after a restart, a merger publishing again) must
    # change nothing. Every partition's closing event is applied and its progress reached
    # the merger (every window is final), published after the partition's other outputs in
    # the same write-out; once the merger has committed the partials topic to its end, what
    # it publishes from them is on the broker too. (Not the input topics' group offsets: in
    # a 4 x 2 run two checkout partitions stayed committed at 0 to the end; what a worker
    # applied is in its checkpoint, not necessarily in the group's offsets.)
    running = [w for w in workers if w.process is not None]
    await committed_to_end(settings, [settings.partials_topic], running, timeout=120)
    records = await read_topic(settings, settings.windows_topic)
    assert_copies_agree(records)
    latest = latest_windows(value for _, value in records)
    windows, segments = window_numbers(latest.values())
    alerts = [value for _, value in await read_topic(settings, settings.alerts_topic) if value]
    abandonments = await read_topic(settings, settings.abandonments_topic)
    assert_copies_agree(abandonments)
    return Published(
        windows=windows,
        segments=segments,
        final={wid: w.final for wid, w in latest.items()},
        abandonments=abandonment_numbers(value for _, value in abandonments),
        alerts=alerts,
    )


def assert_copies_agree(records: list[tuple[bytes | None, bytes | None]]) -> None:
    """A record published again (a window's final record, an abandonment or its retraction,
    by id) must say what the first copy said: a sink keeps the first final window and
    collapses abandonments by id, so a copy that differs would go unseen in the numbers.
    Revisions of a window not final yet may differ; a final one's revision number may too
    (a restarted merger numbers from its last stored revision)."""
    first: dict[str, dict[str, Any]] = {}
    for _, value in records:
        if value is None:
            continue
        record = orjson.loads(value)
        if record.get("final") is False:
            continue
        record.pop("revision", None)
        record_id = record.get("window_id") or record["record_id"]
        known = first.setdefault(record_id, record)
        assert record == known, (
            f"{record_id} published again with other content:\n{known}\n{record}"
        )


async def limit_message_bytes(settings: Settings, topic: str, limit: int) -> None:
    """Set ``topic``'s ``max.message.bytes`` (to make the broker refuse a record, or not)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})]
        )
    finally:
        await admin.close()


async def unread_input(settings: Settings) -> int:
    """Source messages past the group's committed offsets (what a restarted worker reads)."""
    tps = [
        TopicPartition(topic, partition)
        for topic in (settings.clickstream_topic, settings.checkout_topic)
        for partition in range(settings.topic_partitions)
    ]
    consumer = make_consumer(settings, group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        unread = 0
        for tp in tps:
            unread += ends[tp] - ((await consumer.committed(tp)) or 0)
        return unread
    finally:
        await stop_consumer(consumer)


async def first_event_after(
    process: WorkerProcess, since: float, unread: int = 1, timeout: float = 60
) -> float:
    """Seconds from ``since`` until the restarted worker counted its first input message,
    or, with nothing ``unread`` (a worker killed after it stored everything), until it
    consumes its source partitions again."""
    from streamer.testing import scrape_metrics

    settings = process.settings
    partitions = {settings.clickstream_topic, settings.checkout_topic}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.assert_running()
        try:
            values = scrape_metrics(process.metrics_url)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        seen = sum(
            v
            for (name, _), v in values.items()
            if name in ("streamer_events_total", "streamer_replayed_messages_total")
        )
        assigned = sum(
            v
            for (name, labels), v in values.items()
            if name == "streamer_assigned_partitions" and dict(labels).get("topic") in partitions
        )
        if seen > 0 or (not unread and assigned == settings.topic_partitions * 2):
            return time.monotonic() - since
        await asyncio.sleep(0.1)
    raise AssertionError(f"no event processed {timeout}s after the restart\n{process.log_tail()}")


async def wait_reading(process: WorkerProcess, settings: Settings, timeout: float = 60) -> float:
    """Until ``process`` has applied some input; how much (0 after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        process.assert_running()
        count = processed(scrape_metrics(process.metrics_url), settings)
        if count > 0 or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.2)


async def wait_assigned(process: WorkerProcess, settings: Settings, timeout: float = 60) -> int:
    """Until ``process`` holds input partitions (its assigned-partitions gauge); how many."""
    deadline = time.monotonic() + timeout
    while True:
        process.assert_running()
        values = scrape_metrics(process.metrics_url)
        owned = sum(
            metric(values, "streamer_assigned_partitions", topic=topic)
            for topic in (settings.clickstream_topic, settings.checkout_topic)
        )
        if owned > 0 or time.monotonic() > deadline:
            return int(owned)
        await asyncio.sleep(0.3)


Disturbance = Callable[[list[WorkerProcess]], Awaitable[list[float]]]


def _progress(process: WorkerProcess) -> str:
    """What a worker says about itself, for failure messages."""
    from streamer.testing import scrape_metrics

    try:
        values = scrape_metrics(process.metrics_url)
    except OSError as exc:
        return f"{process.metrics_url}: {exc}"
    wanted = (
        "streamer_events_total",
        "streamer_checkpoints_total",
        "streamer_watermark_lag_seconds",
        "streamer_consumer_lag_messages",
        "streamer_replayed_messages_total",
    )
    lines = [
        f"  {name}{dict(labels)} = {value:g}"
        for (name, labels), value in sorted(values.items(), key=repr)
        if name in wanted and value
    ]
    return f"{process.metrics_url}:\n" + "\n".join(lines)
