"""Drop-off spike detection on final windows, with explanations. Pure: windows in, alerts out.

For every step of a funnel the detector keeps a baseline: the decided and dropped sessions of
the last ``baseline_windows`` windows that were not part of an alert. A window is a *spike*
when it has enough decided sessions, its drop rate is at least ``min_increase`` above the
baseline rate, and a one-sided exact binomial test says that many drops would happen by chance
with probability below ``significance``. So 2 of 4 sessions dropping at night says nothing,
while a 30% jump at normal volume fires within the window it happens in.

Lifecycle of an alert on one step: **firing** on the first spike; **repeat** if it is still a
spike after ``cooldown``; **resolved** after ``resolve_after_windows`` windows at baseline. Its
id is ``funnel/step/start of the first window``, so a replay of the same windows gives the same
alerts.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from streamer.funnel.definition import AlertPolicy, FunnelDefinition

__all__ = [
    "AlertDecision",
    "Explanation",
    "StepDetector",
    "StepWindow",
    "binomial_tail",
    "explain",
]

State = Literal["firing", "repeat", "resolved"]
_SMOOTHING = 20.0  # pseudo-sessions pulling a small segment's baseline toward the step's


def binomial_tail(successes: int, trials: int, rate: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, rate), exact (log space)."""
    if successes <= 0:
        return 1.0
    if successes > trials:
        return 0.0
    if rate <= 0.0:
        return 0.0
    if rate >= 1.0:
        return 1.0
    log_rate, log_rest = math.log(rate), math.log1p(-rate)
    log_n = math.lgamma(trials + 1)
    terms = [
        log_n
        - math.lgamma(k + 1)
        - math.lgamma(trials - k + 1)
        + k * log_rate
        + (trials - k) * log_rest
        for k in range(successes, trials + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@dataclass(frozen=True)
class StepWindow:
    """One window of one step: decided sessions, drops, and the same per segment value."""

    start_ms: int
    end_ms: int
    decided: int
    dropped: int
    dropped_value: float = 0.0
    segments: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.dropped / self.decided if self.decided else 0.0


@dataclass(frozen=True)
class Explanation:
    dimension: str
    value: str
    share_of_excess: float
    observed_rate: float
    expected_rate: float
    decided: int
    dropped: int


@dataclass(frozen=True)
class AlertDecision:
    state: State
    alert_id: str
    severity: str
    window: StepWindow
    expected_rate: float
    p_value: float
    excess_dropped: float
    explanations: tuple[Explanation, ...]


def explain(
    window: StepWindow, baseline: list[StepWindow], expected_rate: float, top: int = 3
) -> tuple[Explanation, ...]:
    """Segment values that hold most of the window's excess drops, biggest share first.

    Each dimension splits the same sessions, so shares are per dimension; a value whose sessions
    drop as usual has a share near its size times nothing, and the broken one near 100%."""
    excess = window.dropped - window.decided * expected_rate
    if excess <= 0:
        return ()
    base: dict[tuple[str, str], list[int]] = {}
    for past in baseline:
        for key, (decided, dropped) in past.segments.items():
            entry = base.setdefault(key, [0, 0])
            entry[0] += decided
            entry[1] += dropped
    found = []
    for (dimension, value), (decided, dropped) in window.segments.items():
        if value == "unknown" or decided == 0:
            continue
        past_decided, past_dropped = base.get((dimension, value), [0, 0])
        rate = (past_dropped + _SMOOTHING * expected_rate) / (past_decided + _SMOOTHING)
        segment_excess = dropped - decided * rate
        if segment_excess <= 0:
            continue
        found.append(
            Explanation(
                dimension,
                value,
                min(1.0, segment_excess / excess),
                dropped / decided,
                rate,
                decided,
                dropped,
            )
        )
    found.sort(key=lambda e: (-e.share_of_excess, e.dimension, e.value))
    return tuple(found[:top])


class StepDetector:
    """The detector of one funnel step; ``to_json`` / ``from_json`` persist it in a table."""

    def __init__(self, funnel: FunnelDefinition, step_index: int) -> None:
        self.funnel = funnel
        self.step_index = step_index
        self.step = funnel.step_names[step_index]
        policy: AlertPolicy = funnel.alerting
        override = policy.steps.get(self.step)
        abandoning = step_index in funnel.abandonment_stage_indexes
        self.severity = (override.severity if override and override.severity else None) or (
            policy.abandonment_severity if abandoning else policy.severity
        )
        self.min_increase = (override.min_increase if override else None) or policy.min_increase
        self.min_decided = (override.min_decided if override else None) or policy.min_decided
        self.policy = policy
        self.baseline: deque[StepWindow] = deque(maxlen=policy.baseline_windows)
        self.alert_id: str | None = None
        self.last_notified_ms = 0
        self.quiet_windows = 0

    def expected_rate(self) -> float | None:
        decided = sum(w.decided for w in self.baseline)
        if decided < self.policy.min_baseline_decided:
            return None
        return sum(w.dropped for w in self.baseline) / decided

    def _is_spike(self, window: StepWindow, expected: float) -> tuple[bool, float]:
        if window.decided < self.min_decided:
            return False, 1.0
        p_value = binomial_tail(window.dropped, window.decided, expected)
        spike = window.rate - expected >= self.min_increase and p_value < self.policy.significance
        return spike, p_value

    def observe(self, window: StepWindow) -> AlertDecision | None:
        """Feed the step's next window (in window order); return what to tell people, if any."""
        if self.severity == "off":
            self.baseline.append(window)
            return None
        expected = self.expected_rate()
        if expected is None:  # still learning what normal looks like
            self.baseline.append(window)
            return None
        spike, p_value = self._is_spike(window, expected)
        if self.alert_id is None:
            if not spike:
                self.baseline.append(window)
                return None
            self.alert_id = f"{self.funnel.name}/{self.step}/{window.start_ms}"
            self.last_notified_ms = window.end_ms
            self.quiet_windows = 0
            return self._decision("firing", window, expected, p_value)
        if spike:
            self.quiet_windows = 0
            if window.end_ms - self.last_notified_ms >= self.policy.cooldown_ms:
                self.last_notified_ms = window.end_ms
                return self._decision("repeat", window, expected, p_value)
            return None
        if window.decided < self.min_decided:
            return None  # too few sessions to say it is over
        if window.rate - expected >= self.min_increase / 2:
            self.quiet_windows = 0  # better, not back to normal
            return None
        self.quiet_windows += 1
        if self.quiet_windows < self.policy.resolve_after_windows:
            return None
        decision = self._decision("resolved", window, expected, p_value)
        self.alert_id = None
        self.baseline.append(window)
        return decision

    def _decision(
        self, state: State, window: StepWindow, expected: float, p_value: float
    ) -> AlertDecision:
        assert self.alert_id is not None
        explanations = explain(window, list(self.baseline), expected) if state != "resolved" else ()
        return AlertDecision(
            state=state,
            alert_id=self.alert_id,
            severity=self.severity,
            window=window,
            expected_rate=expected,
            p_value=p_value,
            excess_dropped=max(0.0, window.dropped - window.decided * expected),
            explanations=explanations,
        )

    # --- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": [
                [
                    w.start_ms,
                    w.end_ms,
                    w.decided,
                    w.dropped,
                    w.dropped_value,
                    [[d, v, n, x] for (d, v), (n, x) in sorted(w.segments.items())],
                ]
                for w in self.baseline
            ],
            "alert_id": self.alert_id,
            "last_notified_ms": self.last_notified_ms,
            "quiet_windows": self.quiet_windows,
        }

    def load_json(self, raw: dict[str, Any]) -> None:
        self.baseline.clear()
        for start, end, decided, dropped, value, segments in raw["baseline"]:
            self.baseline.append(
                StepWindow(
                    start, end, decided, dropped, value, {(d, v): (n, x) for d, v, n, x in segments}
                )
            )
        self.alert_id = raw["alert_id"]
        self.last_notified_ms = int(raw["last_notified_ms"])
        self.quiet_windows = int(raw["quiet_windows"])
