"""A notifier that keeps what it was given (tests, dry runs)."""

from __future__ import annotations

from streamer.events import Alert
from streamer.notify.base import Delivery, DeliveryOutcome

__all__ = ["RecordingNotifier"]


class RecordingNotifier:
    def __init__(self) -> None:
        self.delivered: list[Alert] = []

    async def deliver(self, alert: Alert) -> Delivery:
        self.delivered.append(alert)
        return Delivery(DeliveryOutcome.DELIVERED)

    async def close(self) -> None:
        return None
