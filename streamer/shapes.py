"""Shop events in the shapes real shops send: Segment track/page calls and PostHog captures.

The simulator's events (streamer's own contract, ``streamer.simulate``) rewritten field by
field, with the vendors' own names and paths (as the presets in ``streamer/plan/presets/`` cite
them), and a few events of the shop's own (:data:`SHOP_EVENTS`, to declare beside a preset).
``streamer simulate --shape`` sends them live or writes them as an export; the tests compare
what a worker makes of them with the SQL oracle.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["SHAPERS", "SHOP_EVENTS", "Shaper", "posthog", "segment", "shape_event"]

Shaper = Callable[[dict[str, Any]], dict[str, Any]]

# The shop's own events, declared in a second plan file beside the vendor's preset.
SHOP_EVENTS = """\
events:
  Shipping Chosen:
    stage: decision
    properties:
      shipping_method: {type: enum, values: [standard, express, pickup], required: true}
  Payment Declined:
    stage: decision
    properties:
      payment_method: {type: string, max_length: 64}
      failure_reason: {type: string, max_length: 64}
  Referral Sent:
    stage: advocacy
    properties:
      referral_channel: {type: string, max_length: 64}
"""

# The contract's event types -> (the vendor's or the shop's event name, its properties).
_COMMON = {
    "search": ("Products Searched", ("query",)),
    "product_view": ("Product Viewed", ("product_id", "category", "price", "currency")),
    "add_to_cart": ("Product Added", ("product_id", "price", "quantity", "currency", "cart_value")),
    "remove_from_cart": ("Product Removed", ("product_id", "quantity", "cart_value")),
    "checkout_started": ("Checkout Started", ("currency", "item_count")),
    "shipping_submitted": ("Shipping Chosen", ("shipping_method",)),
    "payment_submitted": ("Payment Info Entered", ("payment_method", "amount", "currency")),
    "payment_failed": ("Payment Declined", ("payment_method", "failure_reason", "amount")),
    "order_placed": ("Order Completed", ("order_id", "currency", "payment_method")),
    "review_submitted": ("Product Reviewed", ("product_id", "rating")),
    "referral_sent": ("Referral Sent", ("referral_channel",)),
}


def _iso(event: dict[str, Any]) -> str:
    moment = event["occurred_at"]
    if isinstance(moment, int):
        return datetime.fromtimestamp(moment / 1000, tz=UTC).isoformat(timespec="milliseconds")
    return str(moment)


def _properties(event: dict[str, Any]) -> dict[str, Any]:
    kind = event["event_type"]
    if kind == "page_view":
        return {"path": event["page"], "landing": event.get("landing", False)}
    _, names = _COMMON[kind]
    out = {name: event[name] for name in names if event.get(name) is not None}
    if kind == "checkout_started":
        out["value"] = event["cart_value"]  # the vendors' name for it
    if kind == "order_placed":
        out["total"] = event["value"]
    return out


def segment(event: dict[str, Any]) -> dict[str, Any]:
    """A Segment call: page calls carry ``type: page`` and no event name; sessions are the
    anonymous id (Segment has no session id)."""
    context = event.get("context") or {}
    shaped: dict[str, Any] = {
        "messageId": event["event_id"],
        "timestamp": _iso(event),
        "anonymousId": event["session_id"],
        "properties": _properties(event),
        "context": {
            "campaign": {"medium": context.get("channel"), "source": context.get("utm_source")},
            "device": {"type": context.get("device")},
        },
    }
    if event["event_type"] == "page_view":
        shaped["type"] = "page"
    else:
        shaped["type"] = "track"
        shaped["event"] = _COMMON[event["event_type"]][0]
    if event.get("user_id"):
        shaped["userId"] = event["user_id"]
    return shaped


def posthog(event: dict[str, Any]) -> dict[str, Any]:
    """A PostHog capture: ``$pageview``, the session in ``properties.$session_id``, the
    person in ``distinct_id``, context as ``$``-properties."""
    context = event.get("context") or {}
    properties = _properties(event) | {
        "$session_id": event["session_id"],
        "$device_type": context.get("device"),
        "utm_source": context.get("utm_source"),
    }
    name = "$pageview" if event["event_type"] == "page_view" else _COMMON[event["event_type"]][0]
    return {
        "event": name,
        "uuid": event["event_id"],
        "timestamp": _iso(event),
        "distinct_id": event.get("user_id") or f"anon-{event['session_id']}",
        "properties": {k: v for k, v in properties.items() if v is not None},
    }


SHAPERS: dict[str, Shaper] = {"segment": segment, "posthog": posthog}


def shape_event(shape: str, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` (the contract's) in ``shape`` (``streamer`` leaves it as it is)."""
    return event if shape == "streamer" else SHAPERS[shape](event)
