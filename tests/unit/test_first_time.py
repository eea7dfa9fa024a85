"""First-time steps (docs/funnel-semantics.md, "First-time steps") beyond the comparison with
SQL: the unit's memory survives a checkpoint and restore anywhere, is stored with its state
(and only for funnels that have first-time stages), and a checkpoint from before the rule
restores with an empty memory; `funnel check` and `show` say which stages are first-time."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamer.funnel.session import (
    NEVER,
    Attempt,
    CompiledFunnel,
    Progress,
    UnitMemory,
    apply_instant,
)
from tests.support.core_run import restored_midway
from tests.support.funnels import MIN, ev, funnel
from tests.unit.test_core_properties import FAST, LATENESS_MS, arrival, sessions
from tests.unit.test_core_vs_sql import NEW_RULES

END = 10**12


@given(events=sessions(), seed=st.integers(0, 1000), cut=st.floats(0, 1))
@FAST
def test_a_checkpoint_and_restore_anywhere_keeps_what_the_unit_has_done(
    events: list[dict[str, Any]], seed: int, cut: float
) -> None:
    arriving = arrival(events, seed)
    expected, restored = restored_midway(
        NEW_RULES["first_time"],
        arriving,
        round(cut * len(arriving)),
        lateness_ms=LATENESS_MS,
        watermark_ms=END,
    )
    assert {k: v.to_json() for k, v in restored.windows.items()} == {
        k: v.to_json() for k, v in expected.windows.items()
    }
    assert {k: s.to_json() for k, s in restored.sessions.items()} == {
        k: s.to_json() for k, s in expected.sessions.items()
    }


def test_the_memory_round_trips_and_old_checkpoints_restore_empty() -> None:
    attempt = Attempt(0, 1, 5, 15, ("ios",), ("ios",))
    remembering = Progress(attempt, NEVER, None, UnitMemory(first_done=0b11, latest_ms=5))
    assert Progress.from_json(remembering.to_json()) == remembering
    # A funnel without first-time stages stores its progress as before the rule.
    plain = Progress(attempt)
    stored = plain.to_json()
    assert stored is not None
    assert len(stored) == 3
    assert Progress.from_json(stored) == plain
    # Idle, but remembering: still stored (else a restore would forget the unit's firsts).
    idle = Progress(memory=UnitMemory(first_done=0b1, latest_ms=7))
    assert Progress.from_json(idle.to_json()) == idle
    # A checkpoint written before the rule: nothing done yet.
    old = Progress.from_json([attempt.to_json(), 3, None])
    assert old.memory is None


def test_a_funnel_without_first_time_stages_or_units_makes_no_memory() -> None:
    # Every open session carries a Progress per funnel: the memory is made only when needed.
    plain, out = Progress(), []
    compiled = CompiledFunnel(funnel())
    for at_ms, event_type in ((0, "page_view"), (MIN, "add_to_cart"), (2 * MIN, "order_placed")):
        apply_instant(compiled, plain, at_ms, [ev(at_ms, event_type)], out)
    assert out  # it did count
    assert plain.memory is None


def test_check_and_show_describe_first_time_stages() -> None:
    described = NEW_RULES["first_time"][0].describe()
    assert "1. landing (first time): page_view" in described
    assert "first time only: landing" in described
