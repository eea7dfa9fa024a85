"""The alert-quality harness's incidents as expectations for the live pipeline.

``benchmarks.alert_quality`` plants incidents in its simulated shop (``Shop``): payments of one
method failing (a segment incident) or everyone's failing (a step incident) from a known moment.
Here the same generator's traffic, with the same incidents, runs through a real worker on the
real broker (default settings, the harness's funnel, Slack wired), and the alerts the worker
publishes are held to what the generator planted: the step its failing payments break, the
payment method it broke named first, found within the harness's detection bound of the onset,
nothing else firing, and quiet traffic firing nothing. No expectation comes from streamer's own
core or detector.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from benchmarks.alert_quality import CHECKOUT, EPOCH_MS, INCIDENTS, MINUTE, Incident, Shop
from streamer.app import topic_plan
from streamer.events import Alert
from streamer.funnel.session import StoredEvent
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.settings import Settings
from streamer.testing import WorkerProcess
from streamer.testing_slack import FakeSlack
from tests.support.alert_pipeline import (
    DETECTION_BOUND_MINUTES,
    alerts_on_topic,
    routes,
    run_pipeline,
)

# The harness's shop day 0 moved to yesterday (whole days: the hour of day, which sets the
# traffic's volume, stays; yesterday: within the worker's 7-day event age, and in the past).
_TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
SHIFT_MS = round((_TODAY - timedelta(days=1)).timestamp() * 1000) - EPOCH_MS
# The incidents start at 14:00 (INCIDENTS): sessions start from 13:20, so the payment step's
# baseline holds its 500 final sessions (about 40 a minute reach it, decided 10 minutes on)
# well before the onset, and until 14:10, past the longest bound.
TRAFFIC_FROM = 13 * 60 + 20  # minutes of day 0
TRAFFIC_TO = 14 * 60 + 10
# Shop.session fails apple_pay's payments in a segment incident (checked on the traffic below).
BROKEN_METHOD = "apple_pay"
PEAK_PER_MINUTE = 300.0  # the harness's --peak


def contract_event(session_id: str, stored: StoredEvent) -> dict[str, Any]:
    """The generator's event as a producer sends it: its fields, and what the contract requires
    besides (page, product, currency, order id, failure reason), which no stage reads."""
    fields = stored.fields
    event: dict[str, Any] = {
        "event_id": stored.event_id,
        "event_type": stored.event_type,
        "session_id": session_id,
        "occurred_at": stored.at_ms + SHIFT_MS,
        "context": {k.removeprefix("context."): v for k, v in fields.items() if "." in k},
        **{k: v for k, v in fields.items() if "." not in k},
    }
    required: dict[str, dict[str, Any]] = {
        "page_view": {"page": "/"},
        "product_view": {"product_id": "p-1"},
        "add_to_cart": {"product_id": "p-1"},
        "checkout_started": {"currency": "EUR"},
        "payment_submitted": {"currency": "EUR"},
        "payment_failed": {"failure_reason": "declined"},
        "order_placed": {"currency": "EUR", "order_id": f"o-{stored.event_id}"},
    }
    return event | required[stored.event_type]


def shop_traffic(seed: int, incident: Incident | None) -> list[dict[str, Any]]:
    """Every session the harness's shop starts between TRAFFIC_FROM and TRAFFIC_TO (each with
    all its events), in event-time order."""
    shop = Shop(seed, PEAK_PER_MINUTE, incident)
    events = [
        contract_event(session_id, stored)
        for minute in range(TRAFFIC_FROM, TRAFFIC_TO)
        for _, session_id, stored in shop.minute(EPOCH_MS + minute * MINUTE)
    ]
    return sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))


def payment_outcomes(events: list[dict[str, Any]], since_ms: int) -> dict[str, float]:
    """Per payment method, the share of payments after ``since_ms`` that ended in an order."""
    submitted: dict[str, int] = {}
    ordered: dict[str, int] = {}
    for event in events:
        if event["occurred_at"] < since_ms or "payment_method" not in event:
            continue
        method = event["payment_method"]
        if event["event_type"] == "payment_submitted":
            submitted[method] = submitted.get(method, 0) + 1
        elif event["event_type"] == "order_placed":
            ordered[method] = ordered.get(method, 0) + 1
    return {method: ordered.get(method, 0) / count for method, count in submitted.items()}


def watermark_ms(alert: Alert) -> int:
    """The watermark of the evaluation that decided the alert (the end of its event id)."""
    return int(alert.event_id.rsplit("/", 1)[1])


def timeline(alerts: list[Alert], since_ms: int) -> list[str]:
    """Each alert as its state, kind, step and watermark in minutes from ``since_ms``."""
    return [
        f"{a.state} {a.kind} {a.step} at {(watermark_ms(a) - since_ms) / MINUTE:+.0f} min"
        for a in alerts
    ]


SCENARIOS = [(1, "healthy"), (2, "segment"), (3, "step")]  # seeds as tests/unit/test_alert_quality


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("seed", "scenario"), SCENARIOS, ids=[s for _, s in SCENARIOS])
async def test_the_live_worker_finds_the_planted_incident(
    settings: Settings, tmp_path: Path, slack: FakeSlack, seed: int, scenario: str
) -> None:
    config = settings.model_copy(update={"funnels": (CHECKOUT,), **routes(slack)})
    await ensure_topic_plan(config, topic_plan(config))
    incident = INCIDENTS.get(scenario)
    events = shop_traffic(seed, incident)
    traffic_end_ms = EPOCH_MS + SHIFT_MS + TRAFFIC_TO * MINUTE
    if incident is not None:  # the traffic outlasts the harness's bound
        bound_ms = DETECTION_BOUND_MINUTES[scenario] * MINUTE
        assert TRAFFIC_FROM * MINUTE < incident.start_ms < TRAFFIC_TO * MINUTE - bound_ms
    last_ms = max(e["occurred_at"] for e in events)
    # Closing events once every window holding traffic is final (its longest step, 30 min).
    closing = datetime.fromtimestamp((last_ms + 40 * MINUTE) / 1000, tz=UTC)
    assert closing < datetime.now(UTC)
    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        await run_pipeline(config, events, worker, min_finals=50, closing=closing)
        published = alerts_on_topic(await read_topic(config, config.alerts_topic))
    # Every boundary up to the closing events is judged: the incident's repeat and
    # resolution come as its last sessions end, after the traffic; nothing else may fire.
    firing = [a for a in published if a.state == "firing"]
    if incident is None:
        assert firing == [], timeline(published, traffic_end_ms)
        return
    onset_ms = EPOCH_MS + SHIFT_MS + incident.start_ms
    # Quiet until the onset, then one alert, on the planted step, within the harness's bound.
    assert [(a.kind, a.step) for a in firing] == [("drop_off", incident.step)], (
        f"every alert published, in minutes from the onset: {timeline(published, onset_ms)}"
    )
    [alert] = firing
    latency_ms = watermark_ms(alert) - onset_ms
    assert 0 <= latency_ms <= bound_ms, f"found {latency_ms / MINUTE:.1f} min after the onset"
    if scenario == "segment":
        # The generator broke one method: its payments mostly fail, the others' do not.
        rates = payment_outcomes(events, onset_ms)
        assert rates[BROKEN_METHOD] < 0.5 < min(r for m, r in rates.items() if m != BROKEN_METHOD)
        named = alert.explanations[0]
        assert (named.dimension, named.value) == ("payment_method", BROKEN_METHOD), alert.summary
        assert named.observed_rate > named.expected_rate
