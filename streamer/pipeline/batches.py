"""An agent's input in batches: the sessions and re-key agents take their messages this way
([decision 0006](../../docs/decisions/0006-sessions-agent-batches.md))."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from streamer.metrics import Metrics
from streamer.pipeline.messages import SourceMessage, source_message

__all__ = ["BATCH_MAX_MESSAGES", "BATCH_SLICE_S", "BATCH_WITHIN_S", "current_messages"]

# The agent takes its input in batches of at most this many messages, or what came within
# this long: a batch pays Faust's per-message wake-ups once, and stays short beside the 1 s
# timer and a checkpoint's interval.
BATCH_MAX_MESSAGES = 500
BATCH_WITHIN_S = 0.1
# A batch lets the event loop run this often: 500 messages took 40-75 ms in one piece on a
# loaded 2-core machine.
BATCH_SLICE_S = 0.01


async def current_messages(
    app: Any, stream: Any, metrics: Metrics
) -> AsyncIterator[tuple[SourceMessage, Callable[[], Any]]]:
    """Each message of ``stream`` (taken in batches, without acks) with its ack. A batch
    collected across a rebalance may hold messages fetched before it (Faust clears a stream's
    buffer then, not a take's list): those are refused, neither handed over nor acked, and
    their partition's new owner reads them from the committed offset, or this worker's gap
    read does when it keeps the partition."""
    async for events in stream.noack_take(BATCH_MAX_MESSAGES, within=BATCH_WITHIN_S):
        ran_at = time.perf_counter()
        for event in events:
            message = event.message
            if message.generation_id != app.consumer_generation_id:
                metrics.revoked_messages.inc()
                continue
            yield source_message(message), event.ack
            if time.perf_counter() - ran_at >= BATCH_SLICE_S:
                await asyncio.sleep(0)  # timers, heartbeats and fetches run too
                ran_at = time.perf_counter()
