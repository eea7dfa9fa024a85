"""Generated shop traffic in the shapes real shops send: Segment track/page calls and PostHog
captures, with a few event names and properties of the shop's own (declared in a plan file
beside the vendor's preset).

The contract events of ``tests.support.traffic`` are rewritten field by field (the names and
paths are the vendors' own, as the presets cite them); the routing to topics and the message
keys stay those of the contract event, so a session's events share a partition.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streamer.plan.load import preset_path
from streamer.settings import Settings
from streamer.simulate import topic_for
from tests.support.traffic import Dataset, closing_messages

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


@dataclass(frozen=True)
class ShapedTraffic:
    """A dataset in a vendor's shape, and the plan folder that declares it."""

    shape: str
    dataset: Dataset
    plan_dir: Path

    def messages(self, settings: Settings) -> list[tuple[str, bytes, bytes]]:
        shaper = SHAPERS[self.shape]
        return [
            (
                topic_for(settings, e["event_type"]),
                e["session_id"].encode(),
                orjson.dumps(shaper(e)),
            )
            for e in self.dataset.arrivals
        ]

    def closing(self, settings: Settings) -> list[tuple[str, int, bytes, bytes]]:
        """The closing events (page views far later, matching no stage), in this shape."""
        shaper = SHAPERS[self.shape]
        out = []
        for topic, partition, key, value in closing_messages(settings, self.dataset.closing_ms):
            event = orjson.loads(value) | {"event_type": "page_view", "page": "/closing"}
            out.append((topic, partition, key, orjson.dumps(shaper(event))))
        return out

    def documents(self) -> list[bytes]:
        """Every message value of the dataset, in arrival order (the oracle's input)."""
        shaper = SHAPERS[self.shape]
        return [orjson.dumps(shaper(e)) for e in self.dataset.arrivals]


def shaped(shape: str, dataset: Dataset, folder: Path) -> ShapedTraffic:
    """``dataset`` in ``shape``, with a plan folder: the vendor's preset, copied as a shop
    would, and a file of the shop's own events."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(preset_path(shape), folder / f"{shape}.yaml")
    (folder / "shop.yaml").write_text(SHOP_EVENTS)
    return ShapedTraffic(shape, dataset, folder)
