"""Input positions (streamer.pipeline.input_order): every stage applies each input partition in
order, once each, without holes. The rules of InputPositions on their own (any store, several
partitions, retention), then ContiguousInput, the merger's and the notifier's one-partition use
of them. The sessions and re-key stages' own uses are tested in test_input_gap.py and
test_rekey.py."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from streamer.metrics import Metrics
from streamer.pipeline.input_order import (
    NEXT_OFFSET_KEY,
    STALL_REPAIR_S,
    ContiguousInput,
    InputMessage,
    InputPositions,
    MemoryStore,
)

LOG = {
    offset: InputMessage(offset, f"record {offset}".encode(), 1000 + offset) for offset in range(20)
}


class Positions:
    """InputPositions over a MemoryStore, two partitions of one topic, and a log whose first
    ``log_start`` offsets retention deleted."""

    def __init__(self, log_start: int = 0) -> None:
        self.applied: list[tuple[int, int]] = []
        self.reads: list[tuple[int, int, int]] = []
        self.store = MemoryStore()
        self.metrics = Metrics.create(
            CollectorRegistry(), source_topics=("clickstream",), funnels=()
        )

        async def read(
            topic: str, partition: int, start: int, end: int
        ) -> tuple[int, list[InputMessage]]:
            self.reads.append((partition, start, end))
            return log_start, [LOG[o] for o in range(max(start, log_start), end)]

        async def apply_hole(message: InputMessage) -> None:
            await self.apply(self.partition, message)

        self.partition = 0
        self.positions: InputPositions[InputMessage] = InputPositions(
            who="test stage",
            store=self.store,
            read_range=read,
            apply_hole=apply_hole,
            metrics=self.metrics,
        )

    async def apply(self, partition: int, message: InputMessage) -> None:
        self.applied.append((partition, message.offset))
        self.positions.applied("clickstream", partition, message.offset)

    async def deliver(self, partition: int, *offsets: int) -> None:
        self.partition = partition
        for offset in offsets:
            if await self.positions.admit("clickstream", partition, LOG[offset]):
                await self.apply(partition, LOG[offset])

    def counted(self) -> tuple[float, float]:
        lost = self.metrics.input_lost.labels(topic="clickstream")._value.get()
        return self.metrics.rewinds._value.get(), lost  # type: ignore[attr-defined]


async def test_positions_are_kept_per_partition_copies_skipped_holes_read_first() -> None:
    positions = Positions()
    await positions.deliver(0, 0, 1, 1, 2)  # 1 again: a copy
    await positions.deliver(1, 0, 3)  # partition 1 skipped 1..2
    assert positions.applied == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert positions.reads == [(1, 1, 3)]
    assert positions.store.offsets == {("clickstream", 0): 3, ("clickstream", 1): 4}
    assert positions.counted() == (1, 0)


async def test_a_position_past_the_last_applied_is_read_and_a_caught_up_one_is_not() -> None:
    positions = Positions()
    await positions.deliver(0, 0, 1)
    assert not await positions.positions.repair("clickstream", 0, 2)  # caught up
    assert await positions.positions.repair("clickstream", 0, 5)
    assert positions.applied == [(0, o) for o in range(5)]
    assert positions.reads == [(0, 2, 5)]


async def test_offsets_retention_deleted_are_lost_but_a_first_start_begins_at_the_log_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first_start = Positions(log_start=4)
    await first_start.deliver(0, 6)  # nothing applied yet: 0..3 are gone, 4..5 read
    assert first_start.applied == [(0, 4), (0, 5), (0, 6)]
    assert first_start.counted() == (1, 0)
    later = Positions(log_start=4)
    await later.deliver(0, 0, 1)
    with caplog.at_level(logging.ERROR):
        await later.deliver(0, 7)  # 2..3 deleted before they were applied, 4..6 read
    assert later.applied == [(0, 0), (0, 1), (0, 4), (0, 5), (0, 6), (0, 7)]
    assert later.counted() == (1, 2)
    assert "clickstream[0] offsets 2..3 were deleted by retention" in caplog.text


async def test_a_copy_applied_again_never_moves_the_position_back() -> None:
    positions = Positions()
    await positions.deliver(0, 0, 1, 2)
    positions.positions.applied("clickstream", 0, 1)  # the re-key stage forwards copies again
    assert positions.store.get("clickstream", 0) == 3


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stage:
    """A stage behind a ContiguousInput: what it applied, and what was read outside Faust."""

    def __init__(self, table: dict[str, bytes] | None = None, log_start: int = 0) -> None:
        self.table: dict[str, bytes] = table if table is not None else {}
        self.applied: list[int] = []
        self.reads: list[tuple[int, int]] = []
        self.clock = Clock()
        self.metrics = Metrics.create(
            CollectorRegistry(), source_topics=("clickstream",), funnels=()
        )
        self.log_start = log_start

        async def apply(message: InputMessage) -> None:
            assert message == LOG[message.offset]
            self.applied.append(message.offset)

        async def read(
            topic: str, partition: int, start: int, end: int
        ) -> tuple[int, list[InputMessage]]:
            assert (topic, partition) == ("funnel.partials", 0)
            self.reads.append((start, end))
            return log_start, [LOG[o] for o in range(max(start, log_start), end)]

        self.input = ContiguousInput(
            table=self.table,
            topic="funnel.partials",
            stage="windows",
            apply=apply,
            read_range=read,
            metrics=self.metrics,
            monotonic=self.clock,
        )

    async def deliver(self, *offsets: int) -> None:
        for offset in offsets:
            await self.input.deliver(LOG[offset])

    @property
    def rewinds(self) -> float:
        return self.metrics.rewinds._value.get()  # type: ignore[attr-defined]


async def test_in_order_nothing_is_read_and_copies_of_applied_messages_are_skipped() -> None:
    stage = Stage()
    await stage.deliver(0, 1, 2, 1, 2, 3)  # 1 and 2 again, as after a restart
    assert stage.applied == [0, 1, 2, 3]
    assert stage.table[NEXT_OFFSET_KEY] == b"4"
    assert stage.reads == []
    assert stage.rewinds == 0


async def test_a_hole_faust_skipped_is_read_and_applied_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stage = Stage()
    await stage.deliver(0, 1, 2, 3, 4)
    with caplog.at_level(logging.WARNING):
        await stage.deliver(9, 10)
    assert stage.applied == list(range(11))
    assert stage.reads == [(5, 9)]
    assert stage.rewinds == 1
    assert "funnel.partials[0] is at offset 9 but it applied input up to 5" in caplog.text


async def test_a_first_start_past_the_log_start_reads_from_there() -> None:
    stage = Stage()
    await stage.deliver(2)  # nothing applied, nothing stored: Faust began at 2
    assert stage.applied == [0, 1, 2]


async def test_retention_past_the_hole_is_not_a_rewind() -> None:
    stage = Stage(log_start=6)
    await stage.deliver(6)
    assert stage.applied == [6]
    assert stage.reads == [(0, 6)]
    assert stage.rewinds == 0


async def test_a_table_kept_before_offsets_were_recorded_starts_where_faust_does() -> None:
    stage = Stage(table={"progress": b"{}"})
    await stage.deliver(7, 8)
    assert stage.applied == [7, 8]
    assert stage.reads == []


async def test_a_hole_at_the_end_of_the_log_is_read_once_the_input_went_quiet() -> None:
    stage = Stage()
    await stage.deliver(0, 1)
    await stage.input.repair_stall(5)  # Faust's position is past 1..4, just delivered: wait
    assert stage.applied == [0, 1]
    stage.clock.now += STALL_REPAIR_S
    await stage.input.repair_stall(2)  # caught up
    assert stage.reads == []
    await stage.input.repair_stall(5)
    assert stage.applied == [0, 1, 2, 3, 4]
    await stage.deliver(4, 5)  # Faust delivers after all: 4 is a copy
    assert stage.applied == [0, 1, 2, 3, 4, 5]


async def test_a_quiet_table_kept_before_offsets_were_recorded_is_not_read_from_the_start() -> None:
    stage = Stage(table={"progress": b"{}"})
    stage.clock.now += STALL_REPAIR_S
    await stage.input.repair_stall(12)  # Faust is at 12: where this table's input stands
    assert stage.reads == []
    assert stage.table[NEXT_OFFSET_KEY] == b"12"
