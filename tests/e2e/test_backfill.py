"""`streamer backfill` on a real broker: a funnel's detector baselines computed from history
and handed to a live worker that only reads what comes after it. The worker starts warm and
catches an incident in its first minutes, which a cold start could not; and it fires exactly
what a funnel that ran over the whole history fires."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from streamer.app import topic_plan
from streamer.events import Alert
from streamer.funnel.definition import load_funnel
from streamer.history import backfill
from streamer.kafka_io import ensure_topic_plan, make_consumer, read_topic, topic_partitions
from streamer.settings import Settings
from streamer.simulate import Incident, TrafficModel
from streamer.testing import WorkerProcess
from streamer.testing_slack import FakeSlack
from tests.e2e.test_alerts import BUSY, START, configure, core_alerts, run_pipeline

LIVE = START + timedelta(minutes=30)  # the worker reads from here on
ONSET = LIVE + timedelta(minutes=1)  # before a cold detector could be warm


def sessions(seed: int, count: int, start: Any, incident: bool) -> list[dict[str, Any]]:
    incidents = (Incident(ONSET, ONSET + timedelta(minutes=3)),) if incident else ()
    model = TrafficModel(rates=BUSY, mean_gap_seconds=3.0, incidents=incidents)
    events = [e for s in model.sessions(seed=seed, count=count, start=start,
                                        sessions_per_second=2.5) for e in s]  # fmt: skip
    return sorted(events, key=lambda e: (str(e["occurred_at"]), e["event_id"]))


async def commit_log_end(config: Settings) -> None:
    """The worker's group starts where the input ends now (a worker already running when the
    new funnel is added): it never reads the history itself."""
    assignment = [
        TopicPartition(topic, p)
        for topic in (config.clickstream_topic, config.checkout_topic)
        for p in await topic_partitions(config, topic)
    ]
    consumer = make_consumer(config, group_id=config.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(assignment)
        await consumer.commit(dict(await consumer.end_offsets(assignment)))
    finally:
        await consumer.stop()


async def test_a_backfilled_funnel_starts_warm_and_fires_what_a_live_one_fires(
    settings: Settings, tmp_path: Path
) -> None:
    slack = FakeSlack().start()
    try:
        config = configure(settings, tmp_path, slack)
        await ensure_topic_plan(config, topic_plan(config))
        history = sessions(31, 1500, START, incident=False)
        live = sessions(32, 900, LIVE, incident=True)
        from streamer.replay import replay_events

        await replay_events(config, history)
        funnel = load_funnel(config.funnels[0])
        [record] = await backfill(config, (funnel,), START, START + timedelta(minutes=25))
        assert record["warming_up"] == []
        await commit_log_end(config)
        with WorkerProcess(config, tmp_path / "worker.log") as worker:
            await run_pipeline(config, live, worker, min_finals=10)
            deadline = time.monotonic() + 60
            while not slack.accepted and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            alerts = [
                Alert.model_validate_json(v or b"")
                for _, v in await read_topic(config, config.alerts_topic)
            ]
            log = (tmp_path / "worker.log").read_text()
    finally:
        slack.stop()
    assert "starting from the baselines backfilled over" in log
    firing = [a for a in alerts if a.state == "firing"]
    assert [(a.step, a.severity) for a in firing] == [("payment->order", "page")]
    assert ONSET < firing[0].window_end <= ONSET + timedelta(minutes=3)
    # What a funnel that had run over the whole history fires, ids included ...
    assert [a.model_dump() for a in alerts] == [
        a.model_dump() for a in core_alerts(config, history + live)
    ]
    # ... and what a cold one fires on the live part alone: nothing, it is still warming up.
    assert [a for a in core_alerts(config, live) if a.state == "firing"] == []
