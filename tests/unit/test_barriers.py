"""Why people drop (spec: "Barriers"): a page-load time as latency buckets and the client
errors seen in an attempt as breakdowns, through the streaming core and the SQL oracle on
generated sessions, the spec's worked example, the definition's errors, and a planted
incident (one error kind breaking payment -> order) named by the detector's explanation."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamer.cli import cli
from streamer.decode import DecodeLimits
from streamer.decoders import DecodedEvent, catalogue_of, event_decoder, needed_fields
from streamer.events import ReplayReport
from streamer.funnel.catalogue import check_known_events
from streamer.funnel.definition import FunnelDefinition, Segment, load_funnel
from streamer.funnel.detect import AlertDecision, FunnelDetector
from streamer.funnel.session import CompiledFunnel
from streamer.funnel.task import Task
from streamer.funnel.windows import WindowCounts
from streamer.plan.compile import compile_plan
from streamer.plan.load import load_plan
from streamer.settings import Settings
from tests.oracle import compute
from tests.support.compare import assert_replay_equals_oracle, assert_same, oracle_rows
from tests.support.core_run import run_core, stored
from tests.support.generated_cases import arrival as delayed_arrival
from tests.support.generated_cases import case_batch

ERRORS = ("card_form_js", "api_timeout")
BARRIERS = {
    "load_time": {"source": "context.page_load_ms", "buckets": [1000, 3000, 10000]},
    "client_error": {"source": "event_name", "events": list(ERRORS)},
    "last_error": {"source": "event_name", "events": list(ERRORS), "attribution": "last_touch"},
}
FUNNEL = FunnelDefinition.model_validate(
    {
        "name": "shop",
        "conversion_window": "60s",
        "window": "10s",
        "step_timeout": "20s",
        "stages": [
            {"name": "landing", "event_type": "page_view", "where": {"landing": True}},
            {"name": "cart", "event_type": "add_to_cart", "timeout": "10s"},
            {"name": "payment", "event_type": "payment_submitted", "timeout": "10s"},
            {"name": "order", "event_type": "order_placed"},
        ],
        "segments": BARRIERS,
        "abandonment": ["cart", "payment"],
    }
)  # fmt: skip
TYPES = ("page_view", "add_to_cart", "payment_submitted", "order_placed", *ERRORS)
GAPS = (0, 0, 1, 2, 5, 10, 11, 21, 45)
# Exactly at an edge, either side of one, not a number, absent.
LOAD_TIMES = (0, 999, 1000, 1500.5, 2999, 3000, 9999.9, 10000, 60000, "1200", True, None)
LATENESS_MS = 30_000
END = 10**13
pytestmark = pytest.mark.timeout(900)


@st.composite
def barrier_case(draw: Any, prefix: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for session in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, 40)) * 1000
        for seq in range(draw(st.integers(1, 9))):
            at += draw(st.sampled_from(GAPS)) * 1000
            event_type = draw(st.sampled_from(TYPES))
            properties: dict[str, Any] = {}
            if event_type == "page_view":
                properties["landing"] = draw(st.booleans())
            load = draw(st.sampled_from(LOAD_TIMES))
            events.append({
                "session_id": f"{prefix}-{session}",
                "event_id": f"{prefix}-{session}-{seq}",
                "event_type": event_type,
                "at_ms": at,
                "properties": properties,
                "context": {} if load is None else {"page_load_ms": load},
            })  # fmt: skip
    return events


def barrier_batch(size: int) -> Any:
    return case_batch(barrier_case, size)


def arrival(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    return delayed_arrival(events, seed, LATENESS_MS)


@given(cases=barrier_batch(30), seed=st.integers(0, 2**32))
@settings(
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_barrier_breakdowns_core_equals_sql(cases: list[list[dict[str, Any]]], seed: int) -> None:
    events = [event for events in cases for event in events]
    note(f"arrival seed {seed}; {len(events)} events")
    sql = compute([FUNNEL], events, END)
    core = run_core([FUNNEL], arrival(events, seed), END, lateness_ms=LATENESS_MS)
    assert core.late == []
    assert_same("windows", sql.windows, core.windows)
    assert_same("segments", sql.segments, core.segments)
    assert_same("abandonments", sql.abandonments, core.abandonments)


def test_52_barriers() -> None:
    """funnel-semantics.md, "Barriers", example 52: numbers stated by the spec, through the
    core and the oracle."""
    events = [
        # s1: lands at 2.4 s of load; a card form error before paying; the payment drops.
        _event("s1", 1, 0, "page_view", {"landing": True}, 2400),
        _event("s1", 2, 2_000, "add_to_cart", {}, 800),
        _event("s1", 3, 3_000, "card_form_js", {}, None),
        _event("s1", 4, 4_000, "payment_submitted", {}, None),
        # s2: lands at 12 s; an api timeout, then a card form error; orders.
        _event("s2", 1, 0, "page_view", {"landing": True}, 12_000),
        _event("s2", 2, 1_000, "api_timeout", {}, None),
        _event("s2", 3, 2_000, "add_to_cart", {}, None),
        _event("s2", 4, 3_000, "card_form_js", {}, None),
        _event("s2", 5, 4_000, "payment_submitted", {}, None),
        _event("s2", 6, 5_000, "order_placed", {}, None),
        # s3: an error before landing is no part of the attempt; no load time.
        _event("s3", 1, 0, "api_timeout", {}, None),
        _event("s3", 2, 1_000, "page_view", {"landing": True}, None),
    ]
    stated = {  # (dimension, value, stage) -> entered, converted, dropped
        ("load_time", "1-3s", "payment"): (1, 0, 1),
        ("load_time", ">=10s", "payment"): (1, 1, 0),
        ("client_error", "card_form_js", "payment"): (1, 0, 1),
        ("client_error", "api_timeout", "payment"): (1, 1, 0),
        ("last_error", "card_form_js", "payment"): (2, 1, 1),
        ("client_error", "unknown", "landing"): (3, 2, 1),
        ("client_error", "api_timeout", "cart"): (1, 1, 0),
        ("client_error", "unknown", "cart"): (1, 1, 0),
    }
    core = run_core([FUNNEL], events, END, lateness_ms=LATENESS_MS)
    for result in (compute([FUNNEL], events, END), core):
        found = {
            (dim, value, stage): (c["entered"], c["converted"], c["dropped"])
            for (_, _, stage, dim, value), c in result.segments.items()
            if c["entered"]
        }
        for key, counts in stated.items():
            assert found.get(key) == counts, key
        assert ("load_time", "unknown", "landing") in found  # s3 carries no load time


def _event(
    session: str, seq: int, at_ms: int, kind: str, properties: dict[str, Any], load: Any
) -> dict[str, Any]:
    return {
        "session_id": session,
        "event_id": f"{session}-{seq}",
        "event_type": kind,
        "at_ms": at_ms,
        "properties": properties,
        "context": {} if load is None else {"page_load_ms": load},
    }


@pytest.mark.parametrize(
    ("edges", "labels"),
    [
        ([1000, 3000, 10000], ("<1s", "1-3s", "3-10s", ">=10s")),
        ([250, 1000, 1500], ("<250ms", "250ms-1s", "1-1.5s", ">=1.5s")),
        ([0], ("<0ms", ">=0ms")),
    ],
)
def test_bucket_edges_name_their_values(edges: list[float], labels: tuple[str, ...]) -> None:
    segment = Segment(name="load_time", source="context.page_load_ms", buckets=tuple(edges))
    assert segment.bucket_labels == labels


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "event_name"}, "needs `events`"),
        ({"source": "context.device", "events": ["x"]}, "`events` is for source event_name"),
        ({"source": "event_name", "events": ["x"], "attribution": {"step": 1}}, "first_touch"),
        ({"source": "event_name", "events": ["x"], "buckets": [1]}, "no buckets"),
        ({"source": "event_name", "events": ["x"], "values": ["x"]}, "or values"),
        ({"source": "context.load", "buckets": [3000, 1000]}, "increasing"),
        ({"source": "context.load", "buckets": [-1]}, "increasing"),
        ({"source": "context.load", "buckets": [1], "values": ["a"]}, "no `values`"),
        ({"source": "experiment.x", "buckets": [1]}, "no buckets"),
    ],
)
def test_barrier_options_that_cannot_work_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Segment.model_validate({"name": "barrier", **spec})


MINUTE = 60_000
CHECKOUT = FunnelDefinition.model_validate(
    {
        "name": "checkout",
        "conversion_window": "1h",
        "window": "1m",
        "stages": [
            {"name": "checkout", "event_type": "checkout_started"},
            {"name": "payment", "event_type": "payment_submitted", "timeout": "10m"},
            {"name": "order", "event_type": "order_placed"},
        ],
        "segments": {
            "client_error": {"source": "event_name", "events": list(ERRORS)},
            "load_time": {"source": "context.page_load_ms", "buckets": [1000, 3000, 10000]},
            "device": None,
        },
    }
)  # fmt: skip


def _shop_minute(
    rng: random.Random, minute_ms: int, broken: bool
) -> list[tuple[str, dict[str, Any]]]:
    """40 sessions: checkout, 8% see a card form error and 4% an api timeout before paying;
    90% of payments order (10% of those with a card form error while ``broken``)."""
    out = []
    for index in range(40):
        session = f"{minute_ms}-{index}"
        at = minute_ms + rng.randrange(MINUTE // 2)
        context = {"device": rng.choice(("ios", "android", "web")), "page_load_ms": 800}
        seen = rng.choices(("card_form_js", "api_timeout", None), (8, 4, 88))[0]
        steps = [("checkout_started", at)]
        if seen:
            steps.append((seen, at + 1_000))
        steps.append(("payment_submitted", at + 2_000))
        converts = 0.10 if broken and seen == "card_form_js" else 0.90
        if rng.random() < converts:
            steps.append(("order_placed", at + 3_000 + rng.randrange(2_000)))
        for seq, (kind, when) in enumerate(steps):
            event = {
                "event_id": f"{session}-{seq}",
                "event_type": kind,
                "at_ms": when,
                "properties": {},
                "context": context,
            }
            out.append((session, event))
    return out


def test_an_error_kind_breaking_a_step_is_named_by_the_alert() -> None:
    """Three healthy hours through the core and the detector (no alert), then card form errors
    stop 90% of their payments: payment -> order fires, explained by client_error=card_form_js
    first, though only 8% of payments see the error."""
    rng = random.Random(32)
    task = Task((CompiledFunnel(CHECKOUT),), 0, retention_ms=3_600_000)
    detector = FunnelDetector(CHECKOUT)
    windows: dict[int, WindowCounts] = {}
    onset = 180 * MINUTE
    firing: list[AlertDecision] = []
    for minute in range(240):
        minute_ms = minute * MINUTE
        for session, event in sorted(
            _shop_minute(rng, minute_ms, minute_ms >= onset), key=lambda p: p[1]["at_ms"]
        ):
            task.offer(session, stored(event))
        watermark = minute_ms + MINUTE - 2 * MINUTE  # two minutes of lateness
        if watermark <= 0:
            continue
        task.advance(watermark)
        for partial in task.drain().partials:
            windows[partial.window_start_ms] = partial.counts
        decisions = detector.evaluate(watermark, windows)
        if watermark < onset:
            assert decisions == [], f"a false alert at minute {minute}"
        firing += [d for d in decisions if isinstance(d, AlertDecision) and d.state == "firing"]
        for start in [s for s in windows if s + 12 * MINUTE <= watermark]:
            del windows[start]
        if firing:
            break
    # checkout -> payment never fails here: the step has no baseline of failures to warm on.
    assert not detector.warming_up()["payment->order"], "warm after three hours"
    assert firing, "the broken error kind was not detected"
    first = firing[0]
    assert first.alert_id.split("/")[1] == "payment->order"
    assert first.evaluated_at_ms - onset <= 15 * MINUTE
    named = first.explanations[0]
    assert (named.dimension, named.value) == ("client_error", "card_form_js")


PLAN = """\
version: 1
envelope:
  event_name: event
  event_id: messageId
  event_time: {path: timestamp, format: iso8601}
  session_id: context.session.id
  properties: properties
  context:
    device: {path: context.device, type: string}
    page_load_ms: {path: context.page.load_ms, type: number, min: 0}
events:
  checkout_started: {}
  payment_submitted: {}
  order_placed: {}
  card_form_js: {description: the card form's script failed}
  api_timeout: {description: a call to the shop's API timed out}
"""


def test_barriers_declared_in_a_plan_reach_the_core(tmp_path: Path) -> None:
    """The plan declares the load time and the error events; the funnel's barrier segments
    fit it (a misspelled error event is refused), and a decoded event keeps its load time."""
    path = tmp_path / "shop.yaml"
    path.write_text(PLAN)
    plan = compile_plan(load_plan(str(path)))
    assert check_known_events(CHECKOUT, catalogue_of(plan)) == []
    typo = CHECKOUT.model_copy(
        update={
            "segments": (
                Segment(name="client_error", source="event_name", events=("card_form_jss",)),
            )
        }
    )
    [(where, message)] = check_known_events(typo, catalogue_of(plan))
    assert where == ("segments", 0, "events", 0)
    assert "unknown event type 'card_form_jss'; did you mean 'card_form_js'" in message
    keep = needed_fields((CHECKOUT,))
    assert "event_name" not in keep
    decoder = event_decoder(plan, DecodeLimits(max_age=timedelta(days=3650)), keep)
    document = {
        "event": "checkout_started",
        "messageId": "m1",
        "timestamp": "2026-12-07T10:00:00Z",
        "context": {"session": {"id": "s1"}, "page": {"load_ms": 2400}},
    }
    decoded = decoder.decode(
        orjson.dumps(document), topic="web", received_at=datetime(2026, 12, 7, 10, tzinfo=UTC)
    )
    assert isinstance(decoded, DecodedEvent)
    assert CompiledFunnel(CHECKOUT).segment_value(decoded.event, 1) == "1-3s"


FUNNEL_FILE = """\
name: checkout
conversion_window: 1h
window: 1m
stages:
  - {name: checkout, event_type: checkout_started}
  - {name: payment, event_type: payment_submitted, timeout: 10m}
  - {name: order, event_type: order_placed}
segments:
  client_error: {source: event_name, events: [card_form_js, api_timeout]}
  load_time: {source: context.page_load_ms, buckets: [1000, 3000, 10000]}
  device: {cap: 3}
"""


def test_a_shops_export_through_its_plan_gives_the_oracles_barrier_counts(
    tmp_path: Path,
) -> None:
    """`streamer report` over plan-shaped documents (the plan's decoder, the projection, the
    core) equals the oracle over the same decoded events, per bucket and error kind."""
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(PLAN)
    funnel_path = tmp_path / "checkout.yaml"
    funnel_path.write_text(FUNNEL_FILE)
    rng = random.Random(52)
    start = datetime(2026, 12, 7, 10, tzinfo=UTC)
    documents = []
    for minute in range(30):
        for _, event in _shop_minute(rng, minute * MINUTE, broken=minute >= 20):
            at = start + timedelta(milliseconds=event["at_ms"])
            documents.append({
                "event": event["event_type"],
                "messageId": event["event_id"],
                "timestamp": at.isoformat().replace("+00:00", "Z"),
                "context": {
                    "session": {"id": event["event_id"].rsplit("-", 1)[0]},
                    "device": event["context"]["device"],
                    "page": {"load_ms": rng.choice((400, 1800, 4200, 15000))},
                },
            })  # fmt: skip
    path = tmp_path / "shop.jsonl"
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in documents))
    begin, end = "2026-12-07T10:00Z", "2026-12-07T12:00Z"
    args = [str(path), "--plan", str(plan_path), "--funnels", str(funnel_path)]
    result = CliRunner().invoke(cli, ["report", *args, "--from", begin, "--to", end])
    assert result.exit_code == 0, result.stderr + result.stdout
    replayed = ReplayReport.model_validate_json(result.stdout)
    plan = compile_plan(load_plan(str(plan_path)))
    rows = oracle_rows(plan, path.read_bytes().splitlines(), begin, end)
    assert len(rows) == len(documents)
    end_ms = round(datetime.fromisoformat(end).timestamp() * 1000)
    funnel = load_funnel(funnel_path)
    expected = compute([funnel], rows, end_ms, round(Settings().session_retention_seconds * 1000))
    [counted] = replayed.funnels
    assert_replay_equals_oracle(counted, funnel, expected)
    values = {(dim, value) for (_, _, _, dim, value) in expected.segments}
    assert {("client_error", "card_form_js"), ("client_error", "api_timeout")} <= values
    assert {("load_time", v) for v in ("<1s", "1-3s", "3-10s", ">=10s")} <= values
