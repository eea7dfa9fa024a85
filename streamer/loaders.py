"""Replaying recorded events through Kafka: the OTTO sample mapping and a keyed producer.

The worker treats replayed events like live ones: windows become final as the watermark
passes them, and sessions still inside their timeouts when the input ends stay open.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from streamer.errors import InputFileError
from streamer.kafka_io import make_producer
from streamer.settings import Settings
from streamer.simulate import topic_for

__all__ = ["OTTO_EVENT_TYPES", "otto_events", "replay_events"]

OTTO_EVENT_TYPES = {"clicks": "product_view", "carts": "add_to_cart", "orders": "order_placed"}


def otto_events(path: Path) -> Iterator[dict[str, Any]]:
    """The OTTO session sample as contract events (clicks -> product_view, carts ->
    add_to_cart, orders -> order_placed), in the file's order. A line that is not an OTTO
    session is an :class:`InputFileError` naming the file and line."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield from _otto_session(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise InputFileError(f"{path}:{number}: not JSON ({exc})") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise InputFileError(
                    f"{path}:{number}: not an OTTO session line "
                    f'{{"session": id, "events": [{{"aid", "ts" (epoch ms), "type"}}]}} '
                    f"({type(exc).__name__}: {exc})"
                ) from None


def _otto_session(session: Any) -> list[dict[str, Any]]:
    session_id = f"otto-{session['session']}"
    events = []
    for index, raw in enumerate(session["events"]):
        event_type = OTTO_EVENT_TYPES[raw["type"]]
        event: dict[str, Any] = {
            "event_id": f"{session_id}-{index}",
            "event_type": event_type,
            "session_id": session_id,
            "occurred_at": int(raw["ts"]),
            "context": {"channel": "otto"},
        }
        product = f"aid-{raw['aid']}"
        if event_type == "order_placed":
            event.update(order_id=f"{session_id}-o{index}", value=0.0, currency="EUR")
        else:
            event["product_id"] = product
        events.append(event)
    return events


async def replay_events(settings: Settings, events: Iterable[dict[str, Any]]) -> int:
    """Produce contract events to their source topics, keyed by session id, in the given order."""
    producer = make_producer(settings, acks="all", linger_ms=10)
    await producer.start()
    count = 0
    try:
        pending = []
        for event in events:
            pending.append(
                await producer.send(
                    topic_for(settings, event["event_type"]),
                    key=str(event["session_id"]).encode(),
                    value=orjson.dumps(event),
                )
            )
            count += 1
        for future in pending:
            await future
    finally:
        await producer.stop()
    return count
