"""What a notifier promises: deliver one alert, and say how it went."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from streamer.events import Alert

__all__ = ["Delivery", "DeliveryOutcome", "Notifier"]


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # worth trying again later (rate limit, 5xx, network)
    FAILED = "failed"  # cannot succeed unchanged (invalid_payload, channel_not_found...)
    NO_ROUTE = "no_route"  # no destination configured for this severity


@dataclass(frozen=True)
class Delivery:
    outcome: DeliveryOutcome
    detail: str = ""  # never contains a webhook URL


class Notifier(Protocol):
    async def deliver(self, alert: Alert) -> Delivery: ...

    async def close(self) -> None: ...
