"""The sessions stage handed an offset past what its checkpoint reflects (the group committed
offsets a previous owner acked after that checkpoint): it reads the missing offsets directly
and applies them first, in order; offsets deleted by retention are counted as lost."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from streamer.pipeline.input_order import STALL_REPAIR_S
from streamer.pipeline.messages import SourceMessage
from tests.support.stage_harness import NOW_MS, Harness, make_harness, valid_event


def event_message(offset: int, event_type: str = "page_view") -> SourceMessage:
    event = valid_event(
        event_id=f"e-{offset}",
        event_type=event_type,
        occurred_at=f"2026-11-22T11:59:{offset:02d}Z",
    )
    if event_type == "page_view":
        for name in ("product_id", "quantity", "price", "cart_value", "currency"):
            event.pop(name)
        event["page"] = "/"
    return SourceMessage("clickstream", 0, offset, NOW_MS, b"s-1", orjson.dumps(event))


class Log:
    """The stage's direct reads, answered from a log whose first ``earliest`` offsets were
    deleted by retention."""

    def __init__(self, messages: list[SourceMessage], earliest: int = 0) -> None:
        self.messages, self.earliest = messages, earliest
        self.reads: list[tuple[str, int, int, int]] = []

    async def __call__(
        self, topic: str, partition: int, start: int, end: int
    ) -> tuple[int, list[SourceMessage]]:
        self.reads.append((topic, partition, start, end))
        found = [m for m in self.messages if max(start, self.earliest) <= m.offset < end]
        return self.earliest, found


class RefusingTable(dict[str, bytes]):
    """A state table whose every write the broker refuses."""

    def __setitem__(self, key: str, value: bytes) -> None:
        raise RuntimeError("the broker refused the state write")


async def run(harness: Harness, offsets: list[int]) -> list[int]:
    acked: list[int] = []
    for offset in offsets:
        await harness.stage.process(event_message(offset), lambda o=offset: acked.append(o))
    return acked


async def test_missing_offsets_are_read_directly_and_applied_before_the_message() -> None:
    log = Log([event_message(offset) for offset in range(10)])
    harness = make_harness(read_range=log)
    await run(harness, [0, 1, 2, 7, 8])
    assert log.reads == [("clickstream", 0, 3, 7)]
    runtime = harness.stage.runtimes[0]
    assert runtime.offsets["clickstream"] == 9
    [state] = runtime.task.sessions.values()
    assert len(state.buffered()) == 9  # offsets 0..8, none skipped
    assert harness.metrics.rewinds._value.get() == 1
    lost = harness.metrics.input_lost.labels(topic="clickstream")._value.get()
    assert lost == 0


async def test_offsets_deleted_by_retention_are_counted_lost_and_the_rest_applied() -> None:
    log = Log([event_message(offset) for offset in range(10)], earliest=5)
    harness = make_harness(read_range=log)
    await run(harness, [0, 1, 8])
    [state] = harness.stage.runtimes[0].task.sessions.values()
    applied = sorted(int(event.event_id.removeprefix("e-")) for event in state.buffered())
    assert applied == [0, 1, 5, 6, 7, 8]  # 5..7 read directly, 2..4 gone
    assert harness.metrics.input_lost.labels(topic="clickstream")._value.get() == 3  # 2, 3, 4


async def test_a_task_without_a_checkpoint_reads_from_the_log_start() -> None:
    """Faust cleared what it fetched before a rebalance and hands the restored task (no
    checkpoint yet) a later offset first: the offsets before it are read directly."""
    log = Log([event_message(offset) for offset in range(10)])
    harness = make_harness(read_range=log)
    await run(harness, [6, 7])
    assert log.reads == [("clickstream", 0, 0, 6)]
    [state] = harness.stage.runtimes[0].task.sessions.values()
    assert len(state.buffered()) == 8  # offsets 0..7
    assert harness.metrics.input_lost.labels(topic="clickstream")._value.get() == 0


async def test_a_log_start_moved_by_retention_is_not_a_loss_for_a_task_that_never_read() -> None:
    log = Log([event_message(offset) for offset in range(10)], earliest=4)
    harness = make_harness(read_range=log)
    await run(harness, [4, 5])
    [state] = harness.stage.runtimes[0].task.sessions.values()
    assert len(state.buffered()) == 2
    assert harness.metrics.input_lost.labels(topic="clickstream")._value.get() == 0
    assert harness.metrics.rewinds._value.get() == 0  # a normal first start: nothing skipped
    assert log.reads == [("clickstream", 0, 0, 4)]


async def test_a_task_that_was_handed_nothing_is_repaired_up_to_the_consumer_position() -> None:
    """Restored without a checkpoint and delivered nothing (the consumer's position is at the
    log end: Faust read it all before a rebalance cleared its buffers): the stall repair
    reads the input directly, so the watermark moves."""
    log = Log([event_message(offset) for offset in range(5)])
    harness = make_harness(read_range=log)
    stage = harness.stage
    stage.ensure(0)
    stage.runtimes[0].created_at -= STALL_REPAIR_S
    await stage.repair_stalls({("clickstream", 0): 5})
    assert log.reads == [("clickstream", 0, 0, 5)]
    assert stage.runtimes[0].offsets["clickstream"] == 5


async def test_no_direct_read_when_the_input_is_contiguous() -> None:
    log = Log([])
    harness = make_harness(read_range=log)
    acked = await run(harness, [0, 1, 2, 3])
    assert log.reads == []
    assert harness.stage.runtimes[0].offsets["clickstream"] == 4
    assert acked == []  # acked by the next checkpoint, not before


async def test_a_stalled_input_is_read_directly_up_to_the_consumer_position() -> None:
    """The group consumer is past what the task applied and delivers nothing more (its
    committed offset ran ahead of the checkpoint, with no message left after it): the
    missing offsets are read directly, so the input catches up and can turn idle."""
    log = Log([event_message(offset) for offset in range(10)])
    harness = make_harness(read_range=log)
    await run(harness, [0, 1, 2])
    stage = harness.stage
    runtime = stage.runtimes[0]
    await stage.repair_stalls({("clickstream", 0): 10})
    assert log.reads == []  # delivered a moment ago: not stalled yet
    runtime.last_read["clickstream"] -= STALL_REPAIR_S
    await stage.repair_stalls({("clickstream", 0): 10, ("clickstream", 3): 5})
    assert log.reads == [("clickstream", 0, 3, 10)]  # partition 3 is not this worker's
    assert runtime.offsets["clickstream"] == 10
    [state] = runtime.task.sessions.values()
    assert len(state.buffered()) == 10
    acked = await run(harness, [8, 9])  # Faust delivers them after all: already applied
    assert acked == [8, 9]
    assert len(state.buffered()) == 10
    await stage.repair_stalls({("clickstream", 0): 10})
    assert len(log.reads) == 1  # caught up: nothing more to read


async def test_a_polite_stop_checkpoints_and_acks_what_was_applied_then_writes_nothing() -> None:
    """close() (the worker stopping) writes each partition's last changes and acks them, so the
    next start goes on from there; after it no checkpoint is written (Faust stops its producer
    under the changelog writes of one begun then)."""
    harness = make_harness(read_range=Log([]))
    acked = await run(harness, [0, 1, 2])
    assert acked == []  # the interval has not passed
    await harness.stage.close()
    assert acked == [0, 1, 2]
    meta = orjson.loads(harness.table["t:0"])
    assert meta["offsets"] == {"clickstream": 3, "checkout": 0}
    written = dict(harness.table)
    later = await run(harness, [3])
    await harness.stage.checkpoint(0)
    assert later == []
    assert harness.table == written  # a restart re-reads offset 3 from the group's offset


async def test_input_read_directly_is_checkpointed_by_the_timer_and_by_a_polite_stop() -> None:
    """The stall repair applies input Faust never delivers, so it has no acks: the timer's
    checkpoint of a quiet partition and the stop's last checkpoint store it all the same.
    (Both looked at the acks alone: such a partition was never checkpointed, the stop wrote no
    last checkpoint for it, and the next start applied its input again, under other settings
    differently: the flaky duplicate count of test_dlq_inspect_and_replay_after_a_fix.)"""
    for stop in (False, True):
        log = Log([event_message(offset) for offset in range(5)])
        harness = make_harness(read_range=log)
        stage = harness.stage
        stage.ensure(0)
        runtime = stage.runtimes[0]
        runtime.created_at -= STALL_REPAIR_S
        await stage.repair_stalls({("clickstream", 0): 5})
        assert runtime.unacked == []  # nothing was delivered: nothing to ack
        if stop:
            await stage.close()
        else:
            runtime.checkpointed_at -= stage.committer.interval_s
            stage.checkpoint_due()
            await stage.drain_write_outs()
        meta = orjson.loads(harness.table["t:0"])
        assert meta["offsets"]["clickstream"] == 5
        assert runtime.unstored + runtime.storing == 0  # streamer_unacked_messages


async def test_after_a_failed_write_out_nothing_more_is_written() -> None:
    """Write-outs chain their deltas: once one failed, a later one (and the last checkpoint of
    the stop that follows) would leave a state with a hole, so none is written."""
    harness = make_harness(read_range=Log([]))
    acked = await run(harness, [0, 1])
    harness.stage.committer.table = RefusingTable()
    harness.stage.committer.start(0)  # in the background, as the agent starts them
    await harness.stage.drain_write_outs()
    harness.stage.committer.table = harness.table
    await run(harness, [2])
    with pytest.raises(RuntimeError, match="refused"):
        await harness.stage.checkpoint(0)
    await harness.stage.close()
    assert acked == []
    assert harness.table == {}


async def test_a_write_out_under_way_counts_its_input_as_not_stored_until_it_is() -> None:
    """streamer_unacked_messages (and tests waiting for it to reach 0) must not read a
    checkpoint as stored while its changelog writes still wait for the broker."""
    harness = make_harness(read_range=Log([]))
    stage = harness.stage
    acked = await run(harness, [0, 1, 2])
    broker_has_it = asyncio.Event()

    async def slow_flush() -> None:
        await broker_has_it.wait()

    stage.committer.flush_producer = slow_flush
    stage.committer.start(0)
    await asyncio.sleep(0)
    runtime = stage.runtimes[0]
    assert (len(runtime.unacked), runtime.storing) == (0, 3)
    broker_has_it.set()
    await stage.drain_write_outs()
    assert (runtime.storing, acked) == (0, [0, 1, 2])


async def test_a_produce_the_broker_refused_leaves_nothing_for_the_stop_to_checkpoint() -> None:
    """A dead letter the broker refused: the message raises out of the stage (the worker
    stops) and the stop writes no last checkpoint, so the next start reads it again."""
    harness = make_harness(read_range=Log([]))
    acked = await run(harness, [0, 1])

    async def refuse(key: bytes | None, value: bytes) -> object:
        raise RuntimeError("the broker refused the dead letter")

    harness.stage._send_dead_letter = refuse
    hostile = SourceMessage("clickstream", 0, 2, NOW_MS, b"s-1", b"{not json")
    with pytest.raises(RuntimeError, match="refused"):
        await harness.stage.process(hostile, lambda: acked.append(2))
    await harness.stage.close()
    assert acked == []
    assert harness.table == {}


async def test_a_checkpoint_whose_state_write_failed_leaves_nothing_for_the_stop() -> None:
    """The timer's own checkpoint (not a background write-out) fails at its state write: its
    delta is lost, so the stop must not write a meta that names it."""
    harness = make_harness(read_range=Log([]))
    acked = await run(harness, [0, 1])

    harness.stage.committer.table = RefusingTable()
    with pytest.raises(RuntimeError, match="refused"):
        await harness.stage.checkpoint(0)
    harness.stage.committer.table = harness.table
    await run(harness, [2])
    await harness.stage.close()
    assert acked == []
    assert harness.table == {}
