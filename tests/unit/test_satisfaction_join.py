"""Survey answers joined to the stage the unit had reached (docs/satisfaction.md): the core
against the SQL oracle on generated sessions under disorder, an answer that arrives before its
stage's event, a checkpoint and restore anywhere, and the figures of a window's answers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streamer.funnel.catalogue import check_known_events
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.satisfaction import Scores
from streamer.funnel.session import Progress, UnitMemory
from tests.oracle import compute
from tests.support.compare import assert_same
from tests.support.core_run import restored_midway, run_core
from tests.support.generated_cases import arrival as delayed_arrival
from tests.support.generated_cases import case_batch

RAW: dict[str, Any] = (
    {
        "name": "shop",
        "conversion_window": "60s",
        "window": "10s",
        "step_timeout": "20s",
        "stages": [
            {"name": "landing", "event_type": "page_view"},
            {"name": "cart", "event_type": "add_to_cart", "timeout": "10s"},
            {"name": "payment", "event_type": "payment_submitted", "timeout": "10s"},
            {"name": "order", "event_type": "order_placed"},
        ],
        "segments": {"device": {"cap": 5}},
        "surveys": [
            {"name": "csat", "event_type": "csat_answered", "score": "score", "kind": "csat"},
            {"name": "nps", "event_type": "nps_answered", "score": "score", "kind": "nps"},
        ],
    }
)  # fmt: skip
FUNNEL = FunnelDefinition.model_validate(RAW)
STAGE_TYPES = ("page_view", "add_to_cart", "payment_submitted", "order_placed")
TYPES = ("page_view", "add_to_cart", "payment_submitted", "order_placed", "csat_answered",
         "nps_answered", "csat_answered")  # fmt: skip
# In range, at each end, just outside, not whole, not a number, absent.
SCORES = (0, 1, 2, 3, 5, 6, 7, 9, 10, 11, -1, 4.0, 4.5, "5", True, None)
GAPS = (0, 0, 1, 2, 5, 10, 11, 21, 45)
LATENESS_MS = 30_000
END = 10**13
pytestmark = pytest.mark.timeout(900)


@st.composite
def answer_case(draw: Any, prefix: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for session in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, 40)) * 1000
        device = draw(st.sampled_from(("ios", "web", "")))
        following = 0  # half the events go on down the funnel: answers reach every stage
        for seq in range(draw(st.integers(1, 12))):
            at += draw(st.sampled_from(GAPS)) * 1000
            if draw(st.booleans()):
                event_type = STAGE_TYPES[following % len(STAGE_TYPES)]
                following += 1
            else:
                event_type = draw(st.sampled_from(TYPES))
            properties: dict[str, Any] = {}
            if event_type.endswith("_answered"):
                score = draw(st.sampled_from(SCORES))
                if score is not None:
                    properties["score"] = score
            events.append({
                "session_id": f"{prefix}-{session}",
                "event_id": f"{prefix}-{session}-{seq}",
                "event_type": event_type,
                "at_ms": at,
                "properties": properties,
                "context": {"device": device} if device else {},
            })  # fmt: skip
    return events


def answer_batch(size: int) -> Any:
    return case_batch(answer_case, size)


def arrival(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    return delayed_arrival(events, seed, LATENESS_MS)


@given(cases=answer_batch(30), seed=st.integers(0, 2**32))
@settings(
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_answers_core_equals_sql_under_disorder(
    cases: list[list[dict[str, Any]]], seed: int
) -> None:
    events = [event for events in cases for event in events]
    note(f"arrival seed {seed}; {len(events)} events")
    sql = compute([FUNNEL], events, END)
    core = run_core([FUNNEL], arrival(events, seed), END, lateness_ms=LATENESS_MS)
    assert core.late == []
    assert_same("answers", sql.answers, core.answers)
    assert_same("windows", sql.windows, core.windows)
    assert_same("segments", sql.segments, core.segments)


def _event(seq: int, at_s: float, kind: str, score: int | None = None) -> dict[str, Any]:
    return {
        "session_id": "s",
        "event_id": f"s-{seq}",
        "event_type": kind,
        "at_ms": round(at_s * 1000),
        "properties": {} if score is None else {"score": score},
        "context": {"device": "ios"},
    }


def test_an_answer_that_arrives_before_its_stage_joins_that_stage() -> None:
    """The order at 12 s arrives after the CSAT given at 13 s (20 s late, within the 30 s
    lateness): the answer counts at `order`. An answer before the landing is at none, one at
    the instant of the cart at cart, and NPS after the attempt dropped at payment."""
    in_time = [
        _event(1, 1, "nps_answered", 9),  # before any attempt
        _event(2, 2, "page_view"),
        _event(3, 5, "add_to_cart"),
        _event(4, 5, "csat_answered", 4),  # the cart's instant
        _event(5, 8, "payment_submitted"),
        _event(6, 12, "order_placed"),
        _event(7, 13, "csat_answered", 5),
        _event(8, 40, "page_view"),
        _event(9, 42, "add_to_cart"),
        _event(10, 43, "payment_submitted"),
        _event(11, 58, "nps_answered", 3),  # the attempt dropped at payment (deadline 53 s)
    ]
    order = in_time[5]
    arriving = [e for e in in_time if e is not order]
    arriving.insert(7, order)  # after the answer at 13 s and the page view at 40 s
    assert [e["event_id"] for e in arriving[5:8]] == ["s-7", "s-8", "s-6"]
    for events in (in_time, arriving):
        core = run_core([FUNNEL], events, END, lateness_ms=LATENESS_MS)
        totals = {
            (key[1], key[2], key[3], key[6]): n for key, n in core.answers.items() if key[4] == ""
        }
        assert totals == {
            (0, "nps", "none", 9): 1,
            (0, "csat", "cart", 4): 1,
            (10_000, "csat", "order", 5): 1,
            (50_000, "nps", "payment", 3): 1,
        }
        assert core.answers[("shop", 10_000, "csat", "order", "device", "ios", 5)] == 1
    assert compute([FUNNEL], in_time, END).answers == core.answers


@given(cases=answer_batch(4), seed=st.integers(0, 1000), cut=st.floats(0, 1))
@settings(max_examples=40, deadline=None)
def test_a_checkpoint_and_restore_anywhere_keeps_the_stage_reached(
    cases: list[list[dict[str, Any]]], seed: int, cut: float
) -> None:
    arriving = arrival([event for events in cases for event in events], seed)
    expected, restored = restored_midway(
        (FUNNEL,),
        arriving,
        round(cut * len(arriving)),
        lateness_ms=LATENESS_MS,
        watermark_ms=END,
    )
    assert {k: v.to_json() for k, v in restored.windows.items()} == {
        k: v.to_json() for k, v in expected.windows.items()
    }


def test_the_stage_reached_round_trips_and_old_checkpoints_restore_none() -> None:
    memory = UnitMemory(reached=2, reached_segments=("ios",))
    remembering = Progress(ended_ms=5, memory=memory)
    assert Progress.from_json(remembering.to_json()) == remembering
    plain = Progress(ended_ms=5)
    stored = plain.to_json()
    assert stored is not None
    assert len(stored) == 3  # a funnel without surveys stores its progress as before
    assert Progress.from_json(stored).memory is None


def test_a_windows_answers_give_the_stages_figures() -> None:
    events = [_event(1, 1, "page_view")] + [
        _event(10 + i, 2, "nps_answered", score) for i, score in enumerate((10, 9, 8, 6, 0))
    ]
    # One session answering five times at one instant: every answer counts.
    core = run_core([FUNNEL], events, END)
    nps = Scores("nps")
    for (_, _, survey, stage, dim, _, score), n in core.answers.items():
        if (survey, stage, dim) == ("nps", "landing", ""):
            nps.add(score, n)
    assert (nps.answers, nps.nps()) == (5, 0.0)  # 2 promoters, 2 detractors of 5


def test_surveys_are_checked_against_the_events_there_are() -> None:
    catalogue = {
        "page_view": ["landing"],
        "add_to_cart": [],
        "payment_submitted": [],
        "order_placed": [],
        "csat_answered": ["score"],
        "nps_answered": ["rating"],
    }
    problems = check_known_events(FUNNEL, catalogue)
    assert problems == [
        (
            ("surveys", 1, "score"),
            "no event of nps_answered has a property 'score'",
        )
    ]
    with pytest.raises(ValidationError, match="an answer is no step"):
        FunnelDefinition.model_validate({
            **RAW,
            "surveys": [{"name": "csat", "event_type": "order_placed", "score": "s",
                         "kind": "csat"}],
        })  # fmt: skip


def test_the_published_record_and_funnel_show_carry_the_answers() -> None:
    """The window record's answers (what ``streamer funnel show`` sums) against the oracle's,
    on the session of the test above: each survey's answers per stage, and their figures."""
    from streamer.pipeline.merger import window_stats
    from streamer.query import FunnelView
    from tests.support.core_run import record_answers

    events = [_event(1, 1, "page_view")] + [
        _event(10 + i, 2, "nps_answered", score) for i, score in enumerate((10, 9, 8, 6, 0))
    ]
    sql = compute([FUNNEL], events, END)
    record = window_stats(FUNNEL, 0, 1, _counts_of(events), watermark_ms=END)
    assert record_answers(record) == sql.answers
    view = FunnelView()
    view.add(record)
    shown = view.summary()["shop"]["last_window"]["answers"]
    assert shown == [
        {
            "survey": "nps",
            "kind": "nps",
            "stage": "landing",
            "answers": 5,
            "low": 2,
            "distribution": {"0": 1, "6": 1, "8": 1, "9": 1, "10": 1},
            "satisfied_share": None,
            "nps": 0.0,
        }
    ]


def _counts_of(events: list[dict[str, Any]]) -> Any:
    from streamer.funnel.session import CompiledFunnel
    from streamer.funnel.task import Task
    from tests.support.core_run import stored

    task = Task((CompiledFunnel(FUNNEL),), 0, retention_ms=10**12)
    for event in events:
        task.offer(str(event["session_id"]), stored(event))
    task.advance(END)
    return next(p.counts for p in task.drain().partials if p.window_start_ms == 0)


def test_a_final_windows_answers_set_the_survey_gauges() -> None:
    """Every score of every survey and stage is a series (0 before any answer); a final
    window sets the distribution per stage and the figures per stage and segment value."""
    from prometheus_client import CollectorRegistry

    from streamer.metrics import Metrics
    from streamer.pipeline.merger import show_answers, window_stats

    registry = CollectorRegistry()
    metrics = Metrics.create(registry, ["clickstream"], (FUNNEL,))
    at_order = {"funnel": "shop", "survey": "nps", "stage": "landing"}
    assert registry.get_sample_value("streamer_survey_answers", {**at_order, "score": "9"}) == 0
    events = [_event(1, 1, "page_view")] + [
        _event(10 + i, 2, "nps_answered", score) for i, score in enumerate((10, 9, 8, 6, 0))
    ]
    show_answers(metrics, FUNNEL, window_stats(FUNNEL, 0, 1, _counts_of(events), watermark_ms=END))
    value = registry.get_sample_value
    assert [value("streamer_survey_answers", {**at_order, "score": str(s)}) for s in range(11)] == [
        1, 0, 0, 0, 0, 0, 1, 0, 1, 1, 1
    ]  # fmt: skip
    total = {**at_order, "dimension": "", "value": ""}
    assert value("streamer_survey_score", {**total, "figure": "nps"}) == 0.0
    assert value("streamer_survey_score", {**total, "figure": "low"}) == 0.4
    ios = {**at_order, "dimension": "device", "value": "ios"}
    assert value("streamer_survey_score", {**ios, "figure": "low"}) == 0.4
