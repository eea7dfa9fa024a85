"""Uniques and totals (docs/funnel-semantics.md, "Uniques and totals") beyond the comparison
with SQL: a unit whose state the worker could forget mid-window is still counted once, the
window records carry `units` only for funnels that count them (other records are unchanged),
the stored counts and state round-trip, and `funnel show` and `check` present them."""

from __future__ import annotations

from typing import Any

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import CompiledFunnel, Progress
from streamer.funnel.task import Task
from streamer.funnel.windows import StepCounts, WindowCounts
from streamer.pipeline.merger import window_stats
from streamer.query import FunnelView
from tests.oracle import compute
from tests.support.compare import assert_same
from tests.support.core_run import run_core

S = 1000
END = 10**12


def funnel(**extra: Any) -> FunnelDefinition:
    return FunnelDefinition.model_validate(
        {"name": "u", "conversion_window": "60s", "window": "10s", "order": "strict",
         "stages": [{"name": "land", "event_type": "page_view"},
                    {"name": "cart", "event_type": "add_to_cart"}], **extra}
    )  # fmt: skip


def event(session: str, event_id: str, event_type: str, seconds: float) -> dict[str, Any]:
    return {"session_id": session, "event_id": event_id, "event_type": event_type,
            "at_ms": round(seconds * S), "properties": {}, "context": {}}  # fmt: skip


def test_a_unit_forgotten_within_a_window_would_count_twice_so_the_window_outlives_it() -> None:
    """Session s lands at 0 and its strict attempt breaks at 1 (at rest); another session
    moves the watermark past s's retention (5 s) before s lands again at 8, in the same
    10 s window: s must count once there."""
    definition = funnel(uniques=True)
    events = [
        event("s", "1", "page_view", 0),
        event("s", "2", "product_view", 1),
        event("t", "3", "product_view", 7),
        event("s", "4", "page_view", 8),
    ]
    core = run_core([definition], events, END, retention_ms=5 * S)
    sql = compute([definition], events, END, 5 * S)
    assert_same("windows", sql.windows, core.windows)
    assert (core.windows[("u", 0, "land")]["entered"], core.windows[("u", 0, "land")]["units"]) == (
        2,
        1,
    )
    assert Task((CompiledFunnel(definition),), 0, retention_ms=5 * S).retention_ms == 10 * S
    assert Task((CompiledFunnel(funnel()),), 0, retention_ms=5 * S).retention_ms == 5 * S


def test_records_carry_units_only_for_funnels_that_count_them() -> None:
    counts = WindowCounts.empty(2)
    counts.stages[0] = StepCounts(entered=3, dropped=3, units=2)
    counted = window_stats(funnel(uniques=True), 0, 1, counts, watermark_ms=END)
    assert [stage.units for stage in counted.stages] == [2, 0]
    plain = window_stats(funnel(), 0, 1, counts, watermark_ms=END)
    assert '"units"' not in plain.model_dump_json()  # other funnels' records as before
    view = FunnelView()
    view.add(counted)
    rows = view.summary()["u"]["last_window"]["stages"]
    assert [row.get("units") for row in rows] == [2, 0]


def test_counts_and_state_round_trip_and_stay_as_before_without_units() -> None:
    with_units = StepCounts(entered=3, converted=1, dropped=1, units=2)
    assert StepCounts.from_json(with_units.to_json()) == with_units
    assert len(StepCounts(entered=3).to_json()) == 6
    progress = Progress()
    assert progress.first_entry_of_unit(0, 10 * S)
    assert not progress.first_entry_of_unit(0, 10 * S)
    assert Progress.from_json(progress.to_json()) == progress
    assert progress.first_entry_of_unit(0, 20 * S)  # a later window: counted again


def test_check_and_show_say_the_funnel_counts_units() -> None:
    assert "counts sessions too" in funnel(uniques=True).describe()
    assert "counts users too" in funnel(uniques=True, follows="user").describe()
