"""The funnel core alone, no Kafka: bytes per open session and cost per event by session length.

Events take the worker's own path into the core: JSON -> ``decode_event`` (pydantic) ->
``stored_event`` (the fields the funnels read) -> ``Task.offer``; the watermark moves on as
the worker moves it, and checkpoints are taken as the worker takes them (then the dirty sets
are empty, as at rest).
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.decoders import needed_fields, stored_event
from streamer.funnel.definition import load_funnel
from streamer.funnel.session import CompiledFunnel, StoredEvent
from streamer.funnel.task import Task

from .data import CHECKOUT

__all__ = ["MemoryResult", "cost_per_event", "memory_per_session"]

_BASE_MS = round(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
_LIMITS = DecodeLimits()
_CONTEXT = {"device": "ios", "channel": "organic", "country": "DE", "utm_source": "google"}


def _funnels() -> tuple[CompiledFunnel, ...]:
    return (CompiledFunnel(load_funnel(CHECKOUT)),)


def _raw(session_id: str, seq: int, at_ms: int, landing: bool) -> bytes:
    """A contract event as a producer sends it (what ``streamer.simulate`` makes)."""
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
    event: dict[str, Any] = {
        "event_id": f"{session_id}-{seq}",
        "session_id": session_id,
        "occurred_at": moment.replace("+00:00", "Z"),
        "context": _CONTEXT,
    }
    if landing:
        event.update(
            event_type="page_view", page="/", landing=True, referrer="https://www.google.com/"
        )
    else:
        event.update(
            event_type="product_view",
            product_id=f"p{seq % 5000}",
            category="shoes",
            price=49.9,
            currency="EUR",
        )
    return orjson.dumps(event)


def _stored(raw: bytes, keep: frozenset[str], at_ms: int) -> tuple[str, StoredEvent]:
    """``raw`` through the worker's path, received by the broker 1 s after it occurred."""
    received = datetime.fromtimestamp(at_ms / 1000 + 1, tz=UTC)
    event = decode_event(raw, received_at=received, limits=_LIMITS)
    if isinstance(event, Rejection):
        raise ValueError(f"benchmark event rejected: {event.message}")
    return event.session_id, stored_event(event, keep)


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryResult:
    sessions: int
    rss_per_session: float  # resident set growth / sessions
    live_sample: int
    live_per_session: float  # tracemalloc: bytes still allocated / sessions (a sample)
    stored_per_session: float  # checkpoint record (key + JSON value)
    seconds: float


def _open_sessions(count: int) -> Iterator[Task]:
    """Yield a task, then fill it with ``count`` sessions (a landing page view and a product
    view each, 10 ms apart, one session starting every ms); the watermark follows 2 s
    behind, checkpoints every 50k sessions; at the end every buffer is drained and every
    attempt is open at product_view."""
    funnels = _funnels()
    keep = needed_fields(tuple(f.definition for f in funnels))
    task = Task(funnels, 0, retention_ms=600_000)
    yield task
    for index in range(count):
        sid = str(uuid.UUID(int=index * 7919 + 1))
        at = _BASE_MS + index
        session_id, event = _stored(_raw(sid, 1, at, landing=True), keep, at)
        task.offer(session_id, event)
        session_id, event = _stored(_raw(sid, 2, at + 10, landing=False), keep, at + 10)
        task.offer(session_id, event)
        if index % 1000 == 999:
            task.advance(at - 2000)
        if index % 50_000 == 49_999:
            task.drain()
            task.checkpoint()
    task.advance(_BASE_MS + count + 1000)
    task.drain()
    task.checkpoint()
    yield task


def _check(task: Task, sessions: int) -> None:
    open_now = sum(task.open_sessions.values())
    if len(task.sessions) != sessions or task.buffered_events or open_now != sessions:
        raise RuntimeError(
            f"expected {sessions} open sessions with empty buffers, found {len(task.sessions)} "
            f"sessions, {open_now} open attempts, {task.buffered_events} buffered events"
        )


def memory_per_session(sessions: int, live_sample: int = 100_000) -> MemoryResult:
    """Bytes per open session: resident set growth over ``sessions`` sessions (measured first,
    on a fresh heap: run it in a process of its own), then the bytes still allocated
    (tracemalloc, slow) over ``min(sessions, live_sample)`` sessions."""
    started = time.perf_counter()
    gc.collect()
    gc.disable()  # only for speed: the core makes no reference cycles (collected below anyway)
    build = _open_sessions(sessions)
    next(build)
    rss_before = _rss_bytes()
    task = next(build)
    gc.enable()
    gc.collect()
    rss = (_rss_bytes() - rss_before) / sessions
    _check(task, sessions)
    states = list(task.sessions.values())[:1000]
    # As a delta record holds a session: '"<id>":<state>,'
    stored = statistics.mean(
        len(orjson.dumps(state.session_id)) + 2 + len(orjson.dumps(state.to_json()))
        for state in states
    )
    del task, build, states
    gc.collect()

    sample = min(sessions, live_sample)
    tracemalloc.start()
    gc.disable()
    build = _open_sessions(sample)
    next(build)
    before = tracemalloc.get_traced_memory()[0]
    task = next(build)
    gc.enable()
    gc.collect()
    live = (tracemalloc.get_traced_memory()[0] - before) / sample
    tracemalloc.stop()
    _check(task, sample)
    return MemoryResult(
        sessions=sessions,
        rss_per_session=rss,
        live_sample=sample,
        live_per_session=live,
        stored_per_session=stored,
        seconds=time.perf_counter() - started,
    )


def cost_per_event(
    lengths: tuple[int, ...] = (10, 100, 1000, 2000), events: int = 100_000, tries: int = 3
) -> dict[int, float]:
    """Microseconds per event (offer + watermark advance; decoding not included) for sessions
    of each length: a landing page view, then product views 1 s apart; the watermark follows
    the newest event 120 s behind (the default lateness), so ~120 events of the session wait
    in its buffer. Best of ``tries``; it must not grow with the length."""
    funnels = _funnels()
    keep = needed_fields(tuple(f.definition for f in funnels))
    out: dict[int, float] = {}
    for length in lengths:
        count = max(1, events // length)
        prepared: list[tuple[str, StoredEvent]] = []
        at = _BASE_MS
        for session in range(count):
            sid = str(uuid.UUID(int=length * 1_000_000 + session))
            for seq in range(length):
                at += 1000
                prepared.append(_stored(_raw(sid, seq + 1, at, landing=seq == 0), keep, at))
        best = float("inf")
        for _ in range(tries):
            task = Task(funnels, 0, retention_ms=600_000)
            gc.collect()
            started = time.perf_counter()
            for session_id, event in prepared:
                task.offer(session_id, event)
                task.advance(event.at_ms - 120_000)
            best = min(best, time.perf_counter() - started)
        out[length] = best / len(prepared) * 1e6
    return out


def main() -> None:
    """``python -m benchmarks.core SESSIONS LIVE_SAMPLE OUT``: :func:`memory_per_session` in a
    fresh process (a heap that earlier work grew would hide the growth), result as JSON."""
    sessions, sample, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    out.write_bytes(orjson.dumps(asdict(memory_per_session(sessions, sample))))


if __name__ == "__main__":
    main()
