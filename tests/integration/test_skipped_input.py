"""Input Faust never handed over is applied all the same (real broker, real worker).

Faust can hand a stage a message past ones it never delivered (what its fetcher buffered
while the worker restored a table is dropped when the streams resume; the chaos test saw a
window made final without three partitions' counts). Here the group's committed offset is
moved past alerts the notifier never saw, the way such a skip leaves it, and the worker must
read them directly: every alert reaches Slack, once.
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
from streamer.kafka_io import ensure_topic_plan, make_consumer, make_producer, stop_consumer
from streamer.schemas import EXAMPLES
from streamer.settings import Settings
from streamer.testing import metric, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.integration.pipeline_run import worker

pytestmark = pytest.mark.integration


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


async def send_alerts(settings: Settings, numbers: range) -> None:
    producer = make_producer(settings, acks="all")
    await producer.start()
    try:
        for number in numbers:
            await producer.send_and_wait(settings.alerts_topic, alert(number), partition=0)
    finally:
        await producer.stop()


async def commit_past(settings: Settings, offset: int) -> None:
    """The worker's group commits ``offset`` on the alerts topic, as Faust does after
    dropping what it fetched."""
    tp = TopicPartition(settings.alerts_topic, 0)
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


async def test_alerts_the_group_committed_past_are_delivered_once(
    settings: Settings, tmp_path: Path
) -> None:
    slack = FakeSlack().start()
    try:
        config = settings.model_copy(
            update={"slack_webhook_url": SecretStr(slack.url("T1/B1/skip-test"))}
        )
        await ensure_topic_plan(config, topic_plan(config))
        await send_alerts(config, range(1, 3))  # offsets 0, 1
        await commit_past(config, 2)  # a first start that never saw them
        process = worker(config, tmp_path, "notifier")
        process.start()
        await wait_delivered(slack, 2, process)
        process.kill()

        await send_alerts(config, range(3, 6))  # offsets 2, 3, 4
        await commit_past(config, 4)  # a restart past two it never saw
        process.start()
        await wait_delivered(slack, 5, process)
        await asyncio.sleep(3)  # a second delivery of any would show now
        rewinds = metric(scrape_metrics(process.metrics_url), "streamer_input_rewinds_total")
        process.stop()
    finally:
        slack.stop()
    assert sorted(delivered(slack)) == [1, 2, 3, 4, 5]
    log = process.log_path.read_text()
    assert "reading offsets 0..1 directly (2 messages)" in log
    assert "reading offsets 2..3 directly (2 messages)" in log
    assert rewinds == 1  # the restarted process read one hole
