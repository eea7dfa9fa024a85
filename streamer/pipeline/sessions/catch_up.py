"""Funnels added to a running worker: their open sessions and windows rebuilt from the input a
partition's checkpoint reflects, as if they had always been here, and the merger told from which
window on the partition's counts of them are whole."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamer.decode import DecodeLimits
from streamer.decoders import DecodedEvent, EventDecoder
from streamer.formatting import utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import NEVER
from streamer.funnel.task import Task
from streamer.funnel.windows import window_start
from streamer.pipeline.messages import SourceMessage

__all__ = ["CatchUpInput", "rebuild_added_funnels", "start_announcements"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatchUpInput:
    """How a catch-up reads a partition's input: its topics, the offsets the checkpoint
    reflects (where reading stops), an offset lookup by broker time, a direct read, and the
    worker's decoding."""

    topics: tuple[str, ...]
    offsets: Mapping[str, int]
    find_offset: Callable[[str, int, int], Awaitable[int]]
    read_range: Callable[[str, int, int, int], Awaitable[tuple[int, list[SourceMessage]]]]
    limits: DecodeLimits
    clock: Callable[[], datetime]
    decoder: EventDecoder


async def rebuild_added_funnels(
    task: Task,
    indexes: tuple[int, ...],
    source: CatchUpInput,
    *,
    lateness_ms: int,
    retention_ms: int,
) -> None:
    """The funnels ``indexes`` of ``task`` (added since its checkpoint) rebuilt: a separate task
    with only those funnels reads each input from far enough back that every attempt still
    open, and every window not final yet, starts inside it (the conversion window, a window
    and its finality lag, before the watermark), up to the checkpoint's offsets, stops at the
    checkpoint's watermark, and hands its state over."""
    partition = task.partition
    funnels = tuple(task.funnels[i] for i in indexes)
    lookback = max(
        f.definition.conversion_window_ms + f.definition.window_ms + f.definition.finality_lag_ms
        for f in funnels
    )
    from_ms = task.watermark_ms - lookback - lateness_ms
    skew_ms = round(source.limits.max_future_skew.total_seconds() * 1000)
    started = time.perf_counter()
    history = Task(funnels, partition, retention_ms=retention_ms)
    read = 0
    for topic in source.topics:
        end = source.offsets.get(topic, 0)
        start = min(end, await source.find_offset(topic, partition, from_ms - skew_ms))
        _, messages = (
            await source.read_range(topic, partition, start, end) if end > start else (0, [])
        )
        for message in messages:
            result = source.decoder.decode(
                message.value,
                topic=topic,
                received_at=message.received_at(otherwise=source.clock()),
            )
            if not isinstance(result, DecodedEvent):
                continue  # dead-lettered or ignored when it was first read
            history.offer(
                result.session_id, result.event, result.user_id, topic, result.inactivity_ms
            )
            read += 1
    history.advance(task.watermark_ms)
    task.adopt(history, indexes)
    log.info(
        "partition %d: added funnel(s) %s caught up from %d events read back to %s: "
        "%d open sessions (%.2fs)",
        partition,
        ", ".join(f.name for f in funnels),
        read,
        utc_datetime(from_ms).isoformat(timespec="milliseconds"),
        sum(
            1
            for state in task.sessions.values()
            if any(state.progress[i].attempt is not None for i in indexes)
        ),
        time.perf_counter() - started,
    )


def start_announcements(
    definitions: tuple[FunnelDefinition, ...],
    indexes: tuple[int, ...],
    partition: int,
    watermark_ms: int,
) -> list[dict[str, Any]]:
    """Records telling the merger from which window on this partition's counts of each added
    funnel are whole: the windows already final here at the hand-over were never counted here,
    and a window another partition still held open then would be merged without them. The
    merger starts the funnel at the latest of these over every partition."""
    announcements = []
    for index in indexes:
        funnel = definitions[index]
        open_from = watermark_ms - funnel.window_ms - funnel.finality_lag_ms + 1
        announcements.append(
            {
                "kind": "start",
                "partition": partition,
                "funnel": funnel.name,
                "from": window_start(open_from, funnel.window_ms) + funnel.window_ms
                if watermark_ms != NEVER
                else NEVER,
            }
        )
    return announcements
