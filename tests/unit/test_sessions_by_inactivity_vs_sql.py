"""Sessions by inactivity, the streaming core against the SQL oracle (tests/oracle/inactivity.py)
on generated identity traffic: gaps just under, at and over the inactivity, ties, producer
retries, arrival disorder within the lateness, and a step timeout longer than the gap (attempts
that outlive their session). Events that carry a session id ride along and are never cut.

On a failure hypothesis prints the example, the arrival seed and the watermark (``note``), and
a blob to reproduce it. Then the specification's worked examples I1 to I4, through both engines,
against the numbers it states."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.oracle import compute
from tests.oracle.inactivity import cut_by_inactivity
from tests.support.compare import assert_same
from tests.support.core_run import CoreResult, assert_final_consistent, run_core
from tests.support.generated_cases import CASE_SPAN_MS
from tests.unit.test_core_vs_sql import END, FUNNEL, LATENESS_MS, TYPES, arrival
from tests.unit.test_spec_examples import S, counts, events, funnel, ttc

# FUNNEL's landing step times out after 20 s: longer than this gap, so an attempt can still be
# open when its session ends. Gaps (s) around it: just under, exactly, just over, and far.
INACTIVITY_MS = 15_000
GAPS = (0, 0, 1, 5, 10, 14, 15, 15, 16, 16, 20, 30, 61)
DAY_MS = 24 * 3_600_000


@st.composite
def identities(draw: Any, prefix: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for unit in range(draw(st.integers(1, 3))):
        by_identity = draw(st.integers(0, 3)) > 0  # now and then a session id's events
        key = f"anonymous_id:{prefix}-{unit}" if by_identity else f"{prefix}-{unit}"
        at = draw(st.integers(0, 40)) * 1000 + draw(st.sampled_from((0, 0, 500, 999)))
        for seq in range(draw(st.integers(1, 12))):
            at += draw(st.sampled_from(GAPS)) * 1000 + draw(st.sampled_from((0, 0, 0, 1, 999)))
            event_type = draw(st.sampled_from(TYPES))
            properties: dict[str, Any] = {}
            if event_type == "page_view":
                properties["landing"] = draw(st.booleans())
            elif event_type == "add_to_cart":
                properties["cart_value"] = draw(st.sampled_from((0, 12.5)))
            elif event_type == "payment_submitted":
                properties["amount"] = draw(st.sampled_from((0, 80.0)))
                properties["payment_method"] = draw(st.sampled_from(("card", "paypal")))
            event = {
                "session_id": key,
                "event_id": f"{prefix}-{unit}-{seq}",
                "event_type": event_type,
                "at_ms": at,
                "properties": properties,
                "context": {"device": draw(st.sampled_from(("ios", "web")))},
                "by_identity": by_identity,
            }
            events.append(event)
            if draw(st.integers(0, 7)) == 0:
                events.append(dict(event))  # a producer retry: the same event again
    return events


@st.composite
def batch(draw: Any, size: int) -> list[dict[str, Any]]:
    events = []
    for index in range(size):
        for event in draw(identities(f"c{index}")):
            event["at_ms"] += index * CASE_SPAN_MS
            events.append(event)
    return events


def assert_core_equals_sql(events: list[dict[str, Any]], watermark_ms: int) -> None:
    sql = compute([FUNNEL], cut_by_inactivity(events, INACTIVITY_MS), watermark_ms)
    core = run_core(
        [FUNNEL], events, watermark_ms, lateness_ms=LATENESS_MS, inactivity_ms=INACTIVITY_MS
    )
    assert core.late == []
    assert_same("windows", sql.windows, core.windows)
    assert_same("segments", sql.segments, core.segments)
    assert_same("abandonments", sql.abandonments, core.abandonments)
    assert_same("final", sql.final, core.final)
    assert_final_consistent(core)


@given(events=batch(20), seed=st.integers(0, 2**32))
@settings(
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_core_equals_sql_on_generated_identities(events: list[dict[str, Any]], seed: int) -> None:
    note(f"arrival seed {seed}; {len(events)} events")
    assert_core_equals_sql(arrival(events, seed), END)


@given(events=identities("c"), seed=st.integers(0, 2**32), cut_s=st.integers(0, 200))
@settings(max_examples=150, deadline=None, print_blob=True)
def test_core_equals_sql_before_everything_is_decided(
    events: list[dict[str, Any]], seed: int, cut_s: int
) -> None:
    """At a watermark inside the data: ended sessions still open, windows not final."""
    watermark = cut_s * 1000
    note(f"arrival seed {seed}, watermark {watermark}")
    arrived = [e for e in arrival(events, seed) if e["at_ms"] < watermark + LATENESS_MS]
    assert_core_equals_sql(arrived, watermark)


def test_after_a_day_without_events_the_numbering_starts_over_in_both() -> None:
    """Visits of a landing and a cart a second later (the cart abandoned 10 s on), apart by
    16 s, 24 s, a day and a millisecond, 15.001 s and a day and a millisecond again."""
    starts = [0, 17_000, 42_000]
    starts.append(starts[-1] + 1000 + DAY_MS + 1)
    starts.append(starts[-1] + 1000 + INACTIVITY_MS + 1)
    starts.append(starts[-1] + 1000 + DAY_MS + 1)
    events = [
        {
            "session_id": "anonymous_id:v",
            "event_id": f"{event_type}@{at}",
            "event_type": event_type,
            "at_ms": at + delay,
            "properties": {"landing": True},
            "context": {},
            "by_identity": True,
        }
        for at in starts
        for delay, event_type in ((0, "page_view"), (1000, "add_to_cart"))
    ]
    core = run_core([FUNNEL], events, END, inactivity_ms=INACTIVITY_MS, retention_ms=600_000)
    sql = compute([FUNNEL], cut_by_inactivity(events, INACTIVITY_MS), END)
    assert_same("abandonments", sql.abandonments, core.abandonments)
    assert [a["session_id"] for a in sorted(core.abandonments.values(), key=_start)] == [
        "anonymous_id:v",
        "anonymous_id:v#2",
        "anonymous_id:v#3",
        "anonymous_id:v",
        "anonymous_id:v#2",
        "anonymous_id:v",
    ]


def _start(abandonment: dict[str, Any]) -> int:
    return int(abandonment["attempt_ms"])


# --- The specification's worked examples I1 to I4 (docs/funnel-semantics.md, "Sessions by
# inactivity"): funnel F, G = 15 s, events of anonymous_id:v.
V = "anonymous_id:v"


def visitor(*spec: tuple[Any, ...]) -> list[dict[str, Any]]:
    return [e | {"session_id": V, "by_identity": True} for e in events(*spec)]


def both_cut(evs: list[dict[str, Any]], watermark_ms: int = END) -> CoreResult:
    """The core (events in the order given, the lateness wide) and the oracle agree; the
    core's result."""
    core = run_core([funnel()], evs, watermark_ms, lateness_ms=30 * S, inactivity_ms=INACTIVITY_MS)
    sql = compute([funnel()], cut_by_inactivity(evs, INACTIVITY_MS), watermark_ms)
    assert core.late == []
    assert_same("windows", sql.windows, core.windows)
    assert_same("abandonments", sql.abandonments, core.abandonments)
    assert_same("final", sql.final, core.final)
    return core


def test_i1_a_gap_of_exactly_the_inactivity() -> None:
    core = both_cut(visitor(("land", 0), ("cart", 15)))
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ttc(core, 0, "land") == 15 * S
    core = both_cut(visitor(("land", 0), ("cart", 15.001)))
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert ("f", 10 * S, "cart") not in core.windows  # cart@15.001 starts nothing in v#2
    open_until = both_cut(visitor(("land", 0), ("cart", 15.001)), watermark_ms=20 * S)
    assert counts(open_until, 0, "land") == (1, 0, 0, 1)  # W = 20: the deadline not behind it


def test_i2_one_instant_after_a_gap() -> None:
    core = both_cut(visitor(("land", 0), ("land", 16), ("cart", 16)))
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert counts(core, 10, "land") == (1, 1, 0, 0)
    assert ttc(core, 10, "land") == 0


def test_i3_a_late_event_within_the_lateness_joins_in_its_place() -> None:
    core = both_cut(visitor(("cart", 20, "c"), ("land", 0, "l0"), ("land", 10, "l10")))
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ttc(core, 0, "land") == 20 * S
    core = both_cut(visitor(("cart", 20, "c"), ("land", 0, "l0")))
    assert counts(core, 0, "land") == (1, 0, 1, 0)


def test_i4_abandonments_per_session() -> None:
    core = both_cut(visitor(("land", 0), ("cart", 2), ("land", 30), ("cart", 31)))
    assert sorted(core.abandonments) == [f"f/{V}#2/30000/cart", f"f/{V}/0/cart"]
    assert sorted(a["abandoned_ms"] for a in core.abandonments.values()) == [12 * S, 41 * S]
