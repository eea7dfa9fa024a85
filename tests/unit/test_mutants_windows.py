"""Cohort window counts (docs/funnel-semantics.md, "Counts: cohort windows" and
"Publication"), pinned where the mutation run (docs/mutation-testing.md) found them free to change:
the folding of segment values into ``other``.
"""

from __future__ import annotations

import pytest

from streamer.funnel import windows
from streamer.funnel.session import Kind, Outcome
from streamer.funnel.windows import UNKNOWN, StepCounts, WindowCounts, fold_segments

STAGES = 3


def steps(*entered: int, converted: int = 0, dropped: int = 0) -> list[StepCounts]:
    """Per-stage counts with the given entries (the first stage also converted/dropped)."""
    out = [StepCounts(entered=n) for n in entered]
    out += [StepCounts() for _ in range(STAGES - len(out))]
    out[0].converted = converted
    out[0].dropped = dropped
    return out


def window(segments: dict[tuple[int, str], list[StepCounts]]) -> WindowCounts:
    counts = WindowCounts.empty(STAGES)
    counts.segments = segments
    counts.volume = {("clickstream", "page_view"): 42}
    return counts


def entered(counts: WindowCounts) -> dict[tuple[int, str], list[int]]:
    return {key: [s.entered for s in per_stage] for key, per_stage in counts.segments.items()}


def test_each_dimension_keeps_its_cap_values_with_most_entries_over_all_stages() -> None:
    counts = window(
        {
            (0, "android"): steps(3),  # 3 entries
            (0, "web"): steps(2, 2),  # 4 entries over two stages: ranks first
            (0, "ios"): steps(1, 1, 1),  # 3 entries, tie with android: by name
            (0, "tv"): steps(1, converted=1),  # 1 entry
        }
    )
    folded = fold_segments(counts, [2])
    # kept: web (4), then android (3, before ios by name); ios and tv fold into other
    assert entered(folded) == {
        (0, "web"): [2, 2, 0],
        (0, "android"): [3, 0, 0],
        (0, "other"): [2, 1, 1],
    }
    assert folded.segments[(0, "other")][0].converted == 1


def test_a_cap_of_one_keeps_only_the_most_entered_value() -> None:
    counts = window(
        {
            (0, "a"): steps(1),
            (0, "z"): steps(5),
            (0, "m"): steps(2, dropped=2),
        }
    )
    folded = fold_segments(counts, [1])
    assert entered(folded) == {(0, "z"): [5, 0, 0], (0, "other"): [3, 0, 0]}
    assert folded.segments[(0, "other")][0].dropped == 2


def test_values_within_the_cap_are_kept_as_they_are() -> None:
    counts = window({(0, "a"): steps(1), (0, "b"): steps(2)})
    folded = fold_segments(counts, [2])
    assert entered(folded) == {(0, "a"): [1, 0, 0], (0, "b"): [2, 0, 0]}


def test_other_and_unknown_stay_themselves_and_the_fold_adds_to_other() -> None:
    counts = window(
        {
            (0, "other"): steps(1),  # values outside a segment's list, folded upstream
            (0, UNKNOWN): steps(1),  # the attempt had no value for the dimension
            (0, "a"): steps(9),
            (0, "b"): steps(4),
        }
    )
    folded = fold_segments(counts, [1])
    assert entered(folded) == {
        (0, "a"): [9, 0, 0],
        (0, "other"): [5, 0, 0],
        (0, UNKNOWN): [1, 0, 0],
    }


def test_each_dimension_is_folded_with_its_own_cap() -> None:
    counts = window(
        {
            (0, "a"): steps(3),
            (0, "b"): steps(2),
            (1, "x"): steps(3),
            (1, "y"): steps(2),
            (1, "z"): steps(1),
        }
    )
    folded = fold_segments(counts, [1, 2])
    assert entered(folded) == {
        (0, "a"): [3, 0, 0],
        (0, "other"): [2, 0, 0],
        (1, "x"): [3, 0, 0],
        (1, "y"): [2, 0, 0],
        (1, "other"): [1, 0, 0],
    }


def test_a_dimension_without_a_cap_keeps_every_value() -> None:
    counts = window({(0, "a"): steps(3), (1, "x"): steps(3), (1, "y"): steps(2)})
    folded = fold_segments(counts, [1])
    assert entered(folded) == {
        (0, "a"): [3, 0, 0],
        (1, "x"): [3, 0, 0],
        (1, "y"): [2, 0, 0],
    }


def test_folding_keeps_the_stage_counts_and_the_volume() -> None:
    counts = window({(0, "a"): steps(1), (0, "b"): steps(2)})
    counts.stages = steps(3, converted=1, dropped=1)
    folded = fold_segments(counts, [1])
    assert [s.entered for s in folded.stages] == [3, 0, 0]
    assert folded.stages[0].converted == 1
    assert folded.stages[0].dropped == 1
    assert folded.volume == {("clickstream", "page_view"): 42}


def test_an_outcome_counts_under_each_of_its_segment_values_and_unknown_for_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an empty key cache: the keys are made here, not found from an earlier test
    monkeypatch.setattr(windows, "_keys", {})
    counts = WindowCounts.empty(STAGES)
    counts.apply(Outcome(Kind.ENTERED, 0, 0, 0, ("ios", None)))
    counts.apply(Outcome(Kind.ENTERED, 0, 0, 0, ("ios", None)))  # the second finds them kept
    assert entered(counts) == {(0, "ios"): [2, 0, 0], (1, UNKNOWN): [2, 0, 0]}
    assert [s.entered for s in counts.stages] == [2, 0, 0]
