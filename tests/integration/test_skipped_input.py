"""Input Faust never handed over is applied all the same (real broker, real worker).

Faust can hand a stage a message past ones it never delivered (what its fetcher buffered
while the worker restored a table is dropped when the streams resume; the chaos test saw a
window made final without three partitions' counts). Here the group's committed offset is
moved past alerts the notifier never saw, and past partials the merger never saw, the way
such a skip leaves it, and the worker must read them directly: every alert reaches Slack,
once, and the window counts every partition.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from streamer.app import topic_plan
from streamer.events import Alert
from streamer.funnel.definition import load_funnel
from streamer.funnel.session import Kind, Outcome
from streamer.funnel.windows import WindowCounts
from streamer.kafka_io import (
    ensure_topic_plan,
    make_consumer,
    make_producer,
    read_topic,
    stop_consumer,
)
from streamer.schemas import EXAMPLES
from streamer.settings import Settings
from streamer.testing import metric, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.support.compare import latest_windows
from tests.support.kafka_waits import wait_processed
from tests.support.pipeline_run import worker

pytestmark = pytest.mark.integration
CHECKOUT = load_funnel(Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml")


def alert(number: int) -> bytes:
    base = Alert.model_validate(EXAMPLES["alert"])
    return (
        base.model_copy(
            update={
                "event_id": f"{base.event_id}-skip-{number}",
                "alert_id": f"{base.alert_id}-skip-{number}",
                "severity": "warning",
            }
        )
        .model_dump_json()
        .encode()
    )


async def send(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = make_producer(settings, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()


async def send_alerts(settings: Settings, numbers: range) -> None:
    await send(settings, settings.alerts_topic, [alert(number) for number in numbers])


async def commit_past(settings: Settings, offset: int, topic: str | None = None) -> None:
    """The worker's group commits ``offset`` on the alerts topic (or ``topic``), as Faust
    does after dropping what it fetched."""
    tp = TopicPartition(topic or settings.alerts_topic, 0)
    deadline = time.monotonic() + 60
    while True:
        consumer = make_consumer(settings, group_id=settings.app_id, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.commit({tp: offset})
            return
        except KafkaError:
            # A killed static member holds the group until its session times out.
            if time.monotonic() > deadline:
                raise
        finally:
            await stop_consumer(consumer)
        await asyncio.sleep(1)


def delivered(slack: FakeSlack) -> list[int]:
    """The alert numbers Slack accepted, in order (one entry per accepted message)."""
    numbers = []
    for payload in slack.accepted:
        text = orjson.dumps(payload).decode()
        numbers.extend(n for n in range(1, 10) if f"-skip-{n}" in text)
    return numbers


async def wait_delivered(slack: FakeSlack, count: int, process: object) -> None:
    deadline = time.monotonic() + 90
    while len(delivered(slack)) < count:
        process.assert_running()  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"Slack has {delivered(slack)}, wanted {count}"
        await asyncio.sleep(0.5)


async def wait_recorded(settings: Settings, count: int, process: object) -> None:
    """Until the delivered-alerts changelog holds ``count`` records: a SIGKILL between
    Slack's acceptance and that write sends the alert again after the restart (the
    notifier is at least once there, as docs/operations.md says), which is not what this
    test is about."""
    changelog = f"{settings.app_id}-delivered-alerts-changelog"
    deadline = time.monotonic() + 60
    while len({key for key, _ in await read_topic(settings, changelog)}) < count:
        process.assert_running()  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{changelog} never held {count} deliveries"
        await asyncio.sleep(0.5)


async def test_alerts_the_group_committed_past_are_delivered_once(
    settings: Settings, tmp_path: Path
) -> None:
    slack = FakeSlack().start()
    config = settings.model_copy(
        update={"slack_webhook_url": SecretStr(slack.url("T1/B1/skip-test"))}
    )
    process = worker(config, tmp_path, "notifier")
    try:
        await ensure_topic_plan(config, topic_plan(config))
        await send_alerts(config, range(1, 3))  # offsets 0, 1
        await commit_past(config, 2)  # a first start that never saw them
        process.start()
        await wait_delivered(slack, 2, process)
        await wait_recorded(config, 2, process)
        process.kill()

        await send_alerts(config, range(3, 6))  # offsets 2, 3, 4
        await commit_past(config, 4)  # a restart past two it never saw
        process.start()
        await wait_delivered(slack, 5, process)
        # An end marker: alert 6, after all the others on the topic. The notifier reads in
        # offset order, so a second delivery of any of 1..5 would reach Slack before it.
        await send_alerts(config, range(6, 7))
        await wait_delivered(slack, 6, process)
        rewinds = metric(scrape_metrics(process.metrics_url), "streamer_input_rewinds_total")
    finally:
        process.stop()  # also when the test failed: no worker outlives it
        slack.stop()
    assert delivered(slack)[-1] == 6, delivered(slack)
    assert sorted(delivered(slack)) == [1, 2, 3, 4, 5, 6]
    log = process.log_path.read_text()
    assert "reading offsets 0..1 directly (2 messages)" in log
    assert "reading offsets 2..3 directly (2 messages)" in log
    assert rewinds == 1  # the restarted process read one hole


def partial(start: int, partition: int, entered: int, generation: int) -> bytes:
    """A partition's whole counts of one window, as the sessions stage sends them."""
    counts = WindowCounts.empty(len(CHECKOUT.stages))
    for _ in range(entered):
        counts.apply(Outcome(Kind.ENTERED, 0, start, start, (None,) * len(CHECKOUT.segments)))
    return orjson.dumps(
        {
            "kind": "partial",
            "funnel": CHECKOUT.name,
            "start": start,
            "end": start + CHECKOUT.window_ms,
            "partition": partition,
            "counts": counts.to_json(),
            "version": [generation, 1, start],
        }
    )


async def test_partials_the_group_committed_past_are_merged(
    settings: Settings, tmp_path: Path
) -> None:
    """Four partitions' partials of one window and their progress past its finality; the
    group's committed offset skips the first two partials. The merger reads them directly:
    the window is published final with every partition's sessions (1+2+3+4), not 7 of 10."""
    start = 1_700_000_040_000 - 1_700_000_040_000 % CHECKOUT.window_ms
    final_at = start + CHECKOUT.window_ms + CHECKOUT.finality_lag_ms
    generation = 2**62  # newer than the worker's own (empty) partitions' progress
    records = [partial(start, p, p + 1, generation) for p in range(4)] + [
        orjson.dumps(
            {"kind": "progress", "partition": p, "watermark": final_at, "generation": generation}
        )
        for p in range(4)
    ]
    await ensure_topic_plan(settings, topic_plan(settings))
    await send(settings, settings.partials_topic, records)
    await commit_past(settings, 2, settings.partials_topic)
    process = worker(settings, tmp_path, "merger")
    try:
        process.start()
        deadline = time.monotonic() + 60
        while True:
            process.assert_running()
            latest = latest_windows(
                value for _, value in await read_topic(settings, settings.windows_topic)
            )
            finals = [w for w in latest.values() if w.final and w.funnel == CHECKOUT.name]
            if finals or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        process.stop()
    assert [w.stages[0].entered for w in finals] == [10]
    log = process.log_path.read_text()
    assert "windows stage:" in log
    assert "reading offsets 0..1 directly (2 messages)" in log


def shop_events(first: int, count: int) -> list[bytes]:
    """``count`` valid events of one session, numbered from ``first``, at the current time."""
    now_ms = round(time.time() * 1000)
    return [
        orjson.dumps(
            {
                "event_id": f"skip-{n}",
                "event_type": "page_view",
                "session_id": "skip-session",
                "occurred_at": now_ms + n,
                "page": f"/page-{n}",
            }
        )
        for n in range(first, first + count)
    ]


async def wait_forwarded(settings: Settings, source: str, offset: int, process: object) -> None:
    """Until the re-key stage recorded ``source`` ("topic/partition") forwarded to ``offset``."""
    deadline = time.monotonic() + 60
    while True:
        process.assert_running()  # type: ignore[attr-defined]
        records = await read_topic(settings, settings.rekey_positions_topic)
        recorded = {key.decode(): int(value) for key, value in records if key and value}
        if recorded.get(source) == offset:
            return
        assert time.monotonic() < deadline, f"{source} recorded {recorded.get(source)}"
        await asyncio.sleep(0.5)


async def test_a_skip_an_earlier_process_committed_past_is_forwarded_after_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    """The re-key path: a process forwards three events (recorded), is SIGKILLed, and the
    group's commit moves past the next four it never forwarded, as a skip leaves it. The
    restarted process starts from the stage's record, not the commit: it reads the four
    directly and counts them with the one after."""
    config = settings.model_copy(update={"source_keyed_by_session": False})
    topic = config.clickstream_topic
    await ensure_topic_plan(config, topic_plan(config))
    process = worker(config, tmp_path, "rekey")
    try:
        await send(config, topic, shop_events(0, 3))  # offsets 0..2
        process.start()
        await wait_forwarded(config, f"{topic}/0", 3, process)
        wait_processed(process, config, 3)  # and in a checkpoint: not counted again
        process.kill()

        await send(config, topic, shop_events(3, 4))  # offsets 3..6: never forwarded
        await commit_past(config, 7, topic)  # the commit the dead process made past them
        await send(config, topic, shop_events(7, 1))  # offset 7
        process.start()
        await wait_forwarded(config, f"{topic}/0", 8, process)
        deadline = time.monotonic() + 60
        while True:  # the sessions stage counts in its own time
            values = scrape_metrics(process.metrics_url)
            accepted = metric(values, "streamer_events_total", topic=topic, outcome="accepted")
            if accepted >= 5 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        process.stop()
    assert "reading offsets 3..6 directly (4 messages)" in process.log_path.read_text()
    assert accepted == 5  # the four of the hole and the one after, in the second life
