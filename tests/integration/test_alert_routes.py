"""Funnel alerts routed through the real Alertmanager (Debian's binary, the repository's
alertmanager.yml) with the Slack-like server behind it: a page reaches the pages receiver with
its labels, and its resolution follows. No Kafka: the worker's notifier is called directly."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from streamer.alerts import sample_alert
from streamer.app import alert_notifier
from streamer.notify.base import DeliveryOutcome
from streamer.settings import load_settings
from streamer.testing_slack import FakeSlack
from tests.integration.test_ops_stack import PAGES_TOKEN, write_alertmanager_config
from tests.support.ops_servers import Alertmanager


def _texts(slack: FakeSlack, token: str) -> list[str]:
    return [str(r.payload) for r in slack.requests if r.token == token and r.status == 200]


async def test_a_funnel_page_goes_through_alertmanager_and_resolves(tmp_path: Path) -> None:
    slack = FakeSlack(min_interval=0).start()
    (tmp_path / "secrets").mkdir()
    write_alertmanager_config(tmp_path / "alertmanager.yml", tmp_path / "secrets", slack)
    alertmanager = Alertmanager(tmp_path / "alertmanager.yml", tmp_path / "am", tmp_path / "am.log")
    alertmanager.start()
    try:
        settings = load_settings(alertmanager_url=alertmanager.url)
        notifier = alert_notifier(settings)
        page = sample_alert("page", datetime.now(UTC)).model_copy(
            update={"funnel": "checkout", "step": "payment->order", "summary": "payments drop"}
        )
        try:
            firing = await notifier.deliver(page)
            assert firing.outcome is DeliveryOutcome.DELIVERED, firing.detail
            assert firing.detail == "alertmanager"  # Slack itself has no webhook here
            (held,) = alertmanager.get_json("/api/v2/alerts")
            assert (
                held["labels"].items()
                >= {
                    "alertname": "StreamerFunnelDropOff",
                    "funnel": "checkout",
                    "step": "payment->order",
                    "severity": "page",
                }.items()
            )
            deadline = time.monotonic() + 30
            while not _texts(slack, PAGES_TOKEN) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            (message,) = _texts(slack, PAGES_TOKEN)
            assert "[PAGE] StreamerFunnelDropOff" in message
            assert "payments drop" in message

            resolved = page.model_copy(update={"state": "resolved", "event_id": "resolved/1"})
            assert (await notifier.deliver(resolved)).outcome is DeliveryOutcome.DELIVERED
            deadline = time.monotonic() + 30
            while len(_texts(slack, PAGES_TOKEN)) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert "[resolved] StreamerFunnelDropOff" in _texts(slack, PAGES_TOKEN)[-1]
        finally:
            await notifier.close()
    finally:
        alertmanager.stop()
        slack.stop()
