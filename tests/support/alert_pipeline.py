"""The alert scenario the end-to-end tests share: a checkout funnel, busy traffic with a
planted payment incident, the pipeline run to final windows, the same scenario through the pure
core and detector, and an end marker for "nothing more arrived"."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from pydantic import SecretStr

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.decoders import needed_fields, stored_event
from streamer.events import Alert, Event, WindowStats
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.funnel.detect import AlertDecision, FunnelDetector
from streamer.funnel.session import CompiledFunnel
from streamer.funnel.task import Task
from streamer.funnel.windows import WindowCounts, fold_segments, look_ms
from streamer.kafka_io import (
    make_consumer,
    read_topic,
    stop_consumer,
    topic_partitions,
)
from streamer.loaders import replay_events
from streamer.pipeline.detector import alert_record, tracking_alert_record
from streamer.schemas import EXAMPLES
from streamer.settings import Settings
from streamer.simulate import Incident, StepRates, TrafficModel, topic_for
from streamer.testing import WorkerProcess, produce, run_cli, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.support.kafka_waits import outputs_settled, processed
from tests.support.pipeline_run import send_closing
from tests.support.traffic import closing_messages

FUNNEL = """
name: checkout
conversion_window: 10m
window: 30s
stages:
  - {name: landing, event_type: page_view, where: {landing: true}, timeout: 30s}
  - {name: product_view, event_types: [product_view], timeout: 60s}
  - {name: cart, event_types: [add_to_cart], timeout: 45s}
  - {name: checkout, event_types: [checkout_started], timeout: 30s}
  - {name: payment, event_types: [payment_submitted], timeout: 30s}
  - {name: order, event_type: order_placed, where: {value: {gt: 0}}}
segments: {device: {cap: 6}, channel: {cap: 8}, country: {cap: 20}, payment_method: {cap: 8}}
abandonment: [cart, checkout, payment]
alerting:
  min_decided: 20
  min_baseline_decided: 150
  baseline_half_life: 300
  significance: 0.0001
  min_increase: 0.10
  cooldown: 30m
  resolve_after_windows: 2
"""
BUSY = StepRates(
    view_after_landing=0.95,
    cart_after_view=0.8,
    checkout_after_cart=0.85,
    shipping_after_checkout=0.95,
    payment_after_shipping=0.95,
)
START = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)


INCIDENT = Incident(START + timedelta(minutes=4), START + timedelta(minutes=6))


def traffic(incident: bool) -> list[dict[str, Any]]:
    incidents = (INCIDENT,) if incident else ()
    model = TrafficModel(rates=BUSY, mean_gap_seconds=3.0, incidents=incidents)
    sessions = list(model.sessions(seed=11, count=1800, start=START, sessions_per_second=2.5))
    events = [event for session in sessions for event in session]

    # A cart left alone for two minutes, then ordered after all: an abandonment, retracted.
    def at(seconds: int) -> str:
        return (START + timedelta(minutes=3, seconds=seconds)).isoformat()

    common = {"session_id": "recovered", "context": {"device": "ios"}, "user_id": "u-7"}
    events += [
        {
            **common,
            "event_id": "r1",
            "event_type": "page_view",
            "page": "/",
            "landing": True,
            "occurred_at": at(0),
        },
        {
            **common,
            "event_id": "r2",
            "event_type": "product_view",
            "product_id": "p",
            "occurred_at": at(5),
        },
        {
            **common,
            "event_id": "r3",
            "event_type": "add_to_cart",
            "product_id": "p",
            "cart_value": 59.0,
            "currency": "EUR",
            "occurred_at": at(9),
        },
        {
            **common,
            "event_id": "r4",
            "event_type": "order_placed",
            "order_id": "o",
            "value": 59.0,
            "currency": "EUR",
            "occurred_at": at(130),
        },
    ]
    # As producers send them: in time order, each up to 20 s late (within the lateness).
    rng = random.Random(5)
    jitter = {id(e): rng.uniform(0, 20) for e in events}
    return sorted(
        events,
        key=lambda e: (
            datetime.fromisoformat(str(e["occurred_at"]).replace("Z", "+00:00"))
            + timedelta(seconds=jitter[id(e)])
        ),
    )


def configure(settings: Settings, tmp_path: Path, slack: FakeSlack) -> Settings:
    funnel = tmp_path / "checkout.yaml"
    funnel.write_text(FUNNEL)
    return settings.model_copy(update={"funnels": (funnel,), "store": "memory", **routes(slack)})


def routes(slack: FakeSlack) -> dict[str, Any]:
    """The settings that send alerts to ``slack`` (warnings and pages on webhooks of their
    own), with the links an alert carries."""
    return {
        "slack_webhook_url": SecretStr(slack.url("T0/B0/warnings")),
        "slack_page_webhook_url": SecretStr(slack.url("T0/B1/oncall")),
        "dashboard_url": "https://grafana.example.com/d/funnel",
        "runbook_url": "https://wiki.example.com/runbook/drop-off",
    }


CLOSING = START + timedelta(minutes=55)  # closing events: every window final
RANGE_FROM = CLOSING - timedelta(hours=2)  # the replays read a 2 h range holding all of it


def core_alerts(config: Settings, events: list[dict[str, Any]]) -> list[Alert]:
    """The same scenario through the pure core and detector, no broker: every message decoded
    as the worker decodes it, offered to one task, then the watermark moved look by look
    to where the closing events leave the live one, the detector judging each look with
    the windows folded as the merger folds them. The alerts it would write."""
    funnel: FunnelDefinition = load_funnel(config.funnels[0])
    limits = DecodeLimits(
        max_bytes=config.max_event_bytes,
        max_future_skew=timedelta(seconds=config.max_clock_skew_seconds),
        max_age=timedelta(seconds=config.max_event_age_seconds),
    )
    messages = [(topic_for(config, e["event_type"]), orjson.dumps(e)) for e in events]
    messages += [(topic, value) for topic, _, _, value in closing_messages(config, _ms(CLOSING))]
    decoded: list[tuple[str, Event]] = []
    now = datetime.now(UTC)
    for topic, value in messages:
        event = decode_event(value, received_at=now, limits=limits)
        assert not isinstance(event, Rejection), event
        decoded.append((topic, event))
    decoded.sort(key=lambda pair: pair[1].occurred_at)
    keep = needed_fields((funnel,))
    task = Task((CompiledFunnel(funnel),), 0, retention_ms=10**12)
    for topic, event in decoded:
        task.offer(event.session_id, stored_event(event, keep), event.user_id, topic)
    detector = FunnelDetector(funnel)
    caps = [segment.cap for segment in funnel.segments]
    size, horizon = funnel.window_ms, funnel.window_ms + funnel.finality_lag_ms
    look = look_ms(size)  # window boundaries and the detector's early looks between them
    last = _ms(CLOSING) - round(config.allowed_lateness_seconds * 1000)
    windows: dict[int, WindowCounts] = {}
    alerts = []
    for boundary in range(_ms(START) - _ms(START) % size, last - last % look + 1, look):
        task.advance(boundary)
        for partial in task.drain().partials:
            windows[partial.window_start_ms] = fold_segments(partial.counts, caps)
        for decision in detector.evaluate(boundary, windows):
            if isinstance(decision, AlertDecision):
                step = decision.alert_id.split("/")[1]
                alerts.append(alert_record(funnel, step, decision, *_links(config)))
            else:
                alerts.append(tracking_alert_record(funnel, decision, *_links(config)))
        for start in [s for s in windows if s + horizon <= boundary]:
            del windows[start]
    return alerts


def cli(config: Settings, *args: str) -> str:
    """Run ``streamer ARGS`` with ``config`` as its environment; its stdout."""
    done = run_cli(config, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def input_messages(config: Settings) -> int:
    """Messages on the two input topics now."""
    assignment = [
        TopicPartition(topic, p)
        for topic in (config.clickstream_topic, config.checkout_topic)
        for p in await topic_partitions(config, topic)
    ]
    consumer = make_consumer(config, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets(assignment)).values())
    finally:
        await stop_consumer(consumer)


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def _links(config: Settings) -> tuple[str | None, str | None]:
    return config.dashboard_url, config.runbook_url


async def run_pipeline(
    config: Settings,
    events: list[dict[str, Any]],
    worker: WorkerProcess,
    min_finals: int = 20,
    closing: datetime = CLOSING,
) -> int:
    """Replay, close every window (closing events at ``closing``), and wait until the worker
    has applied all of it and published what it makes final and alerts on (at least
    ``min_finals`` final windows); returns how many final windows."""
    await replay_events(config, events)
    deadline = time.monotonic() + 300
    while processed(scrape_metrics(worker.metrics_url), config) < len(events):
        worker.assert_running()
        assert time.monotonic() < deadline, worker.log_tail()
        await asyncio.sleep(0.5)
    await send_closing(config, _ms(closing))
    # Every stage committed to the end of its input: the windows the closing events made
    # final, and the detector's alerts on every boundary they passed, are on the broker.
    await outputs_settled(config, [worker], timeout=max(30.0, deadline - time.monotonic()))
    records = await read_topic(config, config.windows_topic)
    finals = sum(1 for _, v in records if v and WindowStats.model_validate_json(v).final)
    assert finals >= min_finals, f"{finals} final windows of {len(records)} records"
    return finals


def assert_names_the_incident(alerts: list[Alert], incident: Incident) -> None:
    """What the planted incident says, independent of the core and the detector that computed
    the alerts: one firing alert, on the step its failing payments break (payment -> order),
    naming its payment method first as carrying most of the excess, on cohorts reaching into
    it and found within 3 minutes of its start; resolved (if it is) only after it ended."""
    firing = [a for a in alerts if a.state == "firing"]
    assert [a.step for a in firing] == ["payment->order"], firing
    [alert] = firing
    named = alert.explanations[0]
    assert (named.dimension, named.value) == ("payment_method", incident.payment_method)
    assert named.observed_rate > named.expected_rate
    assert named.share_of_excess > 0.5
    assert incident.start < alert.window_end <= incident.start + timedelta(minutes=3)
    resolved = [a for a in alerts if a.state == "resolved"]
    assert all(a.alert_id == alert.alert_id for a in resolved)
    end_ms = incident.end.timestamp() * 1000
    assert all(int(a.event_id.rsplit("/", 1)[1]) > end_ms for a in resolved)  # its watermark


# The alert-quality harness's detection bounds (benchmarks.alert_quality, its incidents):
# watermark minutes from an incident's onset to the first alert that names it.
DETECTION_BOUND_MINUTES = {"segment": 5, "step": 1, "silence": 5}

END_MARKER_ID = "end-marker"


def is_marker(message: dict[str, Any]) -> bool:
    return f"`{END_MARKER_ID}`" in str(message["blocks"])


async def through_end_marker(
    config: Settings, slack: FakeSlack, worker: WorkerProcess, severity: str = "warning"
) -> list[dict[str, Any]]:
    """Send an end-marker alert after everything on the alerts topic and wait until Slack
    accepted it; the messages Slack accepted before it. The notifier delivers in topic
    order, so anything else it would deliver (a copy, a late alert) is among them."""
    marker = Alert.model_validate(EXAMPLES["alert"]).model_copy(
        update={
            "alert_id": END_MARKER_ID,
            "event_id": f"{END_MARKER_ID}/firing",
            "severity": severity,
        }
    )
    await produce(
        config, [(config.alerts_topic, END_MARKER_ID.encode(), marker.model_dump_json().encode())]
    )
    deadline = time.monotonic() + 60
    while not any(is_marker(m) for m in slack.accepted):
        worker.assert_running()
        assert time.monotonic() < deadline, (
            f"the end marker never reached Slack: {slack.statuses()}"
        )
        await asyncio.sleep(0.3)
    accepted = slack.accepted
    index = next(i for i, m in enumerate(accepted) if is_marker(m))
    return accepted[:index]


def alerts_on_topic(records: list[tuple[bytes | None, bytes | None]]) -> list[Alert]:
    """The alert records, the end marker left out."""
    alerts = [Alert.model_validate_json(v or b"") for _, v in records]
    return [a for a in alerts if a.alert_id != END_MARKER_ID]
