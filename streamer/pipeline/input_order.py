"""Holes in a one-partition input that Faust skipped, read directly.

Faust can hand an agent a message past ones it never delivered: what its fetcher had buffered
while the worker restored a table from its changelog is dropped when the streams resume, the
fetch goes on after it, and the group's commit then moves past the dropped offsets. The
sessions stage finds such holes through the offsets in its checkpoint (see
``SessionsStage._fill_gap``); the windows and notifier stages, which read one partition each,
keep the next offset they applied in their own table with :class:`ContiguousInput`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from streamer.kafka_io import read_range
from streamer.metrics import Metrics
from streamer.pipeline.tables import in_partition
from streamer.pipeline.timers import consumer_offsets, install_timer
from streamer.settings import Settings

__all__ = [
    "NEXT_OFFSET_KEY",
    "STALL_REPAIR_S",
    "ContiguousInput",
    "InputMessage",
    "ReadRangeFn",
    "install_contiguous_input",
    "report_hole",
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


def report_hole(
    metrics: Metrics, who: str, source: str, at: int, applied_to: int, found: int
) -> None:
    """Log and count a hole read directly: ``source`` is at offset ``at`` but ``who`` applied
    (or forwarded) input up to ``applied_to``; ``found`` messages were read in between."""
    log.warning(
        "%s: %s is at offset %d but it applied input up to %d: reading offsets %d..%d "
        "directly (%d messages)",
        who,
        source,
        at,
        applied_to,
        applied_to,
        at - 1,
        found,
    )
    metrics.rewinds.inc()


# (topic, partition, start, end) -> (the log's start offset, messages with start <= offset < end)
ReadRangeFn = Callable[[str, int, int, int], Awaitable[tuple[int, list[InputMessage]]]]
# Apply one message and wait until its effects (state writes, outputs) are on the broker.
ApplyFn = Callable[[InputMessage], Awaitable[None]]


class ContiguousInput:
    """Applies partition 0 of ``topic`` in offset order, each message once, without holes.

    The next offset to apply is kept in the stage's table, written once a message's effects
    are confirmed on the broker: a message before it is a copy of one applied (skipped); one
    past it comes after a hole, which is read directly and applied first. A hole at the end
    of the log (no later message to reveal it) is found by :meth:`repair_stall` from the
    consumer's position."""

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
        self._table = table
        self._topic = topic
        self._stage = stage
        self._apply = apply
        self._read_range = read_range
        self._metrics = metrics
        self._monotonic = monotonic
        self._lock = asyncio.Lock()  # the agent and the stall repair apply in turn
        self._delivered_at = monotonic()

    def _expected(self, faust_at: int) -> int:
        """The next offset to apply. None recorded yet: read from the log's start, or, for a
        table kept by a version that did not record offsets, from where Faust is
        (``faust_at``: the message delivered, or the consumer's position). Recorded at once:
        written before the first message's effects, it is on the changelog whenever they are."""
        raw = self._table.get(NEXT_OFFSET_KEY)
        if raw is None:
            start = 0 if next(iter(self._table), None) is None else faust_at
            self._table[NEXT_OFFSET_KEY] = str(start).encode()
            return start
        return int(raw)

    async def deliver(self, message: InputMessage) -> None:
        """Apply a message Faust delivered, after the hole before it if there is one."""
        async with self._lock:
            self._delivered_at = self._monotonic()
            try:
                with in_partition(self._topic, 0):
                    expected = self._expected(message.offset)
                    if message.offset < expected:
                        return  # applied and confirmed before a restart: delivered again
                    if message.offset > expected:
                        await self._fill(expected, message.offset)
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
                expected = self._expected(position)
                if position > expected:
                    await self._fill(expected, position)
                    self._delivered_at = self._monotonic()

    async def _fill(self, expected: int, until: int) -> None:
        _, missing = await self._read_range(self._topic, 0, expected, until)
        if missing:  # none: retention moved the log's start, or compaction left the hole
            report_hole(self._metrics, f"{self._stage} stage", self._topic, until, expected,
                        len(missing))  # fmt: skip
        for message in missing:
            await self._apply_one(message)
        if not missing or missing[-1].offset + 1 < until:
            self._table[NEXT_OFFSET_KEY] = str(until).encode()

    async def _apply_one(self, message: InputMessage) -> None:
        await self._apply(message)
        self._table[NEXT_OFFSET_KEY] = str(message.offset + 1).encode()


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

    async def repair() -> None:
        if not guard.quiet or app.rebalancing or app.in_recovery:
            return
        if not app.tables.recovery.completed.is_set() or tp not in app.consumer.assignment():
            return
        offsets = await consumer_offsets(app, [tp])
        if offsets is not None:
            await guard.repair_stall(offsets[1].get((topic, 0)))

    install_timer(app, 2.0, repair, f"{stage}.repair_stalls")
    return guard
