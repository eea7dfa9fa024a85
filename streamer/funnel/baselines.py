"""What the detector compares with: cohorts read from cohort windows (per step, with their
time-to-convert buckets and segment values), and a step's baseline learned from final cohorts
(decayed sums of entered and converted sessions, conversions within each time-to-convert bound,
per segment value smoothed toward the step's)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.windows import TIME_TO_CONVERT_BUCKETS_MS, WindowCounts

__all__ = ["Cohort", "SegmentKey", "StepBaseline", "bound_index", "cohorts_of", "within_bounds"]

SegmentKey = tuple[str, str]
_SMOOTHING = 50.0  # pseudo-sessions pulling a small segment's baseline toward the step's


@dataclass(frozen=True)
class Cohort:
    """One cohort window of one step, as counted so far."""

    start_ms: int
    end_ms: int
    entered: int
    converted: int
    dropped: int
    converted_within: tuple[int, ...]  # conversions within each time-to-convert bound
    dropped_value: float = 0.0
    # (dimension, value) -> (entered, converted, dropped, conversions within each bound)
    segments: Mapping[SegmentKey, tuple[int, int, int, tuple[int, ...]]] = field(
        default_factory=dict
    )


def within_bounds(buckets: Sequence[int]) -> tuple[int, ...]:
    """Conversions within each time-to-convert bound, from the histogram's buckets."""
    out, running = [], 0
    for bucket in buckets[: len(TIME_TO_CONVERT_BUCKETS_MS)]:
        running += bucket
        out.append(running)
    return tuple(out)


def bound_index(age_ms: int) -> int:
    """How many time-to-convert bounds are within ``age_ms``: conversions counted below
    that index happened before the watermark for every member of a cohort that old."""
    index = 0
    while index < len(TIME_TO_CONVERT_BUCKETS_MS) and TIME_TO_CONVERT_BUCKETS_MS[index] <= age_ms:
        index += 1
    return index


def cohorts_of(
    funnel: FunnelDefinition, start_ms: int, counts: WindowCounts, step_index: int
) -> Cohort:
    """Step ``step_index``'s cohort in the window at ``start_ms`` of ``funnel``. Attempts an
    exclusion took out are not in it (``entered`` counts the others): they are out of the
    step's denominator, as in its conversion ratio (docs/funnel-semantics.md, "Exclusion
    steps"), so a baseline neither learns them as failures nor a test expects them to drop."""
    step = counts.stages[step_index]
    names = [segment.name for segment in funnel.segments]
    segments = {}
    for (dim, value), per_stage in counts.segments.items():
        s = per_stage[step_index]
        if s.entered and dim < len(names):
            segments[(names[dim], value)] = (
                s.entered - s.excluded,
                s.converted,
                s.dropped,
                within_bounds(s.time_to_convert_buckets),
            )
    return Cohort(
        start_ms=start_ms,
        end_ms=start_ms + funnel.window_ms,
        entered=step.entered - step.excluded,
        converted=step.converted,
        dropped=step.dropped,
        converted_within=within_bounds(step.time_to_convert_buckets),
        dropped_value=step.dropped_value,
        segments=segments,
    )


@dataclass
class StepBaseline:
    """What a step's final cohorts look like, decayed by a half-life counted in sessions."""

    half_life: float
    entered: float = 0.0
    converted: float = 0.0
    within: list[float] = field(default_factory=lambda: [0.0] * len(TIME_TO_CONVERT_BUCKETS_MS))
    segments: dict[SegmentKey, list[float]] = field(default_factory=dict)  # [entered, converted]

    def learn(self, cohort: Cohort) -> None:
        if not cohort.entered:
            return
        keep = 0.5 ** (cohort.entered / self.half_life)
        self.entered = self.entered * keep + cohort.entered
        self.converted = self.converted * keep + cohort.converted
        self.within = [
            w * keep + c for w, c in zip(self.within, cohort.converted_within, strict=True)
        ]
        for sums in self.segments.values():
            sums[0] *= keep
            sums[1] *= keep
        for key, (entered, converted, _, _) in cohort.segments.items():
            sums = self.segments.setdefault(key, [0.0, 0.0])
            sums[0] += entered
            sums[1] += converted
        if len(self.segments) > 512:  # values long gone: forget the smallest
            # Ties broken by key, not by the dict's order: a restored baseline (its segments
            # loaded in sorted order) must forget the same values as the one that never stopped.
            for key in sorted(self.segments, key=lambda k: (self.segments[k][0], k))[:256]:
                del self.segments[key]

    @property
    def conversion(self) -> float:
        return self.converted / self.entered if self.entered else 0.0

    def segment_conversion(self, key: SegmentKey) -> float:
        entered, converted = self.segments.get(key, (0.0, 0.0))
        return (converted + _SMOOTHING * self.conversion) / (entered + _SMOOTHING)

    def converted_within(self, index: int) -> float:
        """Share of a cohort converted within bound ``index - 1`` (0: none yet)."""
        if index == 0 or not self.entered:
            return 0.0
        return self.within[index - 1] / self.entered

    def to_json(self) -> list[Any]:
        return [
            self.entered,
            self.converted,
            self.within,
            [[d, v, e, c] for (d, v), (e, c) in sorted(self.segments.items())],
        ]

    def load_json(self, raw: list[Any]) -> None:
        self.entered, self.converted = float(raw[0]), float(raw[1])
        self.within = [float(x) for x in raw[2]]
        self.segments = {(str(d), str(v)): [float(e), float(c)] for d, v, e, c in raw[3]}
