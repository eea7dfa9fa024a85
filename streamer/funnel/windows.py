"""Cohort windows: assignment, per-window counts, partials and their merge. Pure.

A step's outcome counts in the window in which the attempt *reached* the stage (its cohort),
whenever the outcome is decided. Each partition keeps the counts of its windows that are not
final yet and sends them whole (a :class:`Partial`, replacing its previous one); merging the
latest partial of every partition gives the window's :class:`WindowCounts`. Longer views (15
min, 1 h) are sums of consecutive windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streamer.funnel.session import Kind, Outcome

__all__ = [
    "LOOKS_PER_WINDOW",
    "NEW_SESSIONS",
    "TIME_TO_CONVERT_BUCKETS_MS",
    "UNKNOWN",
    "Partial",
    "StepCounts",
    "WindowCounts",
    "window_start",
]

# Upper bounds of the time-to-convert histogram (ms); the last bucket is +Inf.
TIME_TO_CONVERT_BUCKETS_MS = (
    1_000,
    5_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    1_800_000,
    3_600_000,
    7_200_000,
    86_400_000,
)
UNKNOWN = "unknown"
# The volume entry counting sessions seen for the first time (not an input's event type): the
# tracking check tells a silent input from the tail of a finished burst with it.
NEW_SESSIONS: tuple[str, str] = ("", "")


# The detector looks at a funnel this many times per window of watermark (docs/alerts.md,
# "Early looks"), so each window's step counts are also kept per slice of that length: the
# slices of the window in progress are complete (and final for their short time-to-convert
# bounds) long before the window is, so a step broken for everyone is seen within seconds.
LOOKS_PER_WINDOW = 4


def window_start(at_ms: int, size_ms: int) -> int:
    return at_ms - at_ms % size_ms


def look_ms(size_ms: int) -> int:
    """The watermark step between two looks of the detector at windows of ``size_ms``, and
    the length of a window's slices (the last slice takes the remainder)."""
    return max(1, size_ms // LOOKS_PER_WINDOW)


def slice_index(at_ms: int, size_ms: int) -> int:
    """The slice of its window that ``at_ms`` falls in."""
    return min((at_ms % size_ms) // look_ms(size_ms), LOOKS_PER_WINDOW - 1)


def _bucket(ms: int) -> int:
    for index, bound in enumerate(TIME_TO_CONVERT_BUCKETS_MS):
        if ms <= bound:
            return index
    return len(TIME_TO_CONVERT_BUCKETS_MS)


@dataclass(slots=True)  # slots: outcomes update several per step, windows hold many
class StepCounts:
    """Counts for one stage (entered) and the step that leaves it (converted, dropped)."""

    entered: int = 0
    converted: int = 0
    dropped: int = 0
    time_to_convert_ms_sum: int = 0
    time_to_convert_buckets: list[int] = field(
        default_factory=lambda: [0] * (len(TIME_TO_CONVERT_BUCKETS_MS) + 1)
    )
    dropped_value: float = 0.0  # cart value of the sessions that dropped
    excluded: int = 0  # attempts whose step an exclusion event ended
    units: int = 0  # funnels counting units: distinct units that entered the stage here

    def add(self, other: StepCounts, sign: int = 1) -> None:
        self.entered += sign * other.entered
        self.converted += sign * other.converted
        self.dropped += sign * other.dropped
        self.time_to_convert_ms_sum += sign * other.time_to_convert_ms_sum
        for index, value in enumerate(other.time_to_convert_buckets):
            self.time_to_convert_buckets[index] += sign * value
        self.dropped_value = round(self.dropped_value + sign * other.dropped_value, 2)
        self.excluded += sign * other.excluded
        self.units += sign * other.units

    def is_empty(self) -> bool:
        return not (self.entered or self.converted or self.dropped or self.excluded)

    @property
    def open(self) -> int:
        """Entered and not decided yet (0 for the last stage, which has no step)."""
        return self.entered - self.converted - self.dropped - self.excluded

    def to_json(self) -> list[Any]:
        raw = [
            self.entered,
            self.converted,
            self.dropped,
            self.time_to_convert_ms_sum,
            list(self.time_to_convert_buckets),
            self.dropped_value,
        ]
        # Only funnels with exclusions or units: others are stored as before.
        if self.excluded or self.units:
            raw.append(self.excluded)
        if self.units:
            raw.append(self.units)
        return raw

    @classmethod
    def from_json(cls, raw: list[Any]) -> StepCounts:
        return cls(
            int(raw[0]),
            int(raw[1]),
            int(raw[2]),
            int(raw[3]),
            [int(x) for x in raw[4]],
            float(raw[5]),
            int(raw[6]) if len(raw) > 6 else 0,
            int(raw[7]) if len(raw) > 7 else 0,
        )


_KEYS_MAX = 65_536  # distinct segment tuples whose keys are kept (as CompiledFunnel.share)
_keys: dict[tuple[str | None, ...], tuple[tuple[int, str], ...]] = {}


def _segment_keys(segments: tuple[str | None, ...]) -> tuple[tuple[int, str], ...]:
    """The counts keys of an outcome's segment values, made once per distinct tuple (open
    sessions share a few)."""
    keys = _keys.get(segments)
    if keys is None:
        keys = tuple(
            (dim, value if value is not None else UNKNOWN) for dim, value in enumerate(segments)
        )
        if len(_keys) < _KEYS_MAX:
            _keys[segments] = keys
    return keys


@dataclass
class WindowCounts:
    """One funnel's counts in one window: per stage, per segment value per stage, and the
    input's volume (accepted events by source and event type, by *event* time: the tracking
    check of :mod:`streamer.funnel.tracking` reads it once the watermark passed the window)."""

    stages: list[StepCounts]
    # (segment dimension index, value) -> per-stage counts (entered/converted/dropped only)
    segments: dict[tuple[int, str], list[StepCounts]] = field(default_factory=dict)
    volume: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, type) -> n
    # Survey answers by their own time: (survey, stage or -1, dimension or -1, value or "",
    # score) -> answers; dimension -1 is the stage's total (docs/satisfaction.md).
    answers: dict[tuple[int, int, int, str, int], int] = field(default_factory=dict)
    # Per stage, its counts per slice of the window (``LOOKS_PER_WINDOW``, by the time the
    # attempt reached the stage): the detector's early looks read them. Empty in counts made
    # without the window's size (and in those stored before them): no early look reads them.
    slices: list[list[StepCounts]] = field(default_factory=list)

    @classmethod
    def empty(cls, stage_count: int) -> WindowCounts:
        return cls([StepCounts() for _ in range(stage_count)])

    def apply(self, outcome: Outcome, window_ms: int | None = None) -> None:
        """Count ``outcome``; with the window's size ``window_ms``, in its slice too."""
        stage = outcome.stage
        if outcome.kind is Kind.ANSWERED:
            survey, score, answers = outcome.time_to_convert_ms, int(outcome.value), self.answers
            for dim, value in ((-1, ""), *_segment_keys(outcome.segments)):
                answer = (survey, stage, dim, value, score)
                answers[answer] = answers.get(answer, 0) + 1
            return
        # The step's counts, then each segment's: segments keep the time-to-convert histogram
        # too (the detector tests a segment's young cohorts at matched age).
        targets = [self.stages[stage]]
        if window_ms is not None:
            if not self.slices:
                self.slices = _empty_slices(len(self.stages))
            targets.append(self.slices[stage][slice_index(outcome.cohort_ms, window_ms)])
        segments = self.segments
        for key in _segment_keys(outcome.segments):
            per_stage = segments.get(key)
            if per_stage is None:
                per_stage = segments[key] = [StepCounts() for _ in self.stages]
            targets.append(per_stage[stage])
        kind = outcome.kind
        if kind is Kind.ENTERED:
            for counts in targets:
                counts.entered += 1
        elif kind is Kind.DROPPED:
            for counts in targets:
                counts.dropped += 1
                counts.dropped_value = round(counts.dropped_value + outcome.value, 2)
        elif kind is Kind.EXCLUDED:
            for counts in targets:
                counts.excluded += 1
        else:
            took = outcome.time_to_convert_ms
            bucket = _bucket(took)
            for counts in targets:
                counts.converted += 1
                counts.time_to_convert_ms_sum += took
                counts.time_to_convert_buckets[bucket] += 1

    def merge(self, other: WindowCounts) -> None:
        for mine, theirs in zip(self.stages, other.stages, strict=True):
            mine.add(theirs)
        for key, per_stage in other.segments.items():
            target = self.segments.setdefault(key, [StepCounts() for _ in self.stages])
            for mine, theirs in zip(target, per_stage, strict=True):
                mine.add(theirs)
        for pair, count in other.volume.items():
            self.volume[pair] = self.volume.get(pair, 0) + count
        for answer, count in other.answers.items():
            self.answers[answer] = self.answers.get(answer, 0) + count
        if other.slices:
            if not self.slices:
                self.slices = _empty_slices(len(self.stages))
            for mine_slices, theirs_slices in zip(self.slices, other.slices, strict=True):
                for mine, theirs in zip(mine_slices, theirs_slices, strict=True):
                    mine.add(theirs)

    def is_empty(self) -> bool:
        return not self.volume and not self.answers and all(step.is_empty() for step in self.stages)

    def to_json(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "stages": [step.to_json() for step in self.stages],
            "segments": [
                [dim, value, [s.to_json() for s in steps]]
                for (dim, value), steps in sorted(self.segments.items())
            ],
            "volume": [[source, kind, n] for (source, kind), n in sorted(self.volume.items())],
        }
        if self.answers:  # only funnels with surveys: others are stored as before
            raw["answers"] = [[*key, n] for key, n in sorted(self.answers.items())]
        if self.slices:
            raw["slices"] = [[s.to_json() for s in per_stage] for per_stage in self.slices]
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WindowCounts:
        counts = cls([StepCounts.from_json(step) for step in raw["stages"]])
        for dim, value, steps in raw["segments"]:
            counts.segments[(int(dim), str(value))] = [StepCounts.from_json(s) for s in steps]
        for source, kind, n in raw.get("volume", ()):  # absent before the tracking check
            counts.volume[(str(source), str(kind))] = int(n)
        for survey, stage, dim, value, score, n in raw.get("answers", ()):
            counts.answers[(int(survey), int(stage), int(dim), str(value), int(score))] = int(n)
        counts.slices = [  # absent before the early looks
            [StepCounts.from_json(s) for s in per_stage] for per_stage in raw.get("slices", ())
        ]
        return counts


def _empty_slices(stage_count: int) -> list[list[StepCounts]]:
    return [[StepCounts() for _ in range(LOOKS_PER_WINDOW)] for _ in range(stage_count)]


@dataclass
class Partial:
    """One partition's counts for one funnel window."""

    funnel: str
    window_start_ms: int
    window_end_ms: int
    partition: int
    counts: WindowCounts

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "partial",
            "funnel": self.funnel,
            "start": self.window_start_ms,
            "end": self.window_end_ms,
            "partition": self.partition,
            "counts": self.counts.to_json(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Partial:
        return cls(
            str(raw["funnel"]),
            int(raw["start"]),
            int(raw["end"]),
            int(raw["partition"]),
            WindowCounts.from_json(raw["counts"]),
        )


def merge_partials(stage_count: int, partials: Iterable[WindowCounts]) -> WindowCounts:
    total = WindowCounts.empty(stage_count)
    for counts in partials:
        total.merge(counts)
    return total


def fold_segments(counts: WindowCounts, caps: list[int]) -> WindowCounts:
    """Keep the ``caps[dim]`` values of each dimension with the most stage entries (ties by
    name); fold the rest into ``other``. Done on the merged window, so it is deterministic."""
    folded = WindowCounts(counts.stages, {}, counts.volume, slices=counts.slices)
    by_dim: dict[int, list[tuple[str, list[StepCounts]]]] = {}
    for (dim, value), steps in counts.segments.items():
        by_dim.setdefault(dim, []).append((value, steps))
    kept: set[tuple[int, str]] = set()
    for dim, values in by_dim.items():
        ranked = sorted(values, key=lambda item: (-sum(s.entered for s in item[1]), item[0]))
        cap = caps[dim] if dim < len(caps) else len(ranked)
        for rank, (value, steps) in enumerate(ranked):
            name = value if rank < cap or value in ("other", UNKNOWN) else "other"
            kept.add((dim, name))
            target = folded.segments.setdefault((dim, name), [StepCounts() for _ in steps])
            for mine, theirs in zip(target, steps, strict=True):
                mine.add(theirs)
    # Answers keep the values the stage entries kept; a value only answers have takes a place
    # left under the cap (in name order), else is other: answers come long after their
    # stage's cohort, so most of a window's answers have values no entry of it has.
    answer_values = sorted({(dim, value) for _, _, dim, value, _ in counts.answers if dim >= 0})
    for dim, value in answer_values:
        places = sum(1 for d, v in kept if d == dim and v not in ("other", UNKNOWN))
        if (dim, value) not in kept and (dim >= len(caps) or places < caps[dim]):
            kept.add((dim, value))
    for (survey, stage, dim, value, score), n in counts.answers.items():
        if dim >= 0 and (dim, value) not in kept and value != UNKNOWN:
            value = "other"
        answer = (survey, stage, dim, value, score)
        folded.answers[answer] = folded.answers.get(answer, 0) + n
    return folded
