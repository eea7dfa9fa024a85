"""Slack incoming webhooks: one message per alert, routed by severity, paced, retried.

- ``text`` is always set (the notification fallback); ``blocks`` carry the layout.
- slack_sdk's async webhook client retries only connection errors by default, and consults
  its retry handlers only for 429 and exceptions: we add its rate-limit handler (honours
  ``Retry-After``) and retry 5xx and network errors here with a short backoff; what still
  fails is reported as ``retry`` for the caller's own (longer) backoff.
- 4xx bodies such as ``invalid_payload``, ``channel_not_found``, ``no_service``,
  ``channel_is_archived``, ``action_prohibited``, ``invalid_token`` cannot succeed unchanged:
  ``failed``.
- Webhook URLs are secrets: only their route name ("page", "warning") ever reaches a log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import aiohttp
from pydantic import SecretStr
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.webhook.async_client import AsyncWebhookClient

from streamer.escaping import (
    SLACK_TEXT_CHARS,
    cut,
    slack_code,
    slack_link,
    slack_mrkdwn,
    slack_plain,
)
from streamer.events import Alert
from streamer.formatting import percent
from streamer.notify.base import Delivery, DeliveryOutcome, http_delivery

__all__ = ["SlackNotifier", "slack_message", "summary_mrkdwn"]

log = logging.getLogger(__name__)
# slack_sdk formats request URLs into its debug messages whenever its logger's *own* level is
# DEBUG or unset: give its clients a logger pinned to WARNING, so the URL is never formatted.
_SDK_LOG = logging.getLogger("streamer.notify.slack_sdk")
_SDK_LOG.setLevel(logging.WARNING)
logging.getLogger("slack_sdk").setLevel(logging.WARNING)

_EMOJI = {"firing": ":rotating_light:", "repeat": ":warning:", "resolved": ":white_check_mark:"}


def slack_message(alert: Alert) -> dict[str, Any]:
    """``text`` (fallback) and Block Kit ``blocks`` for one alert.

    Event values (segment values, and the summary that quotes them) are untrusted: they reach
    Slack only as ``plain_text`` or inside code spans (:mod:`streamer.escaping`), never as
    markup, a mention or a link; ``mrkdwn`` texts are sent ``verbatim`` (no automatic links);
    links come from settings only. The fallback ``text``, which Slack parses as ``mrkdwn``
    and shows in notifications, is the same escaped summary."""
    head, fields = _head_and_fields(alert)
    summary = summary_mrkdwn(alert)
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": slack_plain(head, 150), "emoji": True},
        },
        {"type": "section", "text": _mrkdwn(summary)},
        {"type": "section", "fields": [_mrkdwn(f) for f in fields]},
    ]
    if alert.explanations:
        lines = [
            f"• {slack_code(f'{e.dimension}={e.value}')}: {e.share_of_excess:.0%} of excess "
            f"({percent(e.observed_rate)} vs {percent(e.expected_rate)}, {e.decided} sessions)"
            for e in alert.explanations
        ]
        blocks.append({"type": "section", "text": _mrkdwn("*Where*\n" + "\n".join(lines))})
    links = [
        slack_link(url, name)
        for name, url in (("Dashboard", alert.dashboard_url), ("Runbook", alert.runbook_url))
        if url
    ]
    context = (
        f"alert {slack_code(alert.alert_id, 200)} · severity {alert.severity} · window "
        f"{alert.window_start:%Y-%m-%d %H:%M} to {alert.window_end:%H:%M} UTC"
    )
    blocks.append({"type": "context", "elements": [_mrkdwn(" · ".join([context, *links]))]})
    return {"text": f"{slack_mrkdwn(head)}. {summary}", "blocks": blocks}


def _head_and_fields(alert: Alert) -> tuple[str, list[str]]:
    """The header (plain text, before escaping) and the ``mrkdwn`` fields of the alert's kind:
    what went silent for a data-quality alert, the rates and excess for a drop-off."""
    state = {"firing": "FIRING", "repeat": "STILL FIRING", "resolved": "RESOLVED"}[alert.state]
    if alert.kind == "data_quality":
        silent = ", ".join(alert.silent_event_types)
        what = f"topic {alert.silent_topic}" if alert.silent_topic else silent
        head = f"{_EMOJI[alert.state]} [{state}] {alert.funnel}: tracking, {what} silent"
        return head, [
            f"*Silent*\n{slack_mrkdwn(silent)}",
            f"*Expected meanwhile*\n{alert.expected_events or 0:.0f} events",
            f"*Steps not judged*\n{slack_mrkdwn(', '.join(alert.held_steps) or 'none')}",
        ]
    if alert.kind == "guardrail" and len(alert.difference) == 3:
        estimate, low, high = (100 * x for x in alert.difference)
        head = (
            f"{_EMOJI[alert.state]} [{state}] {alert.funnel}: experiment {alert.experiment}, "
            f"{alert.variant} hurts {alert.step}"
        )
        return head, [
            f"*Variant {slack_mrkdwn(alert.variant or '')}*\n{percent(alert.observed_rate)} of "
            f"{alert.decided} decided attempts",
            f"*Control {slack_mrkdwn(alert.control or '')}*\n{percent(alert.expected_rate)}",
            f"*Difference*\n{estimate:+.1f} points ({low:+.1f} to {high:+.1f})",
            f"*Always-valid p*\n{alert.p_value:.1e} (alpha {alert.alpha or 0:.3g})",
        ]
    if alert.kind == "low_score":
        where = f"{alert.survey} at {alert.step}" + (f", {alert.segment}" if alert.segment else "")
        head = f"{_EMOJI[alert.state]} [{state}] {alert.funnel}: low scores, {where}"
        return head, [
            f"*Low share now*\n{percent(alert.observed_rate)} ({alert.dropped} of "
            f"{alert.decided} answers)",
            f"*Before*\n{percent(alert.expected_rate)}",
            f"*Segment*\n{slack_mrkdwn(alert.segment or 'all answers at the stage')}",
            f"*p*\n{alert.p_value:.1e}",
        ]
    if alert.kind == "sample_ratio":
        head = (
            f"{_EMOJI[alert.state]} [{state}] {alert.funnel}: experiment {alert.experiment}, "
            "sample-ratio mismatch"
        )
        return head, [
            f"*{slack_mrkdwn(variant)}*\n{count} exposed (intended "
            f"{percent(alert.intended_split.get(variant, 0.0))})"
            for variant, count in alert.exposures.items()
        ]
    head = f"{_EMOJI[alert.state]} [{state}] {alert.funnel}: {alert.step} drop-off"
    return head, [
        f"*Observed*\n{percent(alert.observed_rate)} of {alert.decided} decided sessions",
        f"*Expected*\n{percent(alert.expected_rate)}",
        f"*Excess drops*\n{alert.excess_dropped:.0f} (p={alert.p_value:.1e})",
        f"*Cart value dropped*\n{alert.dropped_value:,.2f}",
    ]


def summary_mrkdwn(alert: Alert) -> str:
    """The alert's summary for ``mrkdwn``: the segment values it quotes (``dimension=value``,
    from ``explanations``) as code spans (:func:`slack_code`), the rest, names and numbers
    written by streamer and the operator, escaped as operator text (:func:`slack_mrkdwn`)."""
    quoted = sorted({f"{e.dimension}={e.value}" for e in alert.explanations}, key=len)
    if not quoted:
        return slack_mrkdwn(alert.summary)
    # longest first, so that a value containing another one is quoted whole
    pattern = re.compile("|".join(re.escape(q) for q in reversed(quoted)))
    parts: list[str] = []
    at = 0
    for match in pattern.finditer(alert.summary):
        parts += [slack_mrkdwn(alert.summary[at : match.start()]), slack_code(match.group())]
        at = match.end()
    parts.append(slack_mrkdwn(alert.summary[at:]))
    return cut("".join(parts), SLACK_TEXT_CHARS)


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: Slack turns no URL-like or channel-like name into a link by itself
    return {"type": "mrkdwn", "text": text, "verbatim": True}


class _Route:
    """One webhook: its client and its pace (Slack allows about one message a second)."""

    def __init__(
        self,
        name: str,
        url: SecretStr,
        session: aiohttp.ClientSession,
        timeout: float,
        max_attempts: int,
        min_interval: float,
    ) -> None:
        self.name = name
        self.client = AsyncWebhookClient(
            url.get_secret_value(),
            timeout=int(timeout),
            session=session,
            logger=_SDK_LOG,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(max_retry_count=max_attempts - 1),
                AsyncRateLimitErrorRetryHandler(max_retry_count=max_attempts - 1),
            ],
        )
        self.min_interval = min_interval
        self.lock = asyncio.Lock()
        self.last_sent = 0.0


class SlackNotifier:
    def __init__(
        self,
        *,
        webhook_url: SecretStr | None,
        page_webhook_url: SecretStr | None = None,
        timeout: float = 10.0,
        max_attempts: int = 8,
        min_interval: float = 1.1,
    ) -> None:
        self._default_url = webhook_url
        self._page_url = page_webhook_url
        self._options = (timeout, max_attempts, min_interval)
        self._session: aiohttp.ClientSession | None = None
        self._routes: dict[str, _Route] = {}

    def _route(self, severity: str) -> _Route | None:
        """The on-call webhook for pages when it is set, the default webhook otherwise."""
        has_page = self._page_url is not None and bool(self._page_url.get_secret_value())
        name = "page" if severity == "page" and has_page else "default"
        url = self._page_url if name == "page" else self._default_url
        if url is None or not url.get_secret_value():
            return None
        route = self._routes.get(name)
        if route is None:
            if self._session is None:
                self._session = aiohttp.ClientSession()
            timeout, attempts, interval = self._options
            route = self._routes[name] = _Route(
                name, url, self._session, timeout, attempts, interval
            )
        return route

    async def deliver(self, alert: Alert) -> Delivery:
        route = self._route(alert.severity)
        if route is None:
            return Delivery(DeliveryOutcome.NO_ROUTE, f"no webhook configured for {alert.severity}")
        message = slack_message(alert)
        attempts = self._options[1]
        delivery = Delivery(DeliveryOutcome.RETRY)
        for attempt in range(attempts):
            delivery = await self._send_once(route, message)
            if delivery.outcome is not DeliveryOutcome.RETRY or attempt == attempts - 1:
                break
            await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
        return delivery

    async def _send_once(self, route: _Route, message: dict[str, Any]) -> Delivery:
        async with route.lock:  # one message at a time per webhook, paced
            wait = route.last_sent + route.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await route.client.send(text=message["text"], blocks=message["blocks"])
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return Delivery(
                    DeliveryOutcome.RETRY, f"{route.name} webhook: {type(exc).__name__}"
                )
            finally:
                route.last_sent = time.monotonic()
        body = (response.body or "").strip()[:100]
        status = response.status_code
        return http_delivery(f"{route.name} webhook", status, body, delivered=status == 200)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
