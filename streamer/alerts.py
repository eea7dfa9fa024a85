"""Re-delivering alerts that Slack refused (``funnel.alerts.failed``), after a fix.

Each parked record goes back to ``funnel.alerts`` once (a compacted ledger,
``<failed topic>.redelivered``, remembers which); the notifier skips an alert already
delivered, so nothing reaches Slack twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from streamer.errors import ConfigError
from streamer.events import Alert
from streamer.kafka_io import ensure_topics, make_producer, read_topic
from streamer.notify.base import Delivery, Notifier
from streamer.settings import Settings

__all__ = ["RedeliveryReport", "redeliver_failed_alerts", "sample_alert", "send_test_alerts"]


@dataclass
class RedeliveryReport:
    parked: int = 0
    redelivered: int = 0
    already: int = 0


async def redeliver_failed_alerts(settings: Settings, dry_run: bool = False) -> RedeliveryReport:
    ledger = f"{settings.failed_alerts_topic}.redelivered"
    await ensure_topics(
        settings, [ledger], partitions=1, configs={ledger: {"cleanup.policy": "compact"}}
    )
    done = {key for key, value in await read_topic(settings, ledger) if key and value}
    report = RedeliveryReport()
    todo: list[tuple[bytes, Alert]] = []
    for index, (_, value) in enumerate(await read_topic(settings, settings.failed_alerts_topic)):
        report.parked += 1
        record = orjson.loads(value or b"{}")
        alert = Alert.model_validate(record["alert"])
        marker = f"{index}:{alert.event_id}".encode()
        if marker in done:
            report.already += 1
            continue
        todo.append((marker, alert))
    if dry_run or not todo:
        report.redelivered = len(todo) if dry_run else 0
        return report
    producer = make_producer(settings, acks="all")
    await producer.start()
    try:
        for marker, alert in todo:
            await producer.send_and_wait(
                settings.alerts_topic,
                key=alert.alert_id.encode(),
                value=alert.model_dump_json().encode(),
            )
            await producer.send_and_wait(ledger, key=marker, value=b"1")
            report.redelivered += 1
    finally:
        await producer.stop()
    return report


def sample_alert(severity: str, now: datetime) -> Alert:
    """An alert that says it is a test, for ``streamer alerts test``: shaped as a live one."""
    minute = now.astimezone(UTC).replace(second=0, microsecond=0)
    stamp = int(minute.timestamp() * 1000)
    return Alert(
        event_id=f"test/{severity}/{stamp}/firing/{stamp}",
        alert_id=f"test/{severity}/{stamp}",
        state="firing",
        severity="page" if severity == "page" else "warning",
        funnel="test",
        step="test",
        window_start=minute - timedelta(minutes=1),
        window_end=minute,
        observed_rate=0.0,
        expected_rate=0.0,
        p_value=1.0,
        decided=0,
        dropped=0,
        excess_dropped=0.0,
        dropped_value=0.0,
        summary=f"TEST ({severity}): `streamer alerts test` checks this route; nothing is wrong",
    )


async def send_test_alerts(settings: Settings) -> list[tuple[str, Delivery]]:
    """One test alert per configured route: Slack's warning webhook, its page webhook when
    set, Alertmanager, the plain webhook; each route's outcome, never its URL."""
    from streamer.app import alert_notifier

    notifier = alert_notifier(settings)
    routes = dict(notifier.routes)
    now = datetime.now(UTC)
    sends: list[tuple[str, str, Notifier]] = []
    if settings.slack_webhook_url is not None:
        sends.append(("slack warning", "warning", routes["slack"]))
    if settings.slack_page_webhook_url is not None:
        sends.append(("slack page", "page", routes["slack"]))
    sends += [(name, "warning", route) for name, route in notifier.routes if name != "slack"]
    if not sends:
        raise ConfigError(
            "no alert route is configured: set STREAMER_SLACK_WEBHOOK_URL (and "
            "STREAMER_SLACK_PAGE_WEBHOOK_URL for pages), STREAMER_ALERTMANAGER_URL or "
            "STREAMER_ALERT_WEBHOOK_URL"
        )
    try:
        return [(name, await route.deliver(sample_alert(s, now))) for name, s, route in sends]
    finally:
        await notifier.close()
