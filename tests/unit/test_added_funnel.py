"""A funnel added to a running worker: at its first start with the new funnel, each partition
rebuilds the added funnel's open sessions and windows from the input its checkpoint reflects,
so the worker is then exactly what it would be had the funnel always been there (and the other
funnels' sessions go on untouched)."""

from __future__ import annotations

import asyncio
import bisect
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.pipeline.messages import SourceMessage
from streamer.settings import Settings
from streamer.simulate import topic_for
from tests.support.stage_harness import CHECKOUT, Harness, make_harness
from tests.support.traffic import at_ms, generate

CHECKOUT_FUNNEL = load_funnel(CHECKOUT)
# Another shape: 5-minute windows, so its cohorts are not the checkout funnel's.
BROWSE = CHECKOUT_FUNNEL.model_copy(update={"name": "browse", "window_ms": 300_000})


class InputLog:
    """Partition 0 of both input topics, in the order producers sent the events."""

    def __init__(self) -> None:
        data = generate(
            seed=11,
            minutes=25,
            sessions_per_second=1.0,
            start=datetime(2026, 11, 22, 9, 0, tzinfo=UTC),
        )
        settings = Settings()
        self.by_topic: dict[str, list[SourceMessage]] = defaultdict(list)
        self.arrivals: list[SourceMessage] = []
        broker_ms = 0
        for event in data.arrivals:
            topic = topic_for(settings, event["event_type"])
            broker_ms = max(broker_ms, at_ms(event))  # broker time only grows along a log
            offset = len(self.by_topic[topic])
            message = SourceMessage(
                topic, 0, offset, broker_ms, event["session_id"].encode(), orjson.dumps(event)
            )
            self.by_topic[topic].append(message)
            self.arrivals.append(message)

    async def read_range(
        self, topic: str, partition: int, start: int, end: int
    ) -> tuple[int, list[SourceMessage]]:
        return 0, self.by_topic[topic][start:end]

    async def find_offset(self, topic: str, partition: int, at: int) -> int:
        times = [m.timestamp_ms or 0 for m in self.by_topic[topic]]
        return bisect.bisect_left(times, at)


async def feed(harness: Harness, messages: list[SourceMessage]) -> None:
    for message in messages:
        await harness.stage.process(message, lambda: None)
    assert not harness.dead_letters.sent


def state(harness: Harness) -> tuple[dict[str, Any], dict[Any, Any], int]:
    task = harness.stage.runtimes[0].task
    return (
        {sid: s.to_json() for sid, s in task.sessions.items()},
        {key: counts.to_json() for key, counts in task.windows.items()},
        task.watermark_ms,
    )


def browse_abandonments(harness: Harness, after: int) -> list[dict[str, Any]]:
    records = [orjson.loads(value) for _, value in harness.abandonments.sent[after:]]
    return sorted(
        (r for r in records if r["funnel"] == "browse"), key=lambda r: str(r["record_id"])
    )


def harness_for(log: InputLog, funnels: tuple[FunnelDefinition, ...]) -> Harness:
    return make_harness(funnels=funnels, read_range=log.read_range, find_offset=log.find_offset)


async def test_an_added_funnel_catches_up_as_if_it_had_always_been_there() -> None:
    log = InputLog()
    handover = len(log.arrivals) * 3 // 5
    before, after = log.arrivals[:handover], log.arrivals[handover:]

    running = harness_for(log, (CHECKOUT_FUNNEL,))  # the worker before the funnel is added
    await feed(running, before)
    await running.stage.checkpoint(0)
    always = harness_for(log, (BROWSE, CHECKOUT_FUNNEL))  # as if browse had always been there
    await feed(always, before)
    await always.stage.checkpoint(0)

    restarted = harness_for(log, (BROWSE, CHECKOUT_FUNNEL))
    restarted.table.update(running.table)
    restarted.stage.ensure(0)
    assert restarted.stage.runtimes[0].catch_up == (0,)
    await restarted.stage.catch_up_added_funnels()
    assert restarted.stage.runtimes[0].catch_up == ()
    caught_up = state(restarted)
    sessions, windows, watermark = caught_up
    assert watermark == state(always)[2]
    open_browse = [s for s in sessions.values() if s[0][0] is not None]
    assert len(open_browse) > 50, "the hand-over has browse sessions open"
    assert any(key[0] == 0 for key in windows), "and browse windows not final yet"
    assert caught_up == state(always)

    # From here on both publish the same for browse, and hold the same state.
    sent = len(always.abandonments.sent), len(restarted.abandonments.sent)
    await feed(always, after)
    await feed(restarted, after)
    for harness in (always, restarted):
        await harness.stage.checkpoint(0)
    assert state(restarted) == state(always)
    assert browse_abandonments(restarted, sent[1]) == browse_abandonments(always, sent[0])
    assert browse_abandonments(always, sent[0]), "browse sessions were abandoned after it"


async def test_a_catch_up_cut_short_is_done_again_by_the_next_message() -> None:
    """Faust cancels the agent on a rebalance, maybe in the middle of a catch-up's reads: the
    partition keeps its funnels to catch up (and writes no checkpoint) until one completes."""
    log = InputLog()
    handover = len(log.arrivals) * 3 // 5
    running = harness_for(log, (CHECKOUT_FUNNEL,))
    await feed(running, log.arrivals[:handover])
    await running.stage.checkpoint(0)

    restarted = harness_for(log, (BROWSE, CHECKOUT_FUNNEL))
    restarted.table.update(running.table)
    restarted.stage.ensure(0)
    reads = 0

    async def cut_short(topic: str, partition: int, start: int, end: int) -> Any:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise asyncio.CancelledError  # the rebalance
        return await log.read_range(topic, partition, start, end)

    restarted.stage._read_range = cut_short
    with pytest.raises(asyncio.CancelledError):
        await restarted.stage.catch_up_added_funnels()
    assert restarted.stage.runtimes[0].catch_up == (0,)
    await restarted.stage.checkpoint(0)
    assert restarted.table == running.table  # nothing stored while browse is not whole
    await restarted.stage.catch_up_added_funnels()
    assert restarted.stage.runtimes[0].catch_up == ()
