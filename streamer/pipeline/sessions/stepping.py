"""A task's watermark moved in steps of event time, the loop let run between them.

A large jump of the watermark (the closing events at the end of a backlog, inputs turning
idle) decides every session it passes in one call of ``Task.advance``: on the 200k-event
backlog that was 43,787 sessions and 0.4-0.7 s with the event loop held (the stacks the
loop-lag monitor logged were inside ``advance``). Each watermark on the way is one the task
could have been given by its input, and the core gives the same numbers under any steps of
the watermark (``tests/unit/test_core_properties.py``), so the outputs do not change; a
publish that drains the task between two steps carries the watermark reached so far.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streamer.funnel.session import NEVER
from streamer.funnel.task import Task

__all__ = ["advance_at_once", "advance_in_steps"]

# A move of the watermark up to this much event time is one step, as before: on input read
# in order it moves a little at each event, and that costs nothing more than it did.
FIRST_STEP_MS = 1_000
# A step should cost about this much: the step's event-time span doubles while it costs under
# a quarter of it and halves above it (sessions are not spread evenly over event time).
STEP_S = 0.005
# The loop runs at least this often during a jump (as between the messages of a batch).
YIELD_EVERY_S = 0.01


def advance_at_once(task: Task, watermark_ms: int) -> bool:
    """Moves the watermark in one call of ``task.advance`` if the move is one step (the common
    case: input read in order moves it a little at each event) and says whether it did. The
    per-message path calls this first, so that only a large jump costs a coroutine and a
    :func:`advance_in_steps` call."""
    if watermark_ms - task.watermark_ms <= FIRST_STEP_MS or task.watermark_ms == NEVER:
        task.advance(watermark_ms)  # (no watermark yet: no start to step from)
        return True
    return False


async def advance_in_steps(
    task: Task, watermark_ms: int, still_held: Callable[[], bool] = lambda: True
) -> None:
    """``task.advance(watermark_ms)``, in steps that let the loop run every ``YIELD_EVERY_S``.

    The caller holds the stage's apply lock (nothing else offers to the task or takes its
    snapshot between steps). A rebalance does not wait for that lock: once ``still_held()``
    says the task was released meanwhile (its store closed), it is left where it is."""
    if advance_at_once(task, watermark_ms):
        return
    step = FIRST_STEP_MS
    ran_at = time.perf_counter()
    while task.watermark_ms < watermark_ms:
        started = time.perf_counter()
        task.advance(min(watermark_ms, task.watermark_ms + step))
        done = time.perf_counter()
        if done - started > STEP_S:
            step = max(1, step // 2)
        elif done - started < STEP_S / 4:
            step *= 2
        if done - ran_at >= YIELD_EVERY_S and task.watermark_ms < watermark_ms:
            await asyncio.sleep(0)  # timers, heartbeats, fetches and /metrics run too
            if not still_held():
                return
            ran_at = time.perf_counter()
