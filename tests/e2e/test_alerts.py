"""The whole stack on a real broker: simulated traffic -> ingest -> sessions -> windows ->
detector -> notifier -> a local server that behaves like Slack."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import TopicPartition
from pydantic import SecretStr

from streamer.app import topic_plan
from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.escaping import slack_code
from streamer.events import Abandonment, Alert, Event, ReplayReport, WindowStats
from streamer.funnel.definition import FunnelDefinition, apply_overrides, load_funnel
from streamer.funnel.detect import AlertDecision, FunnelDetector
from streamer.funnel.session import CompiledFunnel
from streamer.funnel.task import Task
from streamer.funnel.windows import WindowCounts, fold_segments
from streamer.kafka_io import (
    ensure_topic_plan,
    make_consumer,
    read_topic,
    stop_consumer,
    topic_partitions,
)
from streamer.loaders import replay_events
from streamer.pipeline.detector import alert_record, tracking_alert_record
from streamer.pipeline.sessions import needed_fields, stored_event
from streamer.range_replay import replay_range
from streamer.schemas import EXAMPLES
from streamer.settings import Settings
from streamer.simulate import Incident, StepRates, TrafficModel, topic_for
from streamer.testing import WorkerProcess, metric, produce, run_cli, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.integration.conftest import processed
from tests.integration.pipeline_run import send_closing
from tests.traffic import closing_messages

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


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


def configure(settings: Settings, tmp_path: Path, slack: FakeSlack) -> Settings:
    funnel = tmp_path / "checkout.yaml"
    funnel.write_text(FUNNEL)
    return settings.model_copy(
        update={
            "funnels": (funnel,),
            "store": "memory",
            "slack_webhook_url": SecretStr(slack.url("T0/B0/warnings")),
            "slack_page_webhook_url": SecretStr(slack.url("T0/B1/oncall")),
            "dashboard_url": "https://grafana.example.com/d/funnel",
            "runbook_url": "https://wiki.example.com/runbook/drop-off",
        }
    )


CLOSING = START + timedelta(minutes=55)  # closing events: every window final
RANGE_FROM = CLOSING - timedelta(hours=2)  # the replays read a 2 h range holding all of it


def core_alerts(config: Settings, events: list[dict[str, Any]]) -> list[Alert]:
    """The same scenario through the pure core and detector, no broker: every message decoded
    as the worker decodes it, offered to one task, then the watermark moved window by window
    to where the closing events leave the live one, the detector judging each boundary with
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
    last = _ms(CLOSING) - round(config.allowed_lateness_seconds * 1000)
    windows: dict[int, WindowCounts] = {}
    alerts = []
    for boundary in range(_ms(START) - _ms(START) % size, last - last % size + 1, size):
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
    config: Settings, events: list[dict[str, Any]], worker: WorkerProcess, min_finals: int = 20
) -> int:
    """Replay, close every window, and wait until every window is final (at least
    ``min_finals`` of them); returns how many."""
    await replay_events(config, events)
    deadline = time.monotonic() + 300
    while processed(scrape_metrics(worker.metrics_url), config) < len(events):
        worker.assert_running()
        assert time.monotonic() < deadline, worker.log_tail()
        await asyncio.sleep(0.5)
    # Closing events 40 minutes after the traffic (and before now): every window is final.
    await send_closing(config, _ms(CLOSING))
    published = -1
    while True:  # final windows stop coming, and the detector has read all of them
        await asyncio.sleep(2)
        records = await read_topic(config, config.windows_topic)
        finals = sum(1 for _, v in records if v and WindowStats.model_validate_json(v).final)
        if finals == published and finals >= min_finals:
            return finals
        published = finals
        assert time.monotonic() < deadline, (
            f"{finals} final windows of {len(records)} records, wanted {min_finals} and "
            f"stable\n{worker.log_tail()}"
        )


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


@pytest.mark.timeout(600)  # the pipeline, then replays through the library and the command
async def test_a_payment_incident_pages_once_and_resolves_once(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack)
    await ensure_topic_plan(config, topic_plan(config))
    events = traffic(incident=True)
    funnel = load_funnel(config.funnels[0])

    async def replay_beside() -> ReplayReport:
        """A replay while the worker works through the same input: it must change nothing
        the worker publishes (checked below against the pure core) and send nothing."""
        while await input_messages(config) < len(events):
            await asyncio.sleep(0.2)
        return await replay_range(config, (funnel,), RANGE_FROM, CLOSING, run_info=False)

    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        _, beside = await asyncio.gather(run_pipeline(config, events, worker), replay_beside())
        assert beside.events.in_range == len(events)
        deadline = time.monotonic() + 60
        while len(slack.accepted) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        # Nothing else may arrive: an end marker (paging, as the incident) comes after all.
        before_marker = await through_end_marker(config, slack, worker, severity="page")
        alerts = alerts_on_topic(await read_topic(config, config.alerts_topic))
        values = scrape_metrics(worker.metrics_url)
        while metric(values, "streamer_alert_deliveries_total", outcome="delivered") < 3:
            assert time.monotonic() < deadline + 60, "the marker's delivery is not counted"
            await asyncio.sleep(0.3)  # (counted just after Slack accepted it)
            values = scrape_metrics(worker.metrics_url)
    assert [(a.state, a.step) for a in alerts] == [
        ("firing", "payment->order"),
        ("resolved", "payment->order"),
    ]
    # The live pipeline (2 topics x 4 partitions, arrival jitter, merged partials) decided
    # exactly what the pure core decides on the same scenario: same ids, same numbers.
    assert [a.model_dump() for a in alerts] == [a.model_dump() for a in core_alerts(config, events)]
    # `streamer replay` of the same range, read-only from the same topics: the same alerts,
    # the same final windows, and the same bytes when run twice.
    report = await replay_range(config, (funnel,), RANGE_FROM, CLOSING, run_info=False)
    again = await replay_range(config, (funnel,), RANGE_FROM, CLOSING, run_info=False)
    assert report.model_dump_json() == again.model_dump_json()
    assert (report.events.late, report.events.rejected) == (0, 0)
    assert report.events.in_range == len(events)
    [replayed] = report.funnels
    assert [a.model_dump() for a in replayed.alerts] == [a.model_dump() for a in alerts]
    live_finals = {
        w.window_id: w
        for w in (
            WindowStats.model_validate_json(v or b"")
            for _, v in await read_topic(config, config.windows_topic)
        )
        if w.final
    }
    replay_finals = {w.window_id: w for w in replayed.windows if w.final}
    assert len(live_finals) > 20
    assert live_finals.keys() <= replay_finals.keys()
    for window_id, live in live_finals.items():
        assert replay_finals[window_id].model_dump(exclude={"revision"}) == live.model_dump(
            exclude={"revision"}
        )
    # The command, and a what-if: an effect threshold no incident reaches removes the alerts.
    base, what_if = tmp_path / "base.json", tmp_path / "what-if.json"
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(base), "--no-run-info")  # fmt: skip
    assert (
        base.read_text()
        == json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    )
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(what_if), "--set", "alerting.min_increase=0.95")  # fmt: skip
    diff = json.loads(cli(config, "replay", "diff", str(base), str(what_if), "--json"))
    [changes] = diff["funnels"]
    assert changes["alerts_added"] == []
    assert [a["event_id"] for a in changes["alerts_removed"]] == sorted(a.event_id for a in alerts)
    assert diff["after"]["overrides"] == {"alerting.min_increase": "0.95"}
    assert all(s["conversion_before"] == s["conversion_after"] for s in changes["steps"])
    # A looser policy (re-notify every 30 s while an alert lasts) adds exactly the repeats the
    # pure core fires with that setting.
    loose = tmp_path / "loose.json"
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(loose), "--set", "alerting.cooldown=30s")  # fmt: skip
    diff = json.loads(cli(config, "replay", "diff", str(base), str(loose), "--json"))
    [changes] = diff["funnels"]
    loose_funnel = tmp_path / "loose.yaml"
    loose_funnel.write_text(
        yaml.safe_dump(apply_overrides(yaml.safe_load(FUNNEL), {"alerting.cooldown": "30s"}))
    )
    live_ids = {a.event_id for a in alerts}
    added = [
        a.event_id
        for a in core_alerts(config.model_copy(update={"funnels": (loose_funnel,)}), events)
        if a.event_id not in live_ids
    ]
    assert added, "repeats while the incident lasts"
    assert [a["event_id"] for a in changes["alerts_added"]] == sorted(added)
    assert changes["alerts_removed"] == []
    # And what the planted incident (not the core) says the alerts must be.
    assert_names_the_incident(alerts, INCIDENT)
    firing, resolved = alerts
    assert firing.alert_id == resolved.alert_id
    assert firing.severity == "page"
    assert (firing.explanations[0].dimension, firing.explanations[0].value) == (
        "payment_method",
        "paypal",
    )
    assert firing.explanations[0].share_of_excess > 0.7
    assert firing.observed_rate > firing.expected_rate + 0.1
    incident_start = START + timedelta(minutes=4)
    # The cohorts tested reach into the incident, and it was found within minutes of it.
    assert incident_start < firing.window_end <= incident_start + timedelta(minutes=3)
    texts = [m["text"] for m in before_marker]
    assert len(texts) == 2
    assert len(slack.accepted) == 3  # and the marker
    assert texts[0].startswith(":rotating_light: [FIRING] checkout: payment-&gt;order drop-off")
    assert "payment_method=paypal" in texts[0]
    assert texts[1].startswith(":white_check_mark: [RESOLVED] checkout: payment-&gt;order")
    assert {r.token for r in slack.requests if r.status == 200} == {"T0/B1/oncall"}
    assert metric(values, "streamer_alert_deliveries_total", outcome="delivered") == 2 + 1
    # The replays above sent nothing; with --notify one sends its alerts, marked as a replay.
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(tmp_path / "notified.json"), "--notify")  # fmt: skip
    replayed_texts = [m["text"] for m in slack.accepted[3:]]
    assert len(replayed_texts) == 2
    assert all("[replay " in text for text in replayed_texts)

    records = [
        Abandonment.model_validate_json(v or b"")
        for _, v in await read_topic(config, config.abandonments_topic)
    ]
    kinds = Counter((r.kind, r.stage) for r in records)
    assert kinds[("abandoned", "payment")] > 20  # the failed paypal payments
    assert kinds[("abandoned", "cart")] > 0
    recovered = [r for r in records if r.session_id == "recovered"]
    assert [(r.kind, r.stage) for r in recovered] == [("abandoned", "cart"), ("retracted", "cart")]
    assert recovered[0].cart_value == 59.0
    assert recovered[0].user_id == "u-7"
    assert recovered[1].record_id == recovered[0].abandonment_id + "/retracted"
    assert len({r.record_id for r in records}) == len(records)


async def test_a_quiet_stream_raises_no_alert(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack)
    await ensure_topic_plan(config, topic_plan(config))
    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        windows = await run_pipeline(config, traffic(incident=False), worker)
        before_marker = await through_end_marker(config, slack, worker)
        records = await read_topic(config, config.alerts_topic)
        assert alerts_on_topic(records) == []
        assert len(records) == 1  # the marker alone
        values = scrape_metrics(worker.metrics_url)
    assert windows > 20
    assert metric(values, "streamer_funnel_windows_closed_total", funnel="checkout") == windows
    assert before_marker == []
    assert [r.status for r in slack.requests] == [200]  # the marker's


async def test_every_alert_arrives_once_through_outages_and_a_restart(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack).model_copy(update={"store": "rocksdb"})
    await ensure_topic_plan(config, topic_plan(config))
    base = Alert.model_validate(EXAMPLES["alert"])
    alerts = [
        base.model_copy(
            update={
                "alert_id": f"{base.alert_id}-{n}",
                "severity": "warning",
                "event_id": f"{base.alert_id}-{n}/firing/{n}",
            }
        )
        for n in range(6)
    ]
    slack.fail_next(4, 500, "rollup_error")  # Slack is down for a while...
    await produce(
        config,
        [(config.alerts_topic, a.alert_id.encode(), a.model_dump_json().encode()) for a in alerts],
    )
    first = WorkerProcess(config, tmp_path / "first.log").start()
    deadline = time.monotonic() + 150
    while len(slack.accepted) < 2:  # ...then up; the worker is restarted mid-way
        first.assert_running()
        assert time.monotonic() < deadline, first.log_tail()
        await asyncio.sleep(0.2)
    first.stop()
    assert len(slack.accepted) < len(alerts), "the restart must come in the middle"
    slack.fail_next(2, 503, "service_unavailable")
    with WorkerProcess(config, tmp_path / "second.log") as second:
        while len(slack.accepted) < len(alerts):
            second.assert_running()
            assert time.monotonic() < deadline, second.log_tail()
            await asyncio.sleep(0.3)
        before_marker = await through_end_marker(config, slack, second)
    assert len(before_marker) == len(alerts)
    assert len(slack.accepted) == len(alerts) + 1  # and the marker, last
    delivered = Counter(
        alert.alert_id
        for alert in alerts
        for message in before_marker
        if slack_code(alert.alert_id, 200) in str(message["blocks"])
    )
    assert delivered == {alert.alert_id: 1 for alert in alerts}
    statuses = slack.statuses()
    assert statuses.count(500) == 4
    assert 503 in statuses
    assert all(s in (200, 429, 500, 503) for s in statuses)


async def test_a_refused_alert_is_kept_and_redelivered_after_the_fix(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:

    config = configure(settings, tmp_path, slack)
    archived = config.model_copy(
        update={
            "slack_page_webhook_url": None,
            "slack_webhook_url": SecretStr(slack.url("T/B/archived")),
        }
    )
    await ensure_topic_plan(config, topic_plan(config))
    alert = Alert.model_validate(EXAMPLES["alert"]).model_copy(update={"severity": "warning"})
    await produce(
        config, [(config.alerts_topic, alert.alert_id.encode(), alert.model_dump_json().encode())]
    )
    with WorkerProcess(archived, tmp_path / "archived.log") as worker:
        deadline = time.monotonic() + 60
        while len(await read_topic(config, config.failed_alerts_topic)) < 1:
            worker.assert_running()
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.3)
        values = scrape_metrics(worker.metrics_url)
        assert f"alert {alert.event_id} cannot be delivered" in worker.log_tail(200)
        assert "archived" not in worker.log_tail(200).replace("channel_is_archived", "")
    assert metric(values, "streamer_alert_deliveries_total", outcome="failed") == 1
    assert [r.body for r in slack.requests] == ["channel_is_archived"]

    def redeliver(*args: str) -> str:
        done = run_cli(config, "alerts", "redeliver", *args, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with WorkerProcess(config, tmp_path / "fixed.log") as fixed:  # the webhook is fixed
        assert "redelivered 1 of 1 parked alert(s); 0 redelivered before" in redeliver()
        assert "redelivered 0 of 1 parked alert(s); 1 redelivered before" in redeliver()
        deadline = time.monotonic() + 60
        while len(slack.accepted) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        before_marker = await through_end_marker(config, slack, fixed)
    assert len(before_marker) == 1
    assert len(slack.accepted) == 2  # and the marker
    assert slack_code(alert.alert_id, 200) in str(slack.accepted[0]["blocks"])
