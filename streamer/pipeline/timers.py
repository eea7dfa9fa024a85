"""Periodic work of a stage: a timer that does not turn a clean stop into a crash, the
consumer offsets its ticks read, and the monitor of the event loop they all share."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import IllegalStateError
from prometheus_client import Histogram

from streamer.startup import SWEEP_CHECK_EVERY_S, FrozenSweep

__all__ = [
    "Beside",
    "consumer_offsets",
    "install_frozen_sweep",
    "install_loop_lag_monitor",
    "install_timer",
    "watch_loop_lag",
]

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


class Beside:
    """The slow part of a timer's tick (waiting for the broker) run beside the ticks, so a
    tick never waits for it and the next one comes on time. One at a time: a tick that finds
    the last one still under way leaves its part to a later tick. Its failure is raised by
    the next tick (:meth:`raise_failed`, also called by :meth:`start`), so the worker still
    stops on it, one tick later."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._running: asyncio.Future[None] | None = None
        self._failed: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._running is not None and not self._running.done()

    def raise_failed(self) -> None:
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    def start(self, work: Callable[[], Awaitable[None]]) -> bool:
        """Run ``work()`` unless the last one is under way; True if it was started."""
        self.raise_failed()
        if self.busy:
            log.debug("%s: the last one is still under way; next tick", self.name)
            return False
        running = self._running = asyncio.ensure_future(work())
        running.add_done_callback(self._done)
        return True

    def _done(self, running: asyncio.Future[None]) -> None:
        if not running.cancelled() and running.exception() is not None:
            self._failed = running.exception()

    async def wait(self) -> None:
        """Until the one under way (if any) has finished; its failure is kept for the next
        tick."""
        if self._running is not None:
            await asyncio.wait([self._running])


# One unanswered question to each app's consumer at a time. Faust runs the consumer's calls
# on two workers of its thread, fetches among them, and a call that has started runs to its
# end even when the tick that asked gave up: a log-end query the broker is slow to answer held
# one worker until the request timeout, the next tick's query (or another stage's timer: the
# re-key path has two) took the other, and the worker fetched nothing for up to 90 s.
_UNANSWERED: dict[int, asyncio.Future[Any]] = {}


class _StillAsking(Exception):
    """The consumer has not answered an earlier question yet."""


async def _ask(app: Any, question: Awaitable[Any]) -> Any:
    """``question`` (a call into ``app``'s consumer) answered within ``OFFSETS_TIMEOUT_S``; a
    late answer still frees the consumer before the next question is asked."""
    earlier = _UNANSWERED.get(id(app))
    if earlier is not None and not earlier.done():
        if asyncio.iscoroutine(question):
            question.close()  # never started
        raise _StillAsking
    asked = _UNANSWERED[id(app)] = asyncio.ensure_future(question)
    asked.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.wait_for(asyncio.shield(asked), OFFSETS_TIMEOUT_S)


async def consumer_offsets(
    app: Any, tps: list[Any]
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]] | None:
    """The log end and the consumer's position of each of ``tps`` ((topic, partition) ->
    offset), or None while a rebalance takes partitions away (the next tick reads the new
    assignment) or the consumer has not answered an earlier question. A partition revoked
    between the two questions, or whose position is not answered in time, has no position
    (asked again next tick)."""
    try:
        highwaters = await _ask(app, app.consumer.highwaters(*tps)) if tps else {}
    except IllegalStateError:
        return None
    except _StillAsking:
        log.debug("the consumer has not answered an earlier question yet: next tick")
        return None
    except TimeoutError:
        log.warning("the consumer gave no log end offsets within %gs: next tick", OFFSETS_TIMEOUT_S)
        return None
    positions = {}
    for tp in tps:
        try:
            position = await _ask(app, app.consumer.position(tp))
        except IllegalStateError:  # revoked since the assignment was read
            continue
        except _StillAsking:  # the one before is unanswered: the rest next tick
            break
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


# The loop-lag monitor wakes up this often: 20 wake-ups a second cost the loop well under a
# millisecond, and a stall shows within 50 ms of its end.
LOOP_LAG_INTERVAL_S = 0.05
# A wake-up this late is logged (the target: nothing holds the loop 100 ms), at most
# once per LOOP_LAG_LOG_EVERY_S unless it is worse than the last one logged: the worst stall
# is always in the log.
LOOP_LAG_WARN_S = 0.1
LOOP_LAG_LOG_EVERY_S = 10.0


async def watch_loop_lag(
    histogram: Histogram,
    interval_s: float = LOOP_LAG_INTERVAL_S,
    warn_s: float = LOOP_LAG_WARN_S,
    beat: list[float] | None = None,
) -> None:
    """Sleep ``interval_s`` again and again, observing in ``histogram`` how late each wake-up
    runs: the time something else held the loop (a synchronous step, a callback) while this
    one was due. ``beat[0]`` is set to each wake-up's ``time.monotonic()``. Runs until
    cancelled."""
    loop = asyncio.get_running_loop()
    logged_at, logged_lag = -LOOP_LAG_LOG_EVERY_S, 0.0
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        if beat is not None:
            beat[0] = time.monotonic()
        lag = max(0.0, loop.time() - due)
        histogram.observe(lag)
        if lag >= warn_s:
            now = time.monotonic()
            if now - logged_at >= LOOP_LAG_LOG_EVERY_S or lag > logged_lag:
                logged_at, logged_lag = now, lag
                log.warning(
                    "event loop lag: a wake-up due every %gs ran %.3fs late (the loop was "
                    "held by synchronous work)",
                    interval_s,
                    lag,
                )


# A stall this long gets the stack of the code holding the loop logged, read by a thread
# while it lasts (the lag alone says how long, not what).
LOOP_STALL_STACK_S = 0.5


def _log_stalls(beat: list[float], loop_thread: int, done: threading.Event) -> None:
    """In a thread of its own: while the monitor's last wake-up (``beat``) is more than
    ``LOOP_STALL_STACK_S`` old, log once where the loop's thread is."""
    reported = 0.0
    while not done.wait(LOOP_STALL_STACK_S / 5):
        last = beat[0]
        if last == reported or time.monotonic() - last < LOOP_STALL_STACK_S:
            continue
        reported = last
        frame = sys._current_frames().get(loop_thread)
        if frame is not None:
            log.warning(
                "event loop held for %.1fs so far, at:\n%s",
                time.monotonic() - last,
                "".join(traceback.format_stack(frame, limit=20)).rstrip(),
            )


def install_loop_lag_monitor(app: Any, histogram: Histogram) -> None:
    """Run :func:`watch_loop_lag` on ``app`` while the worker runs (Faust cancels it on stop),
    and a thread that logs what holds the loop during a stall of ``LOOP_STALL_STACK_S``."""

    async def loop_lag_monitor() -> None:
        beat = [time.monotonic()]
        done = threading.Event()
        threading.Thread(
            target=_log_stalls,
            args=(beat, threading.get_ident(), done),
            name="loop-stall-stacks",
            daemon=True,
        ).start()
        try:
            await watch_loop_lag(histogram, beat=beat)
        finally:
            done.set()

    app.task(loop_lag_monitor)


def install_frozen_sweep(app: Any) -> None:
    """Check every ``SWEEP_CHECK_EVERY_S`` whether the objects frozen out of the garbage
    collector (``streamer.startup``, decision 0007) hold enough garbage to be due a full
    collection (counted in a forked child), and run it; each step is logged."""
    sweep = FrozenSweep()

    async def sweep_frozen() -> None:
        check = sweep.step(time.monotonic())
        if check is None:
            return
        if check.fork_s is not None:
            log.info(
                "garbage collector: %d frozen objects, counting their garbage in a child "
                "(fork %.3fs)",
                check.frozen,
                check.fork_s,
            )
        elif check.unanswered:
            log.warning(
                "garbage collector: the count of the frozen objects' garbage went unanswered"
            )
        elif check.swept is None:
            log.info(
                "garbage collector: %d of %d frozen objects are garbage: no full collection",
                check.garbage,
                check.frozen,
            )
        else:
            log.info(
                "garbage collector: %d of %d frozen objects are garbage: a full collection "
                "freed %d (%.3fs)",
                check.garbage,
                check.frozen,
                check.swept,
                check.sweep_s,
            )

    install_timer(app, SWEEP_CHECK_EVERY_S, sweep_frozen, "gc.sweep_frozen")
