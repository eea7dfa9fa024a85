"""Notifier stage: ``funnel.alerts`` -> Slack, each alert notification exactly once.

Delivered ``event_id``s are kept in the changelogged ``delivered-alerts`` table, so after a
restart nothing already delivered is sent again. Rate limits, 5xx and network errors are
retried with a capped backoff while the worker runs (the alert's offset is not committed
meanwhile, so a restart picks it up again); an alert that cannot be delivered unchanged (4xx)
is logged with its id, counted, and kept in ``funnel.alerts.failed`` for
``streamer alerts redeliver``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from streamer.events import Alert
from streamer.metrics import Metrics
from streamer.notify.base import DeliveryOutcome, Notifier
from streamer.pipeline.input_order import ContiguousInput, InputMessage, install_contiguous_input
from streamer.pipeline.messages import SendFn
from streamer.pipeline.tables import Deliveries, confirmed_table, stopping_the_worker_on
from streamer.pipeline.topics import record_topic
from streamer.settings import Settings

__all__ = ["NotifierStage", "install"]

log = logging.getLogger(__name__)


class NotifierStage:
    def __init__(
        self,
        *,
        notifier: Notifier,
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        send_failed: SendFn,
        max_backoff_seconds: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._notifier = notifier
        self._table = table
        self._metrics = metrics
        self._send_failed = send_failed
        self._max_backoff = max_backoff_seconds
        self._sleep = sleep

    async def process(self, value: bytes, written_at: float | None = None) -> DeliveryOutcome:
        alert = Alert.model_validate_json(value)
        if alert.event_id in self._table:
            self._metrics.alert_deliveries.labels(outcome="duplicate").inc()
            return DeliveryOutcome.DELIVERED
        backoff = 1.0
        while True:
            delivery = await self._notifier.deliver(alert)
            if delivery.outcome is not DeliveryOutcome.RETRY:
                break
            self._metrics.alert_deliveries.labels(outcome="retry").inc()
            log.warning(
                "alert %s not delivered yet (%s); retrying in %.0fs",
                alert.event_id,
                delivery.detail,
                backoff,
            )
            await self._sleep(backoff)
            backoff = min(self._max_backoff, backoff * 2)
        self._metrics.alert_deliveries.labels(outcome=delivery.outcome.value).inc()
        if delivery.outcome is DeliveryOutcome.DELIVERED:
            self._table[alert.event_id] = orjson.dumps(time.time())
            if written_at is not None:
                self._metrics.alert_delivery_seconds.observe(max(0.0, time.time() - written_at))
            log.info("alert %s delivered (%s)", alert.event_id, delivery.detail)
        else:
            log.error(
                "alert %s cannot be delivered: %s; kept in the failed-alerts topic",
                alert.event_id,
                delivery.detail,
            )
            await self._send_failed(
                alert.event_id.encode(),
                orjson.dumps(
                    {
                        "reason": delivery.detail,
                        "outcome": delivery.outcome.value,
                        "alert": orjson.loads(value),
                    }
                ),
            )
        return delivery.outcome


def install(app: Any, settings: Settings, metrics: Metrics, notifier: Notifier) -> NotifierStage:
    """Wire the notifier: ``funnel.alerts`` -> Slack, refused ones to the failed topic."""
    alerts = record_topic(app, settings.alerts_topic, partitions=1)
    failed = record_topic(app, settings.failed_alerts_topic, partitions=1)

    table = confirmed_table(app, "delivered-alerts", partitions=1)
    parked = Deliveries()

    async def confirm_writes() -> None:
        await table.confirm_sent()
        await parked.confirm()

    stage = NotifierStage(
        notifier=notifier,
        table=table,
        metrics=metrics,
        send_failed=parked.sender(failed),
    )

    async def apply(message: InputMessage) -> None:
        written_at = message.timestamp_ms / 1000 if message.timestamp_ms else None
        try:
            await stage.process(message.value or b"", written_at)
        except Exception:  # an unreadable alert record: counted, logged, skipped
            metrics.alert_deliveries.labels(outcome="failed").inc()
            log.exception("notifier could not process an alert record; skipped")
        async with stopping_the_worker_on(app, "notifier could not write its state", Exception):
            await confirm_writes()

    ordered = install_contiguous_input(
        app,
        settings,
        table=table,
        topic=settings.alerts_topic,
        stage="notifier",
        apply=apply,
        metrics=metrics,
    )

    app.agent(alerts, name="notifier")(_notifier_agent(ordered))
    return stage


def _notifier_agent(ordered: ContiguousInput) -> Callable[[Any], Awaitable[None]]:
    """The notifier's Faust agent over ``funnel.alerts``."""

    async def notifier_agent(stream: Any) -> None:
        # Acked only once delivered (or parked): a worker stopped during a delivery's retries
        # delivers that alert after its restart (the delivered table drops a second copy,
        # once its write is on the broker: confirmed before the ack, as the offset commit
        # does not wait for it; so is a parked alert's record). Alerts Faust skipped are
        # read directly: none is left undelivered.
        async for event in stream.noack().events():
            await ordered.deliver(InputMessage.of(event.message))
            event.ack()

    return notifier_agent
