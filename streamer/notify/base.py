"""What a notifier promises: deliver one alert, and say how it went."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from streamer.events import Alert

__all__ = ["Delivery", "DeliveryOutcome", "Notifier", "http_delivery"]


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # worth trying again later (rate limit, 5xx, network)
    FAILED = "failed"  # cannot succeed unchanged (invalid_payload, channel_not_found...)
    NO_ROUTE = "no_route"  # no destination configured for this severity


@dataclass(frozen=True)
class Delivery:
    outcome: DeliveryOutcome
    detail: str = ""  # never contains a webhook URL


def http_delivery(what: str, status: int, body: str, *, delivered: bool) -> Delivery:
    """An HTTP answer as a delivery: a 429 or a 5xx is worth retrying; any other refusal cannot
    succeed unchanged. ``what`` names the route (never its URL)."""
    if delivered:
        return Delivery(DeliveryOutcome.DELIVERED, what)
    detail = f"{what} answered {status} {body}"
    if status == 429 or status >= 500:
        return Delivery(DeliveryOutcome.RETRY, detail)
    return Delivery(DeliveryOutcome.FAILED, detail)


class Notifier(Protocol):
    async def deliver(self, alert: Alert) -> Delivery: ...

    async def close(self) -> None: ...
