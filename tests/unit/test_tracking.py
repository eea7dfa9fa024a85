"""The tracking check (data-quality alerts): a silent topic or event type is told apart from a
conversion failure, named once, resolved when events return, and blinds the conversion tests
of the steps it feeds; thinned-out events (a real failure) and quiet nights raise nothing."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.events import Alert
from streamer.funnel.definition import load_funnel
from streamer.funnel.detect import AlertDecision, FunnelDetector, held_steps
from streamer.funnel.session import CompiledFunnel, StoredEvent
from streamer.funnel.task import Task
from streamer.funnel.tracking import TrackingCheck, TrackingDecision
from streamer.funnel.windows import NEW_SESSIONS, WindowCounts
from streamer.metrics import Metrics
from streamer.pipeline import detector as detector_stage
from streamer.pipeline.detector import DetectorStage

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"
MIN = 60_000
# Per minute at full traffic: (topic, event type) -> mean events.
TRAFFIC = {
    ("clickstream", "page_view"): 300.0,
    ("clickstream", "product_view"): 250.0,
    ("clickstream", "add_to_cart"): 90.0,
    ("checkout", "checkout_started"): 50.0,
    ("checkout", "payment_submitted"): 38.0,
    ("checkout", "order_placed"): 35.0,
    ("checkout", "payment_failed"): 3.0,
    NEW_SESSIONS: 300.0,  # sessions seen for the first time
}


def _poisson(rng: random.Random, mean: float) -> int:
    # Normal approximation is plenty for these means; never negative.
    return max(0, round(rng.gauss(mean, mean**0.5)))


def volume_window(
    rng: random.Random,
    scale: float = 1.0,
    silent: frozenset[str] = frozenset(),
    thin: dict[str, float] | None = None,
) -> WindowCounts:
    """One minute of traffic at ``scale``: keys whose topic or type is in ``silent`` absent,
    event types in ``thin`` kept at that share."""
    counts = WindowCounts.empty(6)
    for (topic, event_type), mean in TRAFFIC.items():
        if topic in silent or event_type in silent:
            continue
        n = _poisson(rng, mean * scale * (thin or {}).get(event_type, 1.0))
        if n:
            counts.volume[(topic, event_type)] = n
    return counts


def check() -> TrackingCheck:
    return TrackingCheck(
        "checkout",
        MIN,
        30 * MIN,
        significance=1e-6,
        min_baseline_events=5000,
        half_life=50_000,
    )


def run(
    tracker: TrackingCheck, minutes: range, make: object, rng: random.Random
) -> list[TrackingDecision]:
    decisions = []
    for minute in minutes:
        window = make(minute)  # type: ignore[operator]
        decisions += tracker.evaluate((minute + 1) * MIN, {minute * MIN: window})
    return decisions


def test_a_silent_topic_is_named_once_blinds_its_span_and_resolves() -> None:
    rng = random.Random(1)
    tracker = check()
    assert run(tracker, range(60), lambda m: volume_window(rng), rng) == []
    assert not tracker.warming_up
    silent = frozenset({"checkout"})
    decisions = run(tracker, range(60, 75), lambda m: volume_window(rng, silent=silent), rng)
    [firing] = decisions
    assert (firing.state, firing.subject, firing.name) == ("firing", "topic", "checkout")
    assert firing.evaluated_at_ms == 61 * MIN  # its first empty minute was enough
    assert firing.alert_id == f"checkout/tracking/topic:checkout/{61 * MIN}"
    assert set(firing.event_types) == {t for s, t in TRAFFIC if s == "checkout"}
    # The steps whose next stage these events lead to are blind from a minute before the
    # first empty window (the silence began within it) for as long as it lasts.
    assert tracker.blinds(["order_placed"], 59 * MIN + 1, 61 * MIN)
    assert not tracker.blinds(["order_placed"], 50 * MIN, 59 * MIN)
    assert not tracker.blinds(["add_to_cart"], 50 * MIN, 75 * MIN)  # clickstream flows
    [resolved] = run(tracker, range(75, 80), lambda m: volume_window(rng), rng)
    assert (resolved.state, resolved.alert_id) == ("resolved", firing.alert_id)
    assert tracker.blinds(["order_placed"], 70 * MIN, 71 * MIN)  # the span stays blind
    assert not tracker.blinds(["order_placed"], 76 * MIN, 90 * MIN)


def test_an_event_type_silent_while_its_topic_flows_is_named_alone() -> None:
    rng = random.Random(2)
    tracker = check()
    run(tracker, range(60), lambda m: volume_window(rng), rng)
    silent = frozenset({"order_placed"})
    decisions = run(tracker, range(60, 80), lambda m: volume_window(rng, silent=silent), rng)
    [firing] = decisions
    assert (firing.subject, firing.name, firing.event_types) == (
        "event_type",
        "order_placed",
        ("order_placed",),
    )
    # Only at 5% of its usual volume is silence sure: 35/min, so several empty minutes.
    assert 62 * MIN <= firing.evaluated_at_ms <= 72 * MIN
    assert tracker.blinds(["order_placed"], 60 * MIN, 61 * MIN)


def test_thinned_events_and_quiet_nights_are_not_silence() -> None:
    """A payment step failing for 95% leaves 5% of the orders; the night has a tenth of the
    traffic: neither is an outage, over many hours of noise."""
    rng = random.Random(3)
    tracker = check()
    run(tracker, range(60), lambda m: volume_window(rng), rng)

    def evening(minute: int) -> WindowCounts:
        scale = max(0.1, 1.0 - (minute - 60) / 300)
        thin = {"order_placed": 0.05} if 200 <= minute < 260 else None
        return volume_window(rng, scale=scale, thin=thin)

    assert run(tracker, range(60, 600), evening, rng) == []


def test_the_tail_of_a_finished_burst_is_not_a_silent_topic() -> None:
    """No new sessions: the last sessions' checkout events still flow after the clickstream
    stopped (the end of a replay or a test dataset). Nothing is silent, nothing is held."""
    rng = random.Random(8)
    tracker = check()
    run(tracker, range(60), lambda m: volume_window(rng), rng)
    tail = frozenset({"clickstream", ""})  # no clickstream event, no new session
    assert run(tracker, range(60, 70), lambda m: volume_window(rng, silent=tail), rng) == []
    assert not tracker.blinds(["add_to_cart", "order_placed"], 55 * MIN, 70 * MIN)


def test_state_survives_a_round_trip() -> None:
    rng = random.Random(4)
    tracker = check()
    run(tracker, range(60), lambda m: volume_window(rng), rng)
    run(tracker, range(60, 62), lambda m: volume_window(rng, silent=frozenset({"checkout"})), rng)
    copy = check()
    copy.load_json(orjson.loads(orjson.dumps(tracker.to_json())))
    assert copy.to_json() == tracker.to_json()
    same = random.Random(5)
    after = [volume_window(same) for _ in range(3)]
    assert run(copy, range(62, 65), lambda m: after[m - 62], rng) == run(
        tracker, range(62, 65), lambda m: after[m - 62], rng
    )


def test_a_silent_topic_raises_a_data_quality_alert_and_no_drop_off_alert() -> None:
    """The detector: payment -> order is warm; the checkout topic goes silent, so no young
    cohort converts. The tracking alert fires, the step's tests are held, nothing pages."""
    funnel = load_funnel(CHECKOUT)
    detector = FunnelDetector(funnel)
    rng = random.Random(6)
    payment = 4
    lag = funnel.window_ms + funnel.step_timeout_ms(payment)

    def cohort(converted_share: float, silent: frozenset[str] = frozenset()) -> WindowCounts:
        counts = volume_window(rng, silent=silent)
        step = counts.stages[payment]
        step.entered = 40
        step.converted = round(40 * converted_share)
        step.time_to_convert_buckets[1] = step.converted
        return counts

    windows: dict[int, WindowCounts] = {}
    for minute in range(40):  # every minute a cohort, final ones decided
        windows[minute * MIN] = cohort(0.9)
    for minute in range(40):
        final = windows[minute * MIN]
        final.stages[payment].dropped = 40 - final.stages[payment].converted
    decisions = []
    for minute in range(40):
        decisions += detector.evaluate(minute * MIN + lag, windows)
    assert not detector.warming_up()["payment->order"]
    assert not detector.tracking.warming_up
    assert decisions == []
    start = 40 * MIN + lag  # the watermark; new cohorts from here on, silent and unconverted
    silent = frozenset({"checkout"})
    for minute in range(10):
        at = start - lag + 30 * MIN + minute * MIN
        windows[at] = cohort(0.0, silent)
    found = []
    for minute in range(1, 11):
        found += detector.evaluate(start - lag + 30 * MIN + minute * MIN, windows)
    assert [type(d) for d in found] == [TrackingDecision], found
    assert not any(isinstance(d, AlertDecision) for d in found)
    assert "payment->order" in held_steps(funnel, found[0].event_types)


async def test_the_detector_stage_writes_the_data_quality_alert_and_sets_its_gauge() -> None:
    funnel = load_funnel(CHECKOUT)
    sent: list[tuple[bytes | None, bytes]] = []

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append((key, value))

    registry = CollectorRegistry()
    stage = DetectorStage(
        funnels=(funnel,), table={}, metrics=Metrics.create(registry), send_alert=send
    )
    rng = random.Random(7)
    windows = {m * MIN: volume_window(rng) for m in range(60)}
    windows.update(
        {m * MIN: volume_window(rng, silent=frozenset({"checkout"})) for m in range(60, 63)}
    )
    alerts = await stage.judge(funnel, [m * MIN for m in range(1, 64)], windows)
    [alert] = alerts
    assert (alert.kind, alert.state, alert.severity, alert.step) == (
        "data_quality",
        "firing",
        "warning",
        "tracking",
    )
    assert alert.silent_topic == "checkout"
    assert alert.held_steps == ["cart->checkout", "checkout->payment", "payment->order"]
    assert "no topic checkout events since" in alert.summary
    assert [Alert.model_validate_json(value) for _, value in sent] == alerts
    labels = {"funnel": "checkout", "subject": "topic", "name": "checkout"}
    assert registry.get_sample_value("streamer_tracking_silent", labels) == 1.0
    [silent] = stage.silent_inputs["checkout"]  # what /funnel and `funnel show` report
    assert (silent["subject"], silent["name"], silent["alert_id"]) == (
        "topic",
        "checkout",
        alert.alert_id,
    )
    # Stored with the detector's state: the next call resolves it once events are back.
    windows.update({m * MIN: volume_window(rng) for m in range(63, 65)})
    [resolved] = await stage.judge(funnel, [64 * MIN, 65 * MIN], windows)
    assert (resolved.state, resolved.alert_id) == ("resolved", alert.alert_id)
    assert registry.get_sample_value("streamer_tracking_silent", labels) == 0.0
    assert stage.silent_inputs["checkout"] == []


async def test_judging_many_boundaries_lets_the_loop_run_with_the_same_alert(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backlog's boundaries judged in one call (63 here) let the loop run between them
    (``detector.JUDGE_SLICE_S``; 0.8 s in one piece measured), and decide the same alert."""
    funnel = load_funnel(CHECKOUT)
    monkeypatch.setattr(detector_stage, "JUDGE_SLICE_S", 0.0)  # after every boundary
    stage = DetectorStage(
        funnels=(funnel,), table={}, metrics=Metrics.create(CollectorRegistry()), send_alert=_sink
    )
    rng = random.Random(7)
    windows = {m * MIN: volume_window(rng) for m in range(60)}
    windows.update(
        {m * MIN: volume_window(rng, silent=frozenset({"checkout"})) for m in range(60, 63)}
    )
    ticks = 0

    async def meanwhile() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    other = asyncio.ensure_future(meanwhile())
    [alert] = await stage.judge(funnel, [m * MIN for m in range(1, 64)], windows)
    other.cancel()
    assert (alert.kind, alert.state, alert.silent_topic) == ("data_quality", "firing", "checkout")
    assert ticks >= 62  # between every two of the 63 boundaries


async def _sink(key: bytes | None, value: bytes) -> None:
    pass


def test_a_new_session_counts_in_the_window_of_its_first_event_whatever_the_arrival_order() -> None:
    """A backlog read checkout-first (or a partition's new owner) offers a session's later
    events before its first: it still counts as new where it started, as in event order."""
    funnel = CompiledFunnel(load_funnel(CHECKOUT))
    start = 1_795_000_000_000 - 1_795_000_000_000 % MIN
    events = [
        (StoredEvent(start + 10_000, "e1", "page_view", {"landing": True}), "clickstream"),
        (StoredEvent(start + 70_000, "e2", "product_view", {}), "clickstream"),
        (StoredEvent(start + 190_000, "e3", "checkout_started", {}), "checkout"),
    ]

    def volumes(order: list[int]) -> dict[int, dict[tuple[str, str], int]]:
        task = Task((funnel,), 0, retention_ms=3_600_000)
        for index in order:
            event, source = events[index]
            task.offer("s-1", event, None, source)
        task.advance(start + 10 * MIN)
        return {p.window_start_ms: dict(p.counts.volume) for p in task.drain().partials}

    in_order = volumes([0, 1, 2])
    assert volumes([2, 1, 0]) == volumes([1, 2, 0]) == in_order
    assert in_order[start][NEW_SESSIONS] == 1
    assert all(NEW_SESSIONS not in v for s, v in in_order.items() if s != start)


class _JournalTable(dict[str, bytes]):
    """A detector table that writes what happens to it into the stage's journal."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self._journal = journal

    def __setitem__(self, key: str, value: bytes) -> None:
        self._journal.append(f"state {key}")
        super().__setitem__(key, value)


async def test_alerts_are_on_the_broker_before_the_state_that_decided_them() -> None:
    """A worker killed mid-judgement must send an alert again, never lose it: the alert is
    confirmed before the detector state that remembers it is written, and that state is
    confirmed before judge returns (the merger then marks the boundaries judged)."""
    funnel = load_funnel(CHECKOUT)
    journal: list[str] = []

    async def send(key: bytes | None, value: bytes) -> None:
        journal.append(f"alert {Alert.model_validate_json(value).state}")

    async def confirm() -> None:
        journal.append("confirmed")

    stage = DetectorStage(
        funnels=(funnel,),
        table=_JournalTable(journal),
        metrics=Metrics.create(CollectorRegistry()),
        send_alert=send,
        confirm_writes=confirm,
    )
    rng = random.Random(7)
    windows = {m * MIN: volume_window(rng) for m in range(60)}
    windows.update(
        {m * MIN: volume_window(rng, silent=frozenset({"checkout"})) for m in range(60, 63)}
    )
    await stage.judge(funnel, [m * MIN for m in range(1, 64)], windows)
    assert journal == ["alert firing", "confirmed", "state funnel:checkout", "confirmed"]
    journal.clear()
    await stage.judge(funnel, [64 * MIN], windows)  # nothing to send: the state only
    assert journal == ["state funnel:checkout", "confirmed"]


def test_a_restored_check_declares_the_same_outage_to_the_last_bit() -> None:
    """Restored state lists its learned volumes sorted, the live one in arrival order: the
    shares must be summed in one order, or the outage's p-value differs in its last digits
    between a worker that was killed and one that never stopped."""
    rng = random.Random(6)
    tracker = check()
    run(tracker, range(60), lambda m: volume_window(rng), rng)
    copy = check()
    copy.load_json(orjson.loads(orjson.dumps(tracker.to_json())))
    assert list(copy.learned) != list(tracker.learned)  # the orders really differ
    same = random.Random(7)
    silent = [volume_window(same, silent=frozenset({"checkout"})) for _ in range(5)]
    restored = run(copy, range(60, 65), lambda m: silent[m - 60], rng)
    undisturbed = run(tracker, range(60, 65), lambda m: silent[m - 60], rng)
    assert restored
    assert restored == undisturbed
