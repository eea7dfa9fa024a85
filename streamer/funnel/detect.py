"""Drop-off detection on cohort windows, with explanations. Pure: cohorts in, decisions out.
(Its statistics are in :mod:`streamer.funnel.statistics`, its cohorts and baselines in
:mod:`streamer.funnel.baselines`.)

A step's *cohort* is the set of sessions that reached the step's stage in one window. Until the
step's timeout has passed the watermark for every one of them, some are still undecided, so
its drop-off is not known yet. The detector never reads a cohort that is not final as
drop-off. It asks two questions instead, each at every evaluation (one per window of watermark;
a third between them, the early looks):

- **Final cohorts on final numbers.** The cohorts that became final since the last evaluation:
  is their drop rate above the baseline's (one-sided exact binomial tail)?
- **Young cohorts at matched age.** The cohorts of the last ``young_span`` that are not final
  yet: each is ``a`` old (watermark minus its window's end, so every member is at least that
  old). The baseline says which share of a cohort converts within ``a`` (its time-to-convert
  distribution); fewer conversions than that, beyond chance (lower binomial tail, pooled
  over the young cohorts), means the step broke now, long before its timeout expires. Over
  the longer ``ACCUMULATED_SPANS_MS`` the pool also takes the cohorts already final for the
  step that are still held, so a low-volume segment gathers the evidence since its break.
- **Early looks.** ``LOOKS_PER_WINDOW`` times per window of watermark (at the boundaries and
  between them): the step's matched-age test over the *slices* of the windows younger than
  ``min_age`` (the window in progress too), each slice once it is one look old, so a step
  broken for everyone is found within seconds of a window, not two minutes after its start.

The first two are asked of the step and of every segment value (device=ios,
payment_method=paypal, ...) with enough sessions, so a failure confined to one segment is
found by testing that segment. Tests of one evaluation are one family: each is held to
``significance / K`` (Bonferroni, with Tarone's refinement: ``K`` counts only the tests whose
trials could reach that threshold at all), so the false-alert rate is a property of the
detector, not of a test. Each look is one family: the boundary's at ``significance / 2``, each
early look's at an equal share of the other half, so a window of watermark's looks together
false-alert at most ``significance``. A test also needs an effect
worth telling (``min_increase``: the drop rate ``min_increase`` above the baseline's, or the
matched-age conversion share that much below it).

The **baseline** of a step is learned from final cohorts only (not those of an alert): sums of
entered and converted sessions, conversions within each time-to-convert bound, and per segment
value, each decayed with a half-life counted in sessions (``baseline_half_life``). Counting in
sessions, not time, keeps it volume-aware (the night's few sessions do not wash out the day)
and lets it follow the slow drift of conversion with the hour of day. A step is **warming up**
until its baseline holds ``min_baseline_decided`` sessions: no alert before.

Before any of that, the **tracking check** (:mod:`streamer.funnel.tracking`) reads the input's
volume: a topic or event type gone silent is a data-quality alert of its own, and the cohorts
whose conversions it would have carried are not tested or learned from (tracking broke, not
conversion).

An alert on a step: **firing** on the first evaluation with a significant test, ``repeat``
every ``cooldown`` while it lasts, **resolved** after ``resolve_after_windows`` evaluations
without one (window boundaries: an early look never resolves). Its id is
``funnel/step/watermark of the firing evaluation``, so a replay of the
same cohorts gives the same alerts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streamer.funnel.baselines import (
    Cohort,
    SegmentKey,
    StepBaseline,
    bound_index,
    cohorts_of,
    within_bounds,
)
from streamer.funnel.definition import AlertPolicy, FunnelDefinition
from streamer.funnel.statistics import binomial_lower_tail, binomial_tail, family_threshold
from streamer.funnel.tracking import TrackingCheck, TrackingDecision
from streamer.funnel.windows import (
    LOOKS_PER_WINDOW,
    UNKNOWN,
    WindowCounts,
    look_ms,
)

__all__ = [
    "AlertDecision",
    "Cohort",
    "Decision",
    "Explanation",
    "FunnelDetector",
    "StepBaseline",
    "binomial_lower_tail",
    "binomial_tail",
    "bound_index",
    "cohorts_of",
    "family_threshold",
    "held_steps",
]

State = Literal["firing", "repeat", "resolved"]
Basis = Literal["final", "matched_age"]
_MIN_EXPECTED = 5.0  # a test needs this many expected conversions (or drops) to say anything
# Young cohorts are tested over the newest ones (a sudden break shows in the first minutes)
# and over longer spans up to ``young_span`` (a partial one builds up). A span every minute
# up to 6 min: one of them starts near any onset, so a small segment's few failing sessions
# are not diluted by the healthy cohorts before it (the Bonferroni family grows; Tarone's
# refinement keeps the price small).
YOUNG_SPANS_MS = (120_000, 180_000, 240_000, 300_000, 360_000, 600_000)
# Longer spans of the same matched-age test, past ``young_span`` and into the cohorts already
# final for the step but still held for the funnel's slowest step (a window is held until
# ``finality_lag`` past its end, so a span no longer than that always finds its cohorts): a
# low-volume segment (0.4 payments a minute at night) gathers enough sessions since a change
# point to reach significance, where one young span never expects 5 conversions. Tests of the
# same family: Bonferroni with Tarone's count still holds one evaluation's false-alert rate.
ACCUMULATED_SPANS_MS = (1_200_000, 1_800_000)
# Early looks (between window boundaries, and at them for the windows younger than
# ``min_age``) test the step over its newest slices, this many of them: a break's first
# slices alone (not diluted by the healthy ones before it), then with more.
EARLY_SPANS_IN_SLICES = (1, 2, LOOKS_PER_WINDOW, 2 * LOOKS_PER_WINDOW)
# A segment value explains an alert when its failures would be this unlikely at the rate of
# the rest of the step (it fares worse than the rest, not merely holds many sessions).
_WORSE_THAN_STEP = 0.05
# A segment value's final-cohort test needs this many sessions (the step's needs
# ``min_decided``): small values are tested too, the Bonferroni threshold keeps them honest.
_MIN_SEGMENT_DECIDED = 10


@dataclass(frozen=True)
class Explanation:
    dimension: str
    value: str
    share_of_excess: float
    observed_rate: float  # drop rate (final) or share not converted yet (matched age)
    expected_rate: float
    decided: int
    dropped: int
    p_value: float = 1.0


@dataclass(frozen=True)
class AlertDecision:
    state: State
    alert_id: str
    severity: str
    basis: Basis
    start_ms: int  # the cohorts tested: first window's start .. last window's end
    end_ms: int
    evaluated_at_ms: int  # the watermark of the evaluation
    decided: int  # sessions tested
    dropped: int  # of those, dropped (final) or not converted yet (matched age)
    observed_rate: float
    expected_rate: float
    p_value: float
    excess_dropped: float
    dropped_value: float
    explanations: tuple[Explanation, ...]


Decision = AlertDecision | TrackingDecision


def converting_types(funnel: FunnelDefinition, step_index: int) -> frozenset[str]:
    """The event types that can convert step ``step_index``: the next stage's in an ordered or
    strict funnel, also those of the optional stages an attempt may reach instead (up to the
    next required one), and every stage's in an unordered funnel (any step not done yet is
    the next position)."""
    stages = funnel.stages
    if funnel.order == "unordered":
        reachable = stages
    else:
        last = step_index + 1
        while stages[last].optional:
            last += 1
        reachable = stages[step_index + 1 : last + 1]
    return frozenset(t for stage in reachable for t in stage.event_types)


def held_steps(funnel: FunnelDefinition, event_types: Sequence[str]) -> list[str]:
    """The steps converted by ``event_types``: those a silence of them blinds."""
    types = set(event_types)
    return [
        name
        for index, name in enumerate(funnel.step_names)
        if types & converting_types(funnel, index)
    ]


@dataclass(frozen=True)
class _Test:
    """One test of one evaluation: the step (segment None) or one segment value."""

    segment: SegmentKey | None
    basis: Basis
    trials: int
    failures: int  # dropped (final) or not converted yet (matched age)
    expected_rate: float  # of failures
    p_value: float
    effect: float  # observed failure rate minus expected
    start_ms: int = 0  # the cohorts tested: first window's start .. last window's end
    end_ms: int = 0
    min_p: float = 0.0  # the smallest p-value its trials could give (all failed)
    early: bool = False  # an early look's test (on slices)

    @property
    def excess(self) -> float:
        return self.failures - self.trials * self.expected_rate


class _StepState:
    def __init__(self, funnel: FunnelDefinition, step_index: int, policy: AlertPolicy) -> None:
        self.index = step_index
        self.name = funnel.step_names[step_index]
        override = policy.steps.get(self.name)
        abandoning = step_index in funnel.abandonment_stage_indexes
        self.severity = (override.severity if override and override.severity else None) or (
            policy.abandonment_severity if abandoning else policy.severity
        )
        self.min_increase = (override.min_increase if override else None) or policy.min_increase
        self.min_decided = (override.min_decided if override else None) or policy.min_decided
        self.timeout_ms = funnel.step_timeout_ms(step_index)
        self.converting_types = converting_types(funnel, step_index)
        self.baseline = StepBaseline(policy.baseline_half_life)
        self.learned_until_ms = -(2**62)  # start of the newest final cohort seen
        self.alert_id: str | None = None
        self.last_notified_ms = 0
        self.quiet = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.to_json(),
            "learned_until_ms": self.learned_until_ms,
            "alert_id": self.alert_id,
            "last_notified_ms": self.last_notified_ms,
            "quiet": self.quiet,
        }

    def load_json(self, raw: dict[str, Any]) -> None:
        self.baseline.load_json(raw["baseline"])
        self.learned_until_ms = int(raw["learned_until_ms"])
        self.alert_id = raw["alert_id"]
        self.last_notified_ms = int(raw["last_notified_ms"])
        self.quiet = int(raw["quiet"])


class FunnelDetector:
    """The detector of one funnel's steps; ``to_json`` / ``load_json`` persist it."""

    def __init__(self, funnel: FunnelDefinition, looks_per_window: int = LOOKS_PER_WINDOW) -> None:
        self.funnel = funnel
        self.policy = funnel.alerting
        # ``looks_per_window=1``: one evaluation per window and no early looks, as before
        # them (the alert-quality harness measures both; the worker and replay use the default).
        self.looks = looks_per_window
        self.look_ms = look_ms(funnel.window_ms)
        self.steps = [_StepState(funnel, k, self.policy) for k in range(len(funnel.step_names))]
        self.evaluated_ms = -(2**62)
        # The last evaluation's per-test threshold (its family's, after Tarone's pruning):
        # not state, read by the alert-quality harness to place an incident's information limit.
        self.threshold = self.policy.significance
        self.tracking = TrackingCheck(
            funnel.name,
            funnel.window_ms,
            funnel.window_ms + funnel.finality_lag_ms + self.policy.young_span_ms,
            significance=self.policy.significance,
            min_baseline_events=self.policy.min_baseline_events,
            half_life=self.policy.volume_half_life,
        )

    def warming_up(self) -> dict[str, bool]:
        """Per step: True while its baseline holds too few final sessions to judge."""
        return {s.name: s.baseline.entered < self.policy.min_baseline_decided for s in self.steps}

    def evaluate(self, watermark_ms: int, windows: Mapping[int, WindowCounts]) -> list[Decision]:
        """Judge the funnel as of ``watermark_ms`` from its cohort windows (window start ->
        counts; every window not final yet and those that became final since the last call;
        only those a test reads are looked up, so the mapping may compute them on demand).
        Call once per look (``look_ms`` of watermark: ``looks_per_window`` times per window),
        in watermark order: at a window boundary every test, between two only the early
        looks (:meth:`_early_tests`)."""
        if watermark_ms <= self.evaluated_ms:
            return []
        boundary = watermark_ms % self.funnel.window_ms == 0
        if not boundary and self.looks == 1:
            return []
        self.evaluated_ms = watermark_ms
        if not boundary:
            return self._early_look(watermark_ms, windows)
        decisions: list[Decision] = list(self.tracking.evaluate(watermark_ms, windows))
        blinds = self.tracking.blinds
        tests: dict[int, list[_Test]] = {}
        fresh: dict[int, list[Cohort]] = {}
        young_from = watermark_ms - self.policy.young_span_ms
        aged_from = watermark_ms - max(self._matched_age_spans())
        size = self.funnel.window_ms
        ordered = sorted(windows)  # counts are read only for the windows a test reads
        for step in self.steps:
            # Only the windows a test reads: final since the last evaluation, or young.
            # Cohorts whose conversions were due while their events' tracking was (or may
            # be) broken are skipped: neither tested nor learned from.
            # Matched age reads the young cohorts and, over the accumulated spans, those
            # already final for the step (their counts no longer change) that are still held.
            final, aged = [], []
            needs = step.converting_types
            for start in ordered:
                end = start + size
                is_final = end + step.timeout_ms <= watermark_ms
                if is_final and start > step.learned_until_ms:
                    step.learned_until_ms = start
                    if not blinds(needs, start, end + step.timeout_ms):
                        final.append(cohorts_of(self.funnel, start, windows[start], step.index))
                if (
                    start >= (aged_from if is_final else young_from)
                    and watermark_ms - end >= self.policy.min_age_ms
                    and not blinds(needs, start, min(watermark_ms, end + step.timeout_ms))
                ):
                    aged.append(cohorts_of(self.funnel, start, windows[start], step.index))
            fresh[step.index] = final
            if step.severity == "off" or step.baseline.entered < self.policy.min_baseline_decided:
                continue
            tests[step.index] = self._tests(step, final, aged, watermark_ms)
            if self.looks > 1:
                tests[step.index] += self._early_tests(step, windows, watermark_ms)
        threshold = self.threshold = self._family_threshold(tests, boundary=True)
        for step in self.steps:
            step_tests = tests.get(step.index, [])
            firing = [t for t in step_tests if _fires(t, threshold, step.min_increase)]
            decision = self._decide(step, firing, step_tests, fresh[step.index], watermark_ms)
            if decision is not None:
                decisions.append(decision)
            if step.alert_id is None:  # an incident's cohorts are not what normal looks like
                for cohort in fresh[step.index]:
                    step.baseline.learn(cohort)
        return decisions

    def _family_threshold(self, tests: Mapping[int, list[_Test]], *, boundary: bool) -> float:
        """One look's per-test threshold (Tarone's count within the look). A window of
        watermark's ``significance`` is split over its looks (Bonferroni): half for the look at
        its boundary, which runs every test, the other half shared by the early looks between
        (``significance / 6`` each with 4 looks), so all the tests of one window of watermark
        together false-alert at most ``significance``, as one evaluation per window did."""
        significance = self.policy.significance
        if self.looks > 1:
            significance /= 2 if boundary else 2 * (self.looks - 1)
        return family_threshold(significance, [t.min_p for ts in tests.values() for t in ts])

    def _early_look(self, watermark_ms: int, windows: Mapping[int, WindowCounts]) -> list[Decision]:
        """A look between two window boundaries: only the early tests, which may fire (or
        keep an alert firing) but never resolve one; nothing is learned."""
        tests: dict[int, list[_Test]] = {}
        for step in self.steps:
            if step.severity == "off" or step.baseline.entered < self.policy.min_baseline_decided:
                continue
            tests[step.index] = self._early_tests(step, windows, watermark_ms)
        threshold = self.threshold = self._family_threshold(tests, boundary=False)
        decisions: list[Decision] = []
        for step in self.steps:
            step_tests = tests.get(step.index, [])
            firing = [t for t in step_tests if _fires(t, threshold, step.min_increase)]
            decision = self._decide(step, firing, step_tests, [], watermark_ms, early=True)
            if decision is not None:
                decisions.append(decision)
        return decisions

    # --- tests -------------------------------------------------------------------------------
    def _early_tests(
        self, step: _StepState, windows: Mapping[int, WindowCounts], watermark_ms: int
    ) -> list[_Test]:
        """The step's matched-age test over the slices of the windows younger than
        ``min_age`` (the young test does not read them yet), the window in progress too, each
        slice at its own age once it is one look old: its conversions within the bounds that
        age reaches all happened before the watermark, so every revision from this watermark
        on gives the same count, as for a whole window. Over the newest slice, then more of
        them (``EARLY_SPANS_IN_SLICES``). The step only: segments have no slices."""
        size, look = self.funnel.window_ms, self.look_ms
        pieces: list[tuple[int, int, int, tuple[int, ...]]] = []  # start, end, trials, within
        for start in sorted(windows):
            end = start + size
            if start >= watermark_ms or watermark_ms - end >= self.policy.min_age_ms:
                continue
            slices = windows[start].slices
            if not slices:
                continue  # counts kept without slices (stored before them)
            for k, counts in enumerate(slices[step.index]):
                piece_start = start + k * look
                piece_end = end if k == LOOKS_PER_WINDOW - 1 else piece_start + look
                if watermark_ms - piece_end < look or self.tracking.blinds(
                    step.converting_types,
                    piece_start,
                    min(watermark_ms, piece_end + step.timeout_ms),
                ):
                    continue
                within = within_bounds(counts.time_to_convert_buckets)
                pieces.append((piece_start, piece_end, counts.entered - counts.excluded, within))
        out: list[_Test] = []
        seen = 0
        for span in EARLY_SPANS_IN_SLICES:
            recent = pieces[-span:]
            if not recent or len(recent) == seen:
                continue
            seen = len(recent)
            trials = converted = 0
            expected = 0.0
            for _, piece_end, entered, within in recent:
                index = bound_index(watermark_ms - piece_end)
                trials += entered
                converted += within[index - 1] if index else 0
                expected += entered * step.baseline.converted_within(index)
            span_ms = (recent[0][0], recent[-1][1])
            out.extend(
                dataclasses.replace(test, early=True)
                for test in self._lower(None, trials, converted, expected, step, span_ms)
            )
        return out

    def _matched_age_spans(self) -> list[int]:
        """The spans of the matched-age test, shortest first: every minute near an onset up
        to ``young_span``, then the accumulated spans the held windows cover."""
        full = self.policy.young_span_ms
        held = self.funnel.finality_lag_ms
        longer = {s for s in ACCUMULATED_SPANS_MS if full < s <= held}
        return sorted({s for s in YOUNG_SPANS_MS if s < full} | {full} | longer)

    def _tests(
        self, step: _StepState, final: list[Cohort], aged: list[Cohort], watermark_ms: int
    ) -> list[_Test]:
        baseline = step.baseline
        out: list[_Test] = []
        # "unknown" (no value at stage entry) explains nothing; "other" folds rare values.
        segment_keys = sorted(
            {key for c in final + aged for key in c.segments if key[1] != UNKNOWN}
        )
        # Final cohorts: drops against the baseline's drop rate.
        if final:
            drop_rate = 1.0 - baseline.conversion
            trials = sum(c.entered for c in final)
            dropped = sum(c.dropped for c in final)
            span = (final[0].start_ms, final[-1].end_ms)
            out.extend(self._upper(None, trials, dropped, drop_rate, step, span))
            for key in segment_keys:
                parts = [c.segments[key] for c in final if key in c.segments]
                seg_rate = 1.0 - baseline.segment_conversion(key)
                seg_entered = sum(part[0] for part in parts)
                seg_dropped = sum(part[2] for part in parts)
                out.extend(self._upper(key, seg_entered, seg_dropped, seg_rate, step, span))
        # Young cohorts: conversions within the largest time-to-convert bound their age
        # reaches (all of them happened before the watermark, so every revision from this
        # watermark on gives the same count) against the baseline's share within that bound.
        # Over the newest few cohorts (a sudden break) and the whole young span (a slow one).
        conversion = baseline.conversion or 1.0
        ratios = {key: baseline.segment_conversion(key) / conversion for key in segment_keys}
        seen = 0
        for span_ms in self._matched_age_spans():
            recent = [c for c in aged if c.start_ms >= watermark_ms - span_ms]
            if len(recent) == seen or all(
                c.end_ms + step.timeout_ms <= watermark_ms for c in recent
            ):
                continue  # the shorter span's cohorts, or final ones only: the final test's
            seen = len(recent)
            indexes = [bound_index(watermark_ms - c.end_ms) for c in recent]
            shares = [baseline.converted_within(i) for i in indexes]
            trials = sum(c.entered for c in recent)
            converted = sum(
                c.converted_within[i - 1] if i else 0 for c, i in zip(recent, indexes, strict=True)
            )
            expected = sum(c.entered * e for c, e in zip(recent, shares, strict=True))
            span = (recent[0].start_ms, recent[-1].end_ms)
            out.extend(self._lower(None, trials, converted, expected, step, span))
            for key in segment_keys:
                ratio = ratios[key]
                seg_trials = seg_converted = 0
                seg_expected = 0.0
                for c, i, e in zip(recent, indexes, shares, strict=True):
                    part = c.segments.get(key)
                    if part is None:
                        continue
                    seg_trials += part[0]
                    seg_converted += part[3][i - 1] if i else 0
                    seg_expected += part[0] * min(1.0, e * ratio)
                out.extend(self._lower(key, seg_trials, seg_converted, seg_expected, step, span))
        return out

    def _upper(
        self,
        key: SegmentKey | None,
        trials: int,
        dropped: int,
        rate: float,
        step: _StepState,
        span: tuple[int, int],
    ) -> list[_Test]:
        if trials < (step.min_decided if key is None else _MIN_SEGMENT_DECIDED):
            return []
        p_value = binomial_tail(dropped, trials, rate)
        effect = dropped / trials - rate
        min_p = rate**trials
        return [_Test(key, "final", trials, dropped, rate, p_value, effect, *span, min_p)]

    def _lower(
        self,
        key: SegmentKey | None,
        trials: int,
        converted: int,
        expected_conversions: float,
        step: _StepState,
        span: tuple[int, int],
    ) -> list[_Test]:
        if expected_conversions < _MIN_EXPECTED:
            return []
        share = expected_conversions / trials
        p_value = binomial_lower_tail(converted, trials, share)
        not_converted = trials - converted
        return [
            _Test(
                key,
                "matched_age",
                trials,
                not_converted,
                1.0 - share,
                p_value,
                not_converted / trials - (1.0 - share),
                *span,
                (1.0 - share) ** trials,
            )
        ]

    # --- lifecycle ---------------------------------------------------------------------------
    def _decide(
        self,
        step: _StepState,
        firing: list[_Test],
        tests: list[_Test],
        final: list[Cohort],
        watermark_ms: int,
        *,
        early: bool = False,
    ) -> AlertDecision | None:
        """The step's alert after one look (``early``: between window boundaries, where a
        look without a firing test counts for nothing: ``resolve_after_windows`` counts
        window boundaries)."""
        if step.alert_id is None:
            if not firing:
                return None
            step.alert_id = f"{self.funnel.name}/{step.name}/{watermark_ms}"
            step.last_notified_ms = watermark_ms
            step.quiet = 0
            return self._decision("firing", step, firing, tests, final, watermark_ms)
        if firing:
            step.quiet = 0
            if watermark_ms - step.last_notified_ms >= self.policy.cooldown_ms:
                step.last_notified_ms = watermark_ms
                return self._decision("repeat", step, firing, tests, final, watermark_ms)
            return None
        if early:
            return None
        step.quiet += 1
        if step.quiet < self.policy.resolve_after_windows:
            return None
        decision = self._decision("resolved", step, firing, tests, final, watermark_ms)
        step.alert_id = None
        return decision

    def _decision(
        self,
        state: State,
        step: _StepState,
        firing: list[_Test],
        tests: list[_Test],
        final: list[Cohort],
        watermark_ms: int,
    ) -> AlertDecision:
        assert step.alert_id is not None
        # The headline: the step's own test if it fired, else the strongest segment's; when
        # resolved, the step's tests as they are now.
        pool = firing or [t for t in tests if t.segment is None]
        head = min(pool, key=lambda t: (t.segment is not None, t.p_value)) if pool else None
        explanations: tuple[Explanation, ...] = ()
        if state != "resolved" and head is not None:
            explanations = _explain(head, firing, tests)
        return AlertDecision(
            state=state,
            alert_id=step.alert_id,
            severity=step.severity,
            basis=head.basis if head else "final",
            start_ms=head.start_ms if head else watermark_ms,
            end_ms=head.end_ms if head else watermark_ms,
            evaluated_at_ms=watermark_ms,
            decided=head.trials if head else 0,
            dropped=head.failures if head else 0,
            observed_rate=head.failures / head.trials if head and head.trials else 0.0,
            expected_rate=head.expected_rate if head else 0.0,
            p_value=head.p_value if head else 1.0,
            excess_dropped=max(0.0, head.excess) if head else 0.0,
            dropped_value=sum(c.dropped_value for c in final),
            explanations=explanations,
        )

    # --- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "evaluated_ms": self.evaluated_ms,
            "steps": [s.to_json() for s in self.steps],
            "tracking": self.tracking.to_json(),
        }

    def seed(self) -> dict[str, Any]:
        """What a backfill hands to the live worker: the baselines learned from history,
        without the history's alerts or tracking outages (an incident of the past is not
        one of now)."""
        state = self.to_json()
        for step in state["steps"]:
            step.update(alert_id=None, last_notified_ms=0, quiet=0)
        tracking = state["tracking"]
        tracking.update(runs=[], closed=[])
        return state

    def load_json(self, raw: dict[str, Any]) -> None:
        self.evaluated_ms = int(raw["evaluated_ms"])
        for step, saved in zip(self.steps, raw["steps"], strict=False):
            step.load_json(saved)
        if "tracking" in raw:  # absent in state stored before the tracking check
            self.tracking.load_json(raw["tracking"])


def _fires(test: _Test, threshold: float, min_increase: float) -> bool:
    """Whether ``test`` is significant with an effect worth telling. An early look's test
    (the step's, on slices) also needs half of the conversions expected by then missing: the
    failure of nearly everyone, which no segment explains; a partial failure, which one may,
    is left to the boundary's tests, which name the segment."""
    if test.p_value >= threshold or test.effect < min_increase:
        return False
    return not test.early or test.effect >= (1.0 - test.expected_rate) / 2


def _explain(
    head: _Test, firing: Sequence[_Test], tests: Sequence[_Test]
) -> tuple[Explanation, ...]:
    """Segment values carrying the excess over the head test's cohorts: those whose own test
    fired first, then the others, most significant first."""

    def same(t: _Test) -> bool:  # the head's cohorts: the same basis and span
        return t.basis == head.basis and (t.start_ms, t.end_ms) == (head.start_ms, head.end_ms)

    step_test = next((t for t in tests if t.segment is None and same(t)), None)
    step_excess = step_test.excess if step_test else 0.0
    fired = {id(t) for t in firing}

    def against_step(t: _Test) -> float:
        """How unlikely this value's failures are at the rate of the rest of the step now."""
        if step_test is None or step_test.trials <= t.trials:
            return 0.0 if step_test is None else 1.0
        rest = (step_test.failures - t.failures) / (step_test.trials - t.trials)
        return binomial_tail(t.failures, t.trials, max(rest, 1e-9))

    # A value explains the alert only if it fares worse than the step as a whole right now
    # (a step broken for everyone has no explanation: it is everywhere), most unlikely first:
    # a value where the failure concentrates beats a big value that merely holds many of the
    # failing sessions (country=DE next to payment_method=paypal).
    scored = [
        (against_step(t), t) for t in tests if t.segment is not None and same(t) and t.excess > 0
    ]
    candidates = [t for p, t in sorted(scored, key=lambda pair: pair[0]) if p < _WORSE_THAN_STEP]
    candidates.sort(key=lambda t: id(t) not in fired)  # stable: fired ones first
    out: list[Explanation] = []
    named: set[SegmentKey] = set()
    for t in candidates:
        assert t.segment is not None
        if t.segment in named:
            continue  # the same value tested over a longer span
        named.add(t.segment)
        if len(out) == 3:
            break
        denominator = step_excess if step_excess > 0 else t.excess
        out.append(
            Explanation(
                dimension=t.segment[0],
                value=t.segment[1],
                share_of_excess=min(1.0, t.excess / denominator),
                observed_rate=t.failures / t.trials,
                expected_rate=t.expected_rate,
                decided=t.trials,
                dropped=t.failures,
                p_value=t.p_value,
            )
        )
    return tuple(out)
