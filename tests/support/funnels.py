from __future__ import annotations

from typing import Any

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import StoredEvent

MIN = 60_000


def funnel(**overrides: Any) -> FunnelDefinition:
    spec: dict[str, Any] = {
        "name": "shop",
        "conversion_window": "1h",
        "window": "1m",
        "stages": [
            {"name": "landing", "event_type": "page_view", "where": {"landing": True}},
            {"name": "cart", "event_type": "add_to_cart", "timeout": "10m"},
            {"name": "checkout", "event_type": "checkout_started", "timeout": "5m"},
            {"name": "order", "event_type": "order_placed", "where": {"value": {"gt": 0}}},
        ],
        "segments": {"device": {"cap": 5}, "payment_method": {"cap": 5}},
    }
    spec.update(overrides)
    return FunnelDefinition.model_validate(spec)


def ev(at_ms: int, event_type: str, event_id: str | None = None, **fields: Any) -> StoredEvent:
    defaults: dict[str, Any] = {}
    if event_type == "page_view":
        defaults["landing"] = True
    if event_type == "order_placed":
        defaults["value"] = 10.0
    defaults.update(fields)
    return StoredEvent(at_ms, event_id or f"{event_type}@{at_ms}", event_type, defaults)
