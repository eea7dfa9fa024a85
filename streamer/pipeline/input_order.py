"""Input positions: every stage applies each input partition in offset order, each message
once, without holes. One component, :class:`InputPositions`, used by the sessions stage, the
re-key stage, the merger and the notifier. Its rules:

1. Per (topic, partition) a stage keeps the **next offset** it applied, in a place of its own
   (a :class:`PositionStore`): the sessions stage in its checkpoint's meta record, the merger
   and the notifier in a key of their table (:class:`TableStore`), the re-key stage in memory
   (:class:`MemoryStore`), recorded in a compacted topic once its forwards are confirmed and
   read back at each assignment (``streamer.pipeline.rekey``).
2. A delivered message **before** it is a copy of one applied: skipped (:meth:`admit` says so).
3. A delivered message **past** it comes after a *hole*: Faust skipped offsets (what its fetcher
   had buffered while the worker restored a table is dropped when the streams resume, and the
   group's commit moves past it; a commit on revoke can run ahead of what the previous owner
   stored). The hole is read directly, outside the group, and applied first.
4. A consumer **position** past it while nothing is delivered is a hole at the log's end (no
   later message reveals it): the stage's timer hands the position to :meth:`repair` once the
   input was quiet for ``STALL_REPAIR_S``.
5. Every hole read is logged at WARNING ("... is at offset N but it applied input up to M:
   reading offsets M..N-1 directly (k messages)") and counted (``streamer_input_rewinds_total``).
   Offsets that retention deleted before they were applied are logged at ERROR and counted as
   lost (``streamer_input_lost_messages_total``), except on a first start (nothing applied
   yet), where a log whose start moved is just where the input begins (INFO, no rewind).
(Seeking the group consumer back does not work: Faust drops re-fetched offsets below the newest
it has handed out.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from faust.types import TP

from streamer.kafka_io import read_range
from streamer.metrics import Metrics
from streamer.pipeline.messages import SourceMessage, record_message
from streamer.pipeline.tables import in_partition
from streamer.pipeline.timers import Beside, consumer_offsets, install_timer
from streamer.settings import Settings

__all__ = [
    "NEXT_OFFSET_KEY",
    "STALL_REPAIR_S",
    "ContiguousInput",
    "InputMessage",
    "InputPositions",
    "MemoryStore",
    "PositionStore",
    "ReadRangeFn",
    "TableStore",
    "install_contiguous_input",
    "source_reader",
]

log = logging.getLogger(__name__)

# An input whose consumer position is past what was applied, silent this long, is stalled:
# the offsets in between will not be delivered (Faust skipped them) and are read directly.
STALL_REPAIR_S = 10.0

# Not a key any stage uses: merger keys have a kind before ":", the notifier's are alert ids.
NEXT_OFFSET_KEY = "input-next-offset"


@dataclass(frozen=True)
class InputMessage:
    offset: int
    value: bytes | None
    timestamp_ms: int | None

    @classmethod
    def of(cls, message: Any) -> InputMessage:
        """A Faust message (its timestamp in float seconds)."""
        timestamp = message.timestamp
        return cls(message.offset, message.value, round(timestamp * 1000) if timestamp else None)


class Positioned(Protocol):
    @property
    def offset(self) -> int: ...


M = TypeVar("M", bound=Positioned)


class PositionStore(Protocol):
    """Where a stage keeps the next offset it applied of each input partition."""

    def get(self, topic: str, partition: int) -> int | None: ...

    def set(self, topic: str, partition: int, offset: int) -> None: ...


class MemoryStore:
    """Positions in memory (the re-key stage's working copy; it records them itself)."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def get(self, topic: str, partition: int) -> int | None:
        return self.offsets.get((topic, partition))

    def set(self, topic: str, partition: int, offset: int) -> None:
        self.offsets[(topic, partition)] = offset

    def forget(self, topic: str, partition: int) -> None:
        self.offsets.pop((topic, partition), None)  # revoked: its next owner reads on


class TableStore:
    """The position of a one-partition input, kept in the stage's changelogged table (written
    in the same partition's changelog as the stage's state, so it is restored with it)."""

    def __init__(self, table: MutableMapping[str, bytes]) -> None:
        self._table = table

    def get(self, topic: str, partition: int) -> int | None:
        raw = self._table.get(NEXT_OFFSET_KEY)
        return None if raw is None else int(raw)

    def set(self, topic: str, partition: int, offset: int) -> None:
        self._table[NEXT_OFFSET_KEY] = str(offset).encode()

    def holds_state(self) -> bool:
        return next(iter(self._table), None) is not None


# (topic, partition, start, end) -> (the log's start offset, messages with start <= offset < end)
ReadFn = Callable[[str, int, int, int], Awaitable[tuple[int, Sequence[M]]]]
# Where a partition with no position yet starts: (topic, partition, where Faust is) -> offset
StartFn = Callable[[str, int, int], Awaitable[int]]


async def _from_log_start(topic: str, partition: int, faust_at: int) -> int:
    return 0


class InputPositions(Generic[M]):
    """The rules of this module for one stage (``who``, as its log lines name it): holes are
    read with ``read_range`` and applied with ``apply_hole``, positions kept in ``store``.

    The caller serialises :meth:`admit`, :meth:`applied` and :meth:`repair` (its own lock:
    the agent and the timer take turns), applies each admitted message itself and then calls
    :meth:`applied`; ``apply_hole`` must record its message's position the same way."""

    def __init__(
        self,
        *,
        who: str,
        store: PositionStore,
        read_range: ReadFn[M],
        apply_hole: Callable[[M], Awaitable[Any]],
        metrics: Metrics,
        start: StartFn = _from_log_start,
    ) -> None:
        self.who = who
        self.store = store
        self._read_range = read_range
        self._apply_hole = apply_hole
        self._metrics = metrics
        self._start = start

    async def next_offset(self, topic: str, partition: int, faust_at: int) -> int:
        """The next offset to apply; with none kept yet, where this input starts (recorded at
        once: it then travels with the first state written)."""
        offset = self.store.get(topic, partition)
        if offset is None:
            offset = await self._start(topic, partition, faust_at)
            self.store.set(topic, partition, offset)
        return offset

    async def admit(self, topic: str, partition: int, message: M) -> bool:
        """False: ``message`` is a copy of one applied (skip it). True: apply it; a hole
        before it was read and applied first."""
        expected = await self.next_offset(topic, partition, message.offset)
        if message.offset < expected:
            return False
        if message.offset > expected:
            await self._fill(topic, partition, expected, message.offset)
        return True

    def applied(self, topic: str, partition: int, offset: int) -> None:
        """``offset`` was applied: the position moves past it (never back: a copy the re-key
        stage forwards again leaves it where it is)."""
        current = self.store.get(topic, partition)
        if current is None or current <= offset:
            self.store.set(topic, partition, offset + 1)

    async def repair(self, topic: str, partition: int, position: int) -> bool:
        """The consumer is at ``position`` and the caller found the input quiet: read what
        lies between (rule 4). True when there was a hole."""
        expected = await self.next_offset(topic, partition, position)
        if position <= expected:
            return False
        await self._fill(topic, partition, expected, position)
        return True

    async def _fill(self, topic: str, partition: int, expected: int, until: int) -> None:
        earliest, missing = await self._read_range(topic, partition, expected, until)
        source = f"{topic}[{partition}]"
        if earliest > expected:
            if expected == 0:  # nothing applied yet: the input begins here
                log.info("%s: %s starts at offset %d", self.who, source, earliest)
            else:
                log.error(
                    "%s: %s offsets %d..%d were deleted by retention before they were "
                    "applied; their events are lost",
                    self.who,
                    source,
                    expected,
                    min(earliest, until) - 1,
                )
                self._metrics.input_lost.labels(topic=topic).inc(min(earliest, until) - expected)
        if missing:
            log.warning(
                "%s: %s is at offset %d but it applied input up to %d: reading offsets "
                "%d..%d directly (%d messages)",
                self.who,
                source,
                until,
                expected,
                expected,
                until - 1,
                len(missing),
            )
            self._metrics.rewinds.inc()
        for message in missing:
            await self._apply_hole(message)
        current = self.store.get(topic, partition)
        if current is None or current < until:
            self.store.set(topic, partition, until)


# (topic, partition, start, end) -> (the log's start offset, messages with start <= offset < end)
ReadRangeFn = Callable[[str, int, int, int], Awaitable[tuple[int, list[InputMessage]]]]
# Apply one message and wait until its effects (state writes, outputs) are on the broker.
ApplyFn = Callable[[InputMessage], Awaitable[None]]


class ContiguousInput:
    """Partition 0 of ``topic`` applied through :class:`InputPositions`, its position in the
    stage's table (:class:`TableStore`), written once a message's effects are confirmed on the
    broker; :meth:`repair_stall` is the timer's part (rule 4). For the merger and the
    notifier, which read one partition each."""

    def __init__(
        self,
        *,
        table: MutableMapping[str, bytes],
        topic: str,
        stage: str,
        apply: ApplyFn,
        read_range: ReadRangeFn,
        metrics: Metrics,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._topic = topic
        self._apply = apply
        self._monotonic = monotonic
        self._lock = asyncio.Lock()  # the agent and the stall repair apply in turn
        self._delivered_at = monotonic()
        store = TableStore(table)

        async def start(topic: str, partition: int, faust_at: int) -> int:
            # Nothing recorded yet: from the log's start; for a table kept by a version that
            # did not record offsets, from where Faust is (the message delivered, or the
            # consumer's position).
            return faust_at if store.holds_state() else 0

        self.positions: InputPositions[InputMessage] = InputPositions(
            who=f"{stage} stage",
            store=store,
            read_range=read_range,
            apply_hole=self._apply_one,
            metrics=metrics,
            start=start,
        )

    async def deliver(self, message: InputMessage) -> None:
        """Apply a message Faust delivered, after the hole before it if there is one."""
        async with self._lock:
            self._delivered_at = self._monotonic()
            try:
                with in_partition(self._topic, 0):
                    if await self.positions.admit(self._topic, 0, message):
                        await self._apply_one(message)
            finally:
                self._delivered_at = self._monotonic()

    @property
    def quiet(self) -> bool:
        """Nothing delivered for ``STALL_REPAIR_S``: worth asking for the consumer's position."""
        return self._monotonic() - self._delivered_at >= STALL_REPAIR_S

    async def repair_stall(self, position: int | None) -> None:
        """The consumer's position is past what was applied and nothing was delivered for
        ``STALL_REPAIR_S``: read and apply the rest (the timer's part)."""
        if position is None or not self.quiet:
            return
        async with self._lock:
            if not self.quiet:
                return  # a delivery came meanwhile (its position was in Faust's buffers)
            with in_partition(self._topic, 0):
                if await self.positions.repair(self._topic, 0, position):
                    self._delivered_at = self._monotonic()

    async def _apply_one(self, message: InputMessage) -> None:
        await self._apply(message)  # its effects confirmed on the broker, then its position
        self.positions.applied(self._topic, 0, message.offset)


def source_reader(
    settings: Settings, timeout_s: float = 60.0
) -> Callable[[str, int, int, int], Awaitable[tuple[int, list[SourceMessage]]]]:
    """Reads a range of a source partition from the broker, outside the consumer group."""

    async def read(
        topic: str, partition: int, start: int, end: int
    ) -> tuple[int, list[SourceMessage]]:
        earliest, records = await read_range(settings, topic, partition, start, end, timeout_s)
        return earliest, [record_message(record) for record in records]

    return read


def install_contiguous_input(
    app: Any,
    settings: Settings,
    *,
    table: MutableMapping[str, bytes],
    topic: str,
    stage: str,
    apply: ApplyFn,
    metrics: Metrics,
) -> ContiguousInput:
    """A :class:`ContiguousInput` for partition 0 of ``topic``, reading holes from the broker,
    with a timer that hands it the consumer's position once it went quiet."""

    async def read(
        topic: str, partition: int, start: int, end: int
    ) -> tuple[int, list[InputMessage]]:
        earliest, records = await read_range(settings, topic, partition, start, end)
        return earliest, [InputMessage(r.offset, r.value, r.timestamp) for r in records]

    guard = ContiguousInput(
        table=table, topic=topic, stage=stage, apply=apply, read_range=read, metrics=metrics
    )
    tp = TP(topic, 0)
    # Asking the consumer its position can take up to OFFSETS_TIMEOUT_S (a slow broker, a
    # loaded machine), as long as the tick's interval: it runs beside the ticks, one at a time.
    repairing = Beside(f"{stage}.repair_stalls")

    async def repair_beside() -> None:
        offsets = await consumer_offsets(app, [tp])
        if offsets is not None:
            await guard.repair_stall(offsets[1].get((topic, 0)))

    async def repair() -> None:
        repairing.raise_failed()
        if not guard.quiet or app.rebalancing or app.in_recovery or repairing.busy:
            return
        if not app.tables.recovery.completed.is_set() or tp not in app.consumer.assignment():
            return
        repairing.start(repair_beside)

    install_timer(app, 2.0, repair, f"{stage}.repair_stalls")
    return guard
