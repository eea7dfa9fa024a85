"""Periodic work of a stage: a timer that does not turn a clean stop into a crash, and the
consumer offsets its ticks read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import IllegalStateError

__all__ = ["consumer_offsets", "install_timer"]

log = logging.getLogger(__name__)

# How long a tick waits for each answer of the consumer (the log ends, then each partition's
# position). aiokafka's ``position()`` waits until a partition has a valid fetch position,
# with no bound: a tick waiting there would hold the timer (progress records, checkpoints of
# quiet partitions, the stall repair) for as long. A partition without an answer in time is
# asked again next tick.
OFFSETS_TIMEOUT_S = 2.0


def install_timer(
    app: Any, interval_s: float, body: Callable[[], Awaitable[None]], name: str
) -> None:
    """Run ``body`` every ``interval_s`` seconds on ``app``.

    Faust stops the producer before it cancels its timers, so a tick under way when the worker
    is told to stop can find the producer gone. What that tick did not send is what a SIGKILL
    at the same moment would lose, and the next start re-derives it from the last checkpoint:
    it is logged, not raised (raised, it makes a clean stop exit 1 as a crash). An error while
    running is raised as before: the worker stops rather than go on without its timer.
    """

    async def tick() -> None:
        if app.should_stop:
            return
        try:
            await body()
        except Exception as exc:
            if not app.should_stop:
                raise
            log.info("%s: cut short by the worker stopping (%s); nothing is lost", name, exc)

    tick.__name__ = tick.__qualname__ = name  # Faust names the timer (and its logs) after it
    app.timer(interval_s)(tick)


async def consumer_offsets(
    app: Any, tps: list[Any]
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]] | None:
    """The log end and the consumer's position of each of ``tps`` ((topic, partition) ->
    offset), or None while a rebalance takes partitions away (the next tick reads the new
    assignment). A partition revoked between the two questions has no position."""
    try:
        highwaters = (
            await asyncio.wait_for(app.consumer.highwaters(*tps), OFFSETS_TIMEOUT_S) if tps else {}
        )
    except IllegalStateError:
        return None
    except TimeoutError:
        log.warning("the consumer gave no log end offsets within %gs: next tick", OFFSETS_TIMEOUT_S)
        return None
    positions = {}
    for tp in tps:
        try:
            position = await asyncio.wait_for(app.consumer.position(tp), OFFSETS_TIMEOUT_S)
        except IllegalStateError:  # revoked since the assignment was read
            continue
        except TimeoutError:  # no valid fetch position yet (being reset): asked again next tick
            log.warning(
                "%s[%d]: the consumer gave no fetch position within %gs: next tick",
                tp.topic,
                tp.partition,
                OFFSETS_TIMEOUT_S,
            )
            continue
        if position is not None:
            positions[(tp.topic, tp.partition)] = int(position)
    return {(tp.topic, tp.partition): int(end) for tp, end in highwaters.items()}, positions
