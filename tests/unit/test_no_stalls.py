"""Timers that wait for the broker do not hold their ticks: the slow part runs beside them
(``streamer.pipeline.timers.Beside``), one at a time, its failure raised by the next tick;
a quiet partition's checkpoint from the timer is written out beside it like the agent's,
and acks only what the broker has. (The re-key stage's fronts: ``test_rekey.py``.)"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from streamer.pipeline.sessions import committer
from streamer.pipeline.timers import Beside
from tests.support.stage_harness import Harness, make_harness, valid_event


async def test_beside_runs_one_at_a_time_and_raises_a_failure_at_the_next_tick() -> None:
    beside = Beside("test")
    broker_has_it = asyncio.Event()
    done: list[str] = []

    async def confirm() -> None:
        await broker_has_it.wait()
        done.append("confirmed")

    assert beside.start(confirm)  # the tick goes on at once
    assert beside.busy
    assert not beside.start(confirm)  # the next tick finds it under way: left for later
    broker_has_it.set()
    await beside.wait()
    assert done == ["confirmed"]  # once
    assert not beside.busy

    async def refused() -> None:
        raise RuntimeError("the broker refused a record")

    assert beside.start(refused)
    await beside.wait()
    with pytest.raises(RuntimeError, match="refused"):
        beside.raise_failed()  # the next tick: the worker stops
    beside.raise_failed()  # raised once


async def test_the_timers_checkpoint_of_a_quiet_partition_does_not_wait_for_the_broker() -> None:
    harness = make_harness()
    stage = harness.stage
    for index in range(3):
        await harness.process(harness.message(orjson.dumps(valid_event(event_id=f"e-{index}"))))
    broker_has_it = asyncio.Event()

    async def slow_flush() -> None:
        await broker_has_it.wait()

    stage.committer.flush_producer = slow_flush
    stage.runtimes[0].checkpointed_at -= stage.committer.interval_s  # quiet for an interval
    stage.checkpoint_due()  # returns at once: the snapshot is taken, its write-out under way
    await asyncio.sleep(0.01)
    assert harness.acked == []  # the broker does not have it yet: nothing acked
    assert stage.runtimes[0].storing == 3
    stage.checkpoint_due()  # the next tick: not due again (no second snapshot of the same)
    broker_has_it.set()
    await stage.drain_write_outs()
    assert harness.acked == [0, 1, 2]
    assert orjson.loads(harness.table["t:0"])["offsets"]["clickstream"] == 3


async def test_a_failed_write_out_of_the_timer_is_raised_by_the_next_tick() -> None:
    harness = make_harness()
    stage = harness.stage
    await harness.process(harness.message(orjson.dumps(valid_event())))

    async def refused() -> None:
        raise RuntimeError("the broker refused the changelog")

    stage.committer.flush_producer = refused
    stage.runtimes[0].checkpointed_at -= stage.committer.interval_s
    stage.checkpoint_due()
    await stage.drain_write_outs()
    with pytest.raises(RuntimeError, match="refused"):
        stage.raise_failed_write_out()  # the first thing the next tick does
    assert stage.committer.sealed  # nothing more is checkpointed, not even by the stop
    assert harness.acked == []


async def _sessions(harness: Harness, count: int) -> None:
    for index in range(count):
        event = valid_event(event_id=f"e-{index}", session_id=f"s-{index}")
        await harness.process(harness.message(orjson.dumps(event), key=f"s-{index}".encode()))


async def test_a_large_snapshot_is_taken_in_slices_that_let_the_loop_run() -> None:
    """The agent's checkpoint of a partition with many changed sessions: the event loop runs
    between slices while the agent waits, and the records are those of one synchronous
    snapshot (same bytes, same offsets, same acks)."""
    sessions = committer.SNAPSHOT_SLICE_SESSIONS * 5
    whole, sliced = make_harness(), make_harness()
    await _sessions(whole, sessions)
    await _sessions(sliced, sessions)
    await whole.stage.checkpoint(0)  # one synchronous snapshot

    ticks = 0

    async def other_work() -> None:  # a timer, a heartbeat, a fetch
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.ensure_future(other_work())
    original_slice_s = committer.SNAPSHOT_SLICE_S
    committer.SNAPSHOT_SLICE_S = 0.0  # let the loop run after every slice
    try:
        sliced.stage.committer.start(0)
        await asyncio.sleep(0)  # the snapshot begins: it holds the apply lock
        ticks_at_start = ticks
        late = valid_event(event_id="late", session_id="s-late")
        applied = asyncio.ensure_future(
            sliced.process(sliced.message(orjson.dumps(late), key=b"s-late"))
        )
        await asyncio.sleep(0)
        assert not applied.done()  # the agent waits for the snapshot; the ticker does not
        await sliced.stage.drain_write_outs()
        await applied
    finally:
        committer.SNAPSHOT_SLICE_S = original_slice_s
        ticker.cancel()
    assert ticks - ticks_at_start >= 4  # the loop ran between the five slices
    # The message applied meanwhile is in neither (the meta's generation is the start time).
    metas = [orjson.loads(h.table.pop("t:0")) for h in (sliced, whole)]
    assert [{**meta, "generation": 0} for meta in metas] == [{**metas[1], "generation": 0}] * 2
    assert sliced.table == whole.table
    assert sliced.acked == whole.acked == list(range(sessions))
