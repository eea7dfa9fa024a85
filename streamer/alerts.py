"""Re-delivering alerts that Slack refused (``funnel.alerts.failed``), after a fix.

Each parked record goes back to ``funnel.alerts`` once (a compacted ledger,
``<failed topic>.redelivered``, remembers which); the notifier skips an alert already
delivered, so nothing reaches Slack twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from streamer.events import Alert
from streamer.kafka_io import ensure_topics, make_producer, read_topic
from streamer.settings import Settings

__all__ = ["RedeliveryReport", "redeliver_failed_alerts"]


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
