"""Order modes and exclusions (docs/funnel-semantics.md, "Order modes", "Exclusion steps")
beyond the comparison with SQL: the funnel file's errors name the file, the line and the
field; any arrival order within the lateness, and a checkpoint and restore anywhere, change
nothing in strict and unordered funnels and funnels with exclusions (an unordered attempt
stores the steps it has done, a window its excluded counts)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.funnel.definition import FunnelDefinitionError, load_funnel
from streamer.funnel.session import CompiledFunnel
from streamer.funnel.task import Task
from streamer.funnel.windows import window_start
from tests.support.core_run import restored_midway, run_core, stored
from tests.unit.test_core_properties import FAST, LATENESS_MS, arrival, sessions
from tests.unit.test_core_vs_sql import MODES

END = 10**12
HEAD = "name: m\nconversion_window: 1h\n"
STAGES = "stages:\n  - {name: a, event_type: page_view}\n  - name: b\n    event_type: search\n"


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        (HEAD + "strict_ignore: [scroll]\n" + STAGES, ":3: strict_ignore: ",
         "strict_ignore applies to order: strict only"),
        (HEAD + "order: strict\nstrict_ignore:\n  - scroll\n  - search\n" + STAGES,
         ":6: strict_ignore.1: ", "'search' is a stage's event type"),
        (HEAD + "order: unordered\n" + STAGES + "    timeout: 5m\n",
         ":8: stages.1.timeout: ", "use the funnel's step_timeout"),
        (HEAD + "order: unordered\nabandonment: [a]\n" + STAGES,
         ":4: abandonment: ", "no abandonment"),
        (HEAD + "order: loose\n" + STAGES, ":3: order: ", "'ordered', 'strict' or 'unordered'"),
        (HEAD + STAGES + "    optional: true\n", ":7: stages.1.optional: ",
         "the first and the last stage cannot be optional"),
        (HEAD + "order: strict\n" + STAGES + "    optional: true\n  - {name: c, event_type: x}\n",
         ":8: stages.1.optional: ", "for ordered funnels only, not strict"),
        (HEAD + STAGES + "    optional: true\n    timeout: 1m\n  - {name: c, event_type: x}\n",
         ":8: stages.1.timeout: ", "the timeout of the required stage before it"),
        ("name: m\nfollows: user\nconversion_window: 91d\n" + STAGES,
         ":3: conversion_window: ", "at most 90d"),
        (HEAD + "exclusions:\n  - {event_type: x, between: [a, z]}\n" + STAGES,
         ":4: exclusions.0.between: ", "names unknown stages ['z']"),
        (HEAD + "exclusions:\n  - {event_type: x, between: [b, a]}\n" + STAGES,
         ":4: exclusions.0.between: ", "'b' must come before 'a'"),
        (HEAD + "exclusions:\n  - event_types: [x, search]\n" + STAGES,
         ":4: exclusions.0.event_types: ", "'search' is a stage's event type"),
        (HEAD + "order: unordered\nexclusions:\n  - {event_type: x, between: [a, b]}\n"
         + STAGES + "  - {name: c, event_type: add_to_cart}\n",
         ":5: exclusions.0.between: ", "span the whole funnel"),
    ],
)  # fmt: skip
def test_mode_errors_name_the_file_the_line_and_the_field(
    tmp_path: Path, text: str, where: str, says: str
) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnel(path)
    assert f"{path}{where}" in str(caught.value)
    assert says in str(caught.value)


def test_the_modes_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(HEAD + "order: strict\nstrict_ignore: [scroll]\n" + STAGES)
    definition = load_funnel(path)
    assert (definition.order, definition.strict_ignore) == ("strict", ("scroll",))
    assert "(session, strict)" in definition.describe()


@given(mode=st.sampled_from(sorted(MODES)), events=sessions(), seed=st.integers(0, 1000))
@FAST
def test_any_arrival_order_gives_the_same_numbers_in_every_mode(
    mode: str, events: list[dict[str, Any]], seed: int
) -> None:
    by_time = sorted(events, key=lambda e: e["at_ms"])
    expected = run_core(MODES[mode], by_time, END, lateness_ms=LATENESS_MS)
    actual = run_core(MODES[mode], arrival(events, seed), END, lateness_ms=LATENESS_MS)
    assert actual.late == []
    assert (actual.windows, actual.segments, actual.abandonments) == (
        expected.windows,
        expected.segments,
        expected.abandonments,
    )


@given(
    mode=st.sampled_from(sorted(MODES)),
    events=sessions(),
    seed=st.integers(0, 1000),
    cut=st.floats(0, 1),
)
@FAST
def test_a_checkpoint_and_restore_anywhere_changes_nothing_in_every_mode(
    mode: str, events: list[dict[str, Any]], seed: int, cut: float
) -> None:
    arriving = arrival(events, seed)
    expected, restored = restored_midway(
        MODES[mode],
        arriving,
        round(cut * len(arriving)),
        lateness_ms=LATENESS_MS,
        watermark_ms=END,
    )
    assert {k: v.to_json() for k, v in restored.windows.items()} == {
        k: v.to_json() for k, v in expected.windows.items()
    }


@given(mode=st.sampled_from(sorted(MODES)), events=sessions())
@FAST
def test_every_entry_is_converted_dropped_excluded_or_open_in_every_mode(
    mode: str, events: list[dict[str, Any]]
) -> None:
    """The undecided entries of each window (entered - converted - dropped - excluded) are
    exactly the attempts still waiting in the sessions, counted from their own state."""
    by_time = sorted(events, key=lambda e: e["at_ms"])
    watermark = max((e["at_ms"] for e in events), default=0)  # not everything decided yet
    funnels = MODES[mode]
    result = run_core(funnels, by_time, watermark)
    task = Task(tuple(CompiledFunnel(f) for f in funnels), 0, retention_ms=END)
    for event in by_time:
        task.offer(event["session_id"], stored(event))
    task.advance(watermark)
    waiting: Counter[tuple[str, int, str]] = Counter()
    for state in task.sessions.values():
        for index, definition in enumerate(funnels):
            attempt = state.progress[index].attempt
            if attempt is not None:
                start = window_start(attempt.reached_ms, definition.window_ms)
                waiting[(definition.name, start, definition.stages[attempt.stage].name)] += 1
    counted: Counter[tuple[str, int, str]] = Counter()
    for key, numbers in result.windows.items():
        undecided = (
            numbers["entered"] - numbers["converted"] - numbers["dropped"] - numbers["excluded"]
        )
        if key[2] != "order":
            assert numbers["open"] == undecided >= 0
            counted[key] = undecided
    assert +counted == +waiting
