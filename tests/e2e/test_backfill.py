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
from streamer.events import Alert, WindowStats
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan, make_consumer, read_topic, topic_partitions
from streamer.range_replay import backfill, replay_range
from streamer.settings import Settings
from streamer.simulate import Incident, TrafficModel
from streamer.testing import WorkerProcess, metric, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.support.alert_pipeline import (
    BUSY,
    CLOSING,
    FUNNEL,
    START,
    assert_names_the_incident,
    configure,
    core_alerts,
    run_pipeline,
)
from tests.support.kafka_waits import processed

LIVE = START + timedelta(minutes=30)  # the worker reads from here on
ONSET = LIVE + timedelta(minutes=1)  # before a cold detector could be warm


def planted(onset: Any) -> Incident:
    return Incident(onset, onset + timedelta(minutes=3))


def sessions(
    seed: int, count: int, start: Any, incident: bool, onset: Any = ONSET
) -> list[dict[str, Any]]:
    incidents = (planted(onset),) if incident else ()
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
        from streamer.loaders import replay_events

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
    # What the planted incident says, independent of the core and detector below.
    assert_names_the_incident(alerts, planted(ONSET))
    # What a funnel that had run over the whole history fires, ids included ...
    assert [a.model_dump() for a in alerts] == [
        a.model_dump() for a in core_alerts(config, history + live)
    ]
    # ... and what a cold one fires on the live part alone: nothing, it is still warming up.
    assert [a for a in core_alerts(config, live) if a.state == "firing"] == []


HANDOVER = START + timedelta(minutes=12)  # the running worker has read the input up to here


async def test_a_funnel_added_to_a_running_worker_goes_on_with_its_open_sessions(
    settings: Settings, tmp_path: Path
) -> None:
    """A worker runs another funnel; checkout is backfilled and added at a restart in the
    middle of the traffic (sessions open across it). Its open sessions are rebuilt from the
    input the worker's checkpoint reflects: every final window it publishes equals a replay
    of the whole range, and it fires what a checkout funnel that ran throughout fires."""
    slack = FakeSlack().start()
    try:
        config = configure(settings, tmp_path, slack)
        other = tmp_path / "shop.yaml"
        other.write_text(
            FUNNEL.replace("name: checkout\n", "name: shop\n", 1).replace("30s\n", "1m\n", 1)
        )
        running = config.model_copy(update={"funnels": (other,)})
        added = config.model_copy(update={"funnels": (config.funnels[0], other)})
        await ensure_topic_plan(config, topic_plan(config))
        events = sessions(33, 2400, START, incident=True, onset=HANDOVER + timedelta(minutes=1))
        cut = next(i for i, e in enumerate(events) if str(e["occurred_at"]) >= HANDOVER.isoformat())
        before, after = events[:cut], events[cut:]
        from streamer.loaders import replay_events

        await replay_events(config, before)
        with WorkerProcess(running, tmp_path / "running.log") as worker:
            deadline = time.monotonic() + 180
            while True:  # everything read, and checkpointed
                values = scrape_metrics(worker.metrics_url)
                if (
                    processed(values, config) >= len(before)
                    and metric(values, "streamer_unacked_messages") == 0
                ):
                    break
                worker.assert_running()
                assert time.monotonic() < deadline, worker.log_tail()
                await asyncio.sleep(0.5)
        checkout = load_funnel(config.funnels[0])
        [record] = await backfill(config, (checkout,), START, HANDOVER)
        assert record["warming_up"] == []
        with WorkerProcess(added, tmp_path / "added.log") as worker:
            await run_pipeline(added, after, worker, min_finals=10)
            alerts = [
                Alert.model_validate_json(v or b"")
                for _, v in await read_topic(config, config.alerts_topic)
            ]
            windows = [
                WindowStats.model_validate_json(v or b"")
                for _, v in await read_topic(config, config.windows_topic)
            ]
        log = (tmp_path / "added.log").read_text()
    finally:
        slack.stop()
    assert "the funnels changed since the checkpoint (shop -> checkout, shop)" in log
    assert "added funnel(s) checkout caught up from" in log
    live = {w.window_id: w for w in windows if w.funnel == "checkout" and w.final}
    report = await replay_range(added, (checkout,), START, CLOSING, run_info=False)
    replayed = {w.window_id: w for w in report.funnels[0].windows if w.final}
    # Windows open at the hand-over (their sessions came partly from the catch-up) and after.
    spanning = [w for w in live.values() if w.window_start < HANDOVER]
    assert spanning
    assert len(live) >= 10

    def counts(w: WindowStats) -> list[tuple[int, int, int, int]]:
        return [(s.entered, s.converted, s.dropped, s.open) for s in w.stages]

    differ = [
        f"{key} ({live[key].window_start:%H:%M:%S}): live {counts(live[key])} "
        f"replay {counts(replayed[key])}"
        for key in sorted(live)
        if live[key].model_dump(exclude={"revision"})
        != replayed[key].model_dump(exclude={"revision"})
    ]
    assert not differ, "\n".join([*differ, (tmp_path / "added.log").read_text()[-3000:]])
    assert sum(s.entered for w in spanning for s in w.stages) > 0
    # The other funnel sees the incident too (it ran throughout); checkout fires exactly
    # what it would have fired had it run throughout.
    firing = [a for a in alerts if a.state == "firing" and a.funnel == "checkout"]
    assert [a.step for a in firing] == ["payment->order"]
    assert_names_the_incident(
        [a for a in alerts if a.funnel == "checkout"], planted(HANDOVER + timedelta(minutes=1))
    )
    assert [a.model_dump() for a in alerts if a.funnel == "checkout"] == [
        a.model_dump() for a in core_alerts(added, events)
    ]
