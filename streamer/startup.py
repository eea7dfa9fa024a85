"""The worker's start-up: partition layout checks and the garbage collector's tuning."""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import NoReturn

from streamer.kafka_io import run_sync
from streamer.settings import Settings

# The worker holds every open session's state, hundreds of thousands of objects, and Python's
# cyclic collector with its default thresholds (700, 10, 10) walked them again and again: 17 s
# of a 90 s run on a 200k-event backlog (measured with gc.callbacks). Decision 0004 made
# collections rarer; decision 0007 (third round) keeps each one short instead: a collection
# walks only what is younger than the last one (``_freeze_survivors``), so the young generation's
# size bounds every pause, and 10,000 allocations keep it small (tens of ms of CPU at worst).
GC_THRESHOLDS = (10_000, 20, 100)


# Frozen objects are freed by their reference counts alone: a cycle among them would stay.
# Whether any did is measured, not guessed from growth (decision 0007, fourth round): once the
# frozen objects have doubled since the last count, a forked copy of the process runs the full
# collection and reports how many objects it found unreachable, while the worker's loop goes on.
# Only when they are at least as many as the live ones does the worker run that collection
# itself: a pause as long as before, but only for garbage as large as the state, so leaked
# cycles still hold at most about what the state does. Growth of the open units alone (the
# 14-day funnel's 1.6 s pause that freed 264 objects) costs a fork and a child's CPU, not a stall.
SWEEP_WHEN_GROWN = 2
SWEEP_CHECK_EVERY_S = 10.0
# A child that has not answered by then is killed: a finalizer it ran may wait on a lock that
# another thread of the worker held at the fork.
GARBAGE_COUNT_TIMEOUT_S = 300.0
_swept_size = [0]  # the frozen objects after the last full collection
_frozen_estimate = [0]  # see _freeze_survivors


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After each collection, what survived it leaves the collector's generations
    (``gc.freeze``, a constant-time move): open sessions live for minutes to days, and walking
    them again in the older generations held the event loop 0.4-0.6 s at a time. It also keeps
    ``frozen_estimate`` (``gc.get_freeze_count()`` walks the frozen list: 0.1-0.4 s at a
    million objects in the worker): the young count at a collection's start (tracked objects
    allocated net of those freed since the last one) less what it collected."""
    if phase == "start":
        _frozen_estimate[0] += gc.get_count()[0]
    else:
        _frozen_estimate[0] -= info["collected"]
        gc.freeze()


def frozen_estimate() -> int:
    """About how many objects are frozen, in constant time (exact after each count). Never
    under: the young count also counts containers a collection then untracks (tuples of
    atoms), and frees it cannot take below zero, so a count comes at a doubling or sooner."""
    return _frozen_estimate[0]


def tune_garbage_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what exists now (modules, the app) lives as long as the process
    _swept_size[0] = _frozen_estimate[0] = gc.get_freeze_count()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def sweep_frozen() -> int:
    """One full collection of every object, frozen ones included: the objects it freed."""
    gc.unfreeze()
    freed = gc.collect()  # (its callback freezes what survived again)
    _swept_size[0] = _frozen_estimate[0] = gc.get_freeze_count()  # (after 1 s or more of it)
    return freed


def _count_garbage_and_exit(answer_fd: int) -> NoReturn:
    """In a forked child: how many objects are frozen and how many the full collection the
    worker would run finds unreachable, written to ``answer_fd``. Every other descriptor is
    closed first, so a finalizer of the garbage cannot reach the worker's sockets, its event
    loop's epoll or its logs."""
    try:
        null = os.open(os.devnull, os.O_RDWR)
        for standard in (0, 1, 2):
            os.dup2(null, standard)
        os.closerange(3, answer_fd)
        os.closerange(answer_fd + 1, os.sysconf("SC_OPEN_MAX"))
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        os.write(answer_fd, f"{frozen} {gc.collect()}".encode())
    finally:
        os._exit(0)


@dataclass(frozen=True)
class SweepCheck:
    """What one step of the frozen objects' check did: a count started, a count's answer (and
    the full collection it called for), or a count given up."""

    frozen: int
    fork_s: float | None = None  # a count started: how long the fork held the worker
    garbage: int | None = None  # a count's answer: the unreachable objects the child found
    swept: int | None = None  # a full collection run here: the objects it freed
    sweep_s: float | None = None
    unanswered: bool = False  # the child was killed after GARBAGE_COUNT_TIMEOUT_S, or died


@dataclass
class FrozenSweep:
    """The frozen objects' check, one step per tick of the worker's ``gc.sweep_frozen`` timer."""

    counted_size: int = field(default_factory=lambda: _swept_size[0])
    child: int | None = None  # the counting child's pid
    answer_fd: int = -1
    started: float = 0.0
    frozen_at_fork: int = 0

    def step(self, now: float) -> SweepCheck | None:
        if self.child is not None:
            return self._collect_answer(now)
        frozen = frozen_estimate()
        if frozen <= SWEEP_WHEN_GROWN * max(self.counted_size, _swept_size[0], GC_THRESHOLDS[0]):
            return None
        read_fd, write_fd = os.pipe()
        fork_started = time.perf_counter()
        child = os.fork()
        if child == 0:
            _count_garbage_and_exit(write_fd)
        fork_s = time.perf_counter() - fork_started
        os.close(write_fd)
        self.child, self.answer_fd, self.started, self.frozen_at_fork = (
            child,
            read_fd,
            now,
            frozen,
        )
        return SweepCheck(frozen=frozen, fork_s=fork_s)

    def _collect_answer(self, now: float) -> SweepCheck | None:
        assert self.child is not None
        pid, _ = os.waitpid(self.child, os.WNOHANG)
        if pid == 0 and now - self.started < GARBAGE_COUNT_TIMEOUT_S:
            return None
        if pid == 0:
            os.kill(self.child, signal.SIGKILL)
            os.waitpid(self.child, 0)
        answer = os.read(self.answer_fd, 64) if pid != 0 else b""
        os.close(self.answer_fd)
        self.child = None
        self.counted_size = self.frozen_at_fork  # next count at the next doubling
        if not answer:  # killed, or died without answering
            return SweepCheck(frozen=self.frozen_at_fork, unanswered=True)
        frozen, garbage = (int(figure) for figure in answer.split())
        # Exact as of the fork: the estimate keeps only the growth since then.
        _frozen_estimate[0] += frozen - self.frozen_at_fork
        self.frozen_at_fork = self.counted_size = frozen
        live = frozen - garbage
        if garbage < max(live, GC_THRESHOLDS[0]):
            return SweepCheck(frozen=self.frozen_at_fork, garbage=garbage)
        sweep_started = time.perf_counter()
        swept = sweep_frozen()
        self.counted_size = _swept_size[0]
        return SweepCheck(
            frozen=self.frozen_at_fork,
            garbage=garbage,
            swept=swept,
            sweep_s=time.perf_counter() - sweep_started,
        )


def check_source_partitions(settings: Settings) -> None:
    """One hop needs co-partitioned sources: the same partition count on both topics (and
    on the state table's changelog). Says which path the worker runs."""
    from streamer.errors import ConfigError
    from streamer.kafka_io import topic_partitions

    log = logging.getLogger("streamer.worker")
    topics = (settings.clickstream_topic, settings.checkout_topic)
    counts = {topic: len(run_sync(topic_partitions(settings, topic))) for topic in topics}
    if not settings.source_keyed_by_session:
        log.info(
            "re-key path: events of %s are validated and re-keyed by session id through %s "
            "(%d partitions), event-time fronts in-band (STREAMER_SOURCE_KEYED_BY_SESSION=false)",
            ", ".join(f"{t} ({n} partitions)" for t, n in counts.items()),
            settings.rekeyed_topic,
            settings.topic_partitions,
        )
        return
    for topic, count in counts.items():
        if count != settings.topic_partitions:
            raise ConfigError(
                f"topics are not co-partitioned: {topic} has {count} partitions but "
                f"topic_partitions is {settings.topic_partitions} "
                f"({', '.join(f'{t}: {n}' for t, n in counts.items())}). One hop needs both "
                "topics keyed by session_id with the same partition count: set "
                "STREAMER_TOPIC_PARTITIONS to it, or STREAMER_SOURCE_KEYED_BY_SESSION=false to "
                "re-key through an internal topic"
            )
    log.info(
        "one hop: %s are keyed by session id with %d partitions each, processed in place",
        " and ".join(topics),
        settings.topic_partitions,
    )
