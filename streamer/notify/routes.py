"""Alert routes besides Slack: Alertmanager's API and a plain webhook, and the fan-out that
sends each alert through every configured route.

Alertmanager gets each funnel alert as any Prometheus alert (labels ``alertname``, ``funnel``,
``step``, ``severity``, ``kind``, ``segment`` when the drop concentrates in one; annotations
``summary``, ``runbook_url``, ``dashboard_url``), so its silences, inhibition, grouping and
receivers (PagerDuty, Opsgenie, email) work as for the rest of a team's alerts. A firing alert
is pushed with an end far ahead (nothing re-sends it as Prometheus would), a resolved one with
its end now. The webhook gets the alert record itself (``schemas/records/alert.schema.json``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import SecretStr

from streamer.escaping import alertmanager_annotation, alertmanager_label, alertmanager_name
from streamer.events import Alert
from streamer.notify.base import Delivery, DeliveryOutcome, Notifier, http_delivery

__all__ = ["AlertmanagerNotifier", "FanOutNotifier", "WebhookNotifier", "alertmanager_alert"]

# A firing alert stays active this long unless re-sent or resolved (Alertmanager's default
# resolve_timeout would end it after 5 minutes).
_FIRING_FOR = timedelta(hours=24)
_ALERT_NAMES = {
    "drop_off": "StreamerFunnelDropOff",
    "data_quality": "StreamerTrackingBroken",
    "guardrail": "StreamerExperimentGuardrail",
    "sample_ratio": "StreamerExperimentSampleRatio",
    "low_score": "StreamerSurveyLowScores",
}


def alertmanager_alert(alert: Alert, now: datetime) -> dict[str, Any]:
    """One alert in Alertmanager's API v2 shape (``POST /api/v2/alerts``). Names and event
    values go only into label and annotation text, inert and length-capped
    (:mod:`streamer.escaping`: receivers' templates do not escape them); URLs only from
    settings."""
    labels = {
        "alertname": _ALERT_NAMES[alert.kind],
        "funnel": alertmanager_name(alert.funnel),
        "step": alertmanager_name(alert.step),
        "severity": alert.severity,
        "kind": alert.kind,
    }
    if alert.experiment is not None:
        labels["experiment"] = alertmanager_label(alert.experiment)
    if alert.variant is not None:
        labels["variant"] = alertmanager_label(alert.variant)
    if alert.survey is not None:
        labels["survey"] = alertmanager_label(alert.survey)
    if alert.segment is not None:  # low score: the segment value judged
        labels["segment"] = alertmanager_label(alert.segment)
    if alert.explanations:  # the segment value holding most of the excess drops
        top = max(alert.explanations, key=lambda e: e.share_of_excess)
        labels["segment"] = alertmanager_label(f"{top.dimension}={top.value}")
    annotations = {"summary": alertmanager_annotation(alert.summary)}
    if alert.runbook_url:
        annotations["runbook_url"] = alert.runbook_url
    if alert.dashboard_url:
        annotations["dashboard_url"] = alert.dashboard_url
    ends = now if alert.state == "resolved" else now + _FIRING_FOR
    body: dict[str, Any] = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": alert.window_end.astimezone(UTC).isoformat(),
        "endsAt": ends.astimezone(UTC).isoformat(),
    }
    if alert.dashboard_url:
        body["generatorURL"] = alert.dashboard_url
    return body


class _HttpRoute:
    """One HTTP endpoint: 2xx delivered, 429/5xx/network retry, other 4xx failed."""

    def __init__(self, name: str, timeout: float) -> None:
        self._name = name
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def _post(self, url: str, body: bytes) -> Delivery:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                status = response.status
                text = (await response.text())[:100].strip()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Delivery(DeliveryOutcome.RETRY, f"{self._name}: {type(exc).__name__}")
        return http_delivery(self._name, status, text, delivered=200 <= status < 300)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AlertmanagerNotifier(_HttpRoute):
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        super().__init__("alertmanager", timeout)
        self._url = url.rstrip("/") + "/api/v2/alerts"

    async def deliver(self, alert: Alert) -> Delivery:
        import orjson

        return await self._post(
            self._url, orjson.dumps([alertmanager_alert(alert, datetime.now(UTC))])
        )


class WebhookNotifier(_HttpRoute):
    """The alert record, as JSON, to a URL of the team's own (a secret: never logged)."""

    def __init__(self, url: SecretStr, timeout: float = 10.0) -> None:
        super().__init__("webhook", timeout)
        self._url = url

    async def deliver(self, alert: Alert) -> Delivery:
        return await self._post(self._url.get_secret_value(), alert.model_dump_json().encode())


class FanOutNotifier:
    """Every route for each alert. A route that delivered is not sent the alert again while
    another is retried (remembered in memory: a restart may repeat it; Alertmanager merges
    repeats by their labels). Outcome: retry if a route asks for it, failed if one refused,
    no route if none is configured, delivered otherwise."""

    def __init__(self, routes: list[tuple[str, Notifier]]) -> None:
        self.routes = routes
        self._delivered: dict[str, set[str]] = {}

    async def deliver(self, alert: Alert) -> Delivery:
        done = self._delivered.setdefault(alert.event_id, set())
        results: list[tuple[str, Delivery]] = []
        for name, route in self.routes:
            if name in done:
                continue
            delivery = await route.deliver(alert)
            if delivery.outcome is DeliveryOutcome.DELIVERED:
                done.add(name)
            results.append((name, delivery))
        outcomes = {delivery.outcome for _, delivery in results}
        detail = "; ".join(d.detail for _, d in results)
        if DeliveryOutcome.RETRY in outcomes:
            return Delivery(DeliveryOutcome.RETRY, detail)
        self._delivered.pop(alert.event_id, None)
        if DeliveryOutcome.FAILED in outcomes:
            return Delivery(DeliveryOutcome.FAILED, detail)
        if not done:
            return Delivery(DeliveryOutcome.NO_ROUTE, detail)
        return Delivery(DeliveryOutcome.DELIVERED, ", ".join(sorted(done)))

    async def close(self) -> None:
        for _, route in self.routes:
            await route.close()
