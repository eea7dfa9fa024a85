"""Satisfaction scores and the low-score alert. Pure: counts in, figures and decisions out.

A survey is CSAT (scores 1 to 5) or NPS (0 to 10). Its figures over some answers: the score
distribution, the CSAT share of 4 and 5, and the NPS (promoters 9-10 minus detractors 0-6, in
percent of the answers). An answer is **low** when it is a CSAT 1 or 2 or an NPS detractor.

The **low-score alert** has the drop-off detector's discipline (:mod:`streamer.funnel.detect`):
each subject (a survey at a stage, or at a stage and segment value: whatever key the caller
counts by) learns the share of low answers from its own past windows, decayed with a
half-life counted in answers (the night's few answers do not wash out the day); it is
**warming up** until that baseline holds ``min_baseline_answers``. After every window the
answers of the last 1, 3, 6 and 12 windows are tested against the baseline: is their low share
``min_increase`` (absolute) above it, beyond chance (one-sided exact binomial tail)? All tests
of one evaluation are one family held to ``significance`` (Bonferroni with Tarone's
refinement, :func:`streamer.funnel.statistics.family_threshold`). A window enters the baseline
once it is older than the longest span and only when its subject is not alerting (a fault is
not learned as normal). ``firing`` on the first significant evaluation, ``resolved`` after
``resolve_after_windows`` evaluations without one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from streamer.funnel.statistics import binomial_tail, family_threshold

__all__ = [
    "LOW_SCORE_SPANS",
    "SCORE_RANGE",
    "LowScoreDecision",
    "LowScoreDetector",
    "LowScorePolicy",
    "Scores",
    "SubjectKey",
    "is_low",
    "scores_by_subject",
]

SurveyKind = Literal["csat", "nps"]
SCORE_RANGE: dict[str, tuple[int, int]] = {"csat": (1, 5), "nps": (0, 10)}
# Windows pooled by the tests of one evaluation: a sharp fault shows in one window, a mild one
# needs the answers of a dozen (answers come far more slowly than funnel events).
LOW_SCORE_SPANS = (1, 3, 6, 12)


def is_low(kind: SurveyKind, score: int) -> bool:
    """CSAT 1-2; NPS 0-6 (a detractor)."""
    return score <= 2 if kind == "csat" else score <= 6


@dataclass
class Scores:
    """One survey's answers: how many gave each score."""

    kind: SurveyKind
    counts: dict[int, int] = field(default_factory=dict)

    def add(self, score: int, n: int = 1) -> None:
        low, high = SCORE_RANGE[self.kind]
        if not low <= score <= high:
            raise ValueError(f"a {self.kind} score is {low} to {high}, not {score}")
        self.counts[score] = self.counts.get(score, 0) + n

    @property
    def answers(self) -> int:
        return sum(self.counts.values())

    @property
    def low(self) -> int:
        return sum(n for score, n in self.counts.items() if is_low(self.kind, score))

    def nps(self) -> float | None:
        """Promoters (9-10) minus detractors (0-6), in percent of the answers."""
        if self.kind != "nps" or not self.answers:
            return None
        promoters = sum(n for score, n in self.counts.items() if score >= 9)
        return 100.0 * (promoters - self.low) / self.answers

    def satisfied_share(self) -> float | None:
        """CSAT: the share of 4 and 5."""
        if self.kind != "csat" or not self.answers:
            return None
        return sum(n for score, n in self.counts.items() if score >= 4) / self.answers


# (survey index, stage index or -1 for none yet, segment dimension or -1 for the stage's
# total, segment value or ""): the key of :attr:`WindowCounts.answers` without the score.
SubjectKey = tuple[int, int, int, str]


def scores_by_subject(
    answers: Mapping[tuple[int, int, int, str, int], int], kinds: list[SurveyKind]
) -> dict[SubjectKey, Scores]:
    """A window's answer counts (:attr:`streamer.funnel.windows.WindowCounts.answers`) as the
    scores of each survey at each stage and segment value; ``kinds``: each survey's kind."""
    out: dict[SubjectKey, Scores] = {}
    for (survey, stage, dim, value, score), n in answers.items():
        key = (survey, stage, dim, value)
        scores = out.get(key)
        if scores is None:
            scores = out[key] = Scores(kinds[survey])
        scores.add(score, n)
    return out


@dataclass(frozen=True)
class LowScorePolicy:
    significance: float = 1e-6  # the family's false-alert rate per evaluation, as the detector
    min_increase: float = 0.05  # absolute rise of the low share worth telling (5 points)
    min_answers: int = 20  # answers a test needs
    min_baseline_answers: int = 300
    baseline_half_life: float = 2000.0  # answers after which a window weighs half
    resolve_after_windows: int = 3


@dataclass(frozen=True)
class LowScoreDecision:
    subject: Hashable
    state: Literal["firing", "resolved"]
    evaluated_at_ms: int
    observed_share: float  # the low share of the span that fired (resolved: of the last window)
    expected_share: float  # the baseline's
    answers: int
    low: int
    p_value: float
    fired_at_ms: int = 0  # the evaluation that fired (a resolution names the alert it ends)


@dataclass
class _Subject:
    baseline_answers: float = 0.0
    baseline_low: float = 0.0
    recent: list[tuple[int, int]] = field(default_factory=list)  # newest last, (answers, low)
    firing: bool = False
    quiet_windows: int = 0
    fired_at_ms: int = 0

    def to_json(self) -> list[Any]:
        return [
            self.baseline_answers,
            self.baseline_low,
            [list(pair) for pair in self.recent],
            self.firing,
            self.quiet_windows,
            self.fired_at_ms,
        ]

    @classmethod
    def from_json(cls, raw: list[Any]) -> _Subject:
        answers, low, recent, firing, quiet, fired_at = raw
        return cls(
            float(answers),
            float(low),
            [(int(a), int(k)) for a, k in recent],
            bool(firing),
            int(quiet),
            int(fired_at),
        )

    def learn(self, answers: int, low: int, half_life: float) -> None:
        keep = 0.5 ** (answers / half_life)
        self.baseline_answers = self.baseline_answers * keep + answers
        self.baseline_low = self.baseline_low * keep + low


class LowScoreDetector:
    """Judges each subject's low share once per window (``evaluate``, windows in order)."""

    def __init__(self, policy: LowScorePolicy | None = None) -> None:
        self.policy = policy or LowScorePolicy()
        self._subjects: dict[Hashable, _Subject] = {}
        # The last evaluation's per-test threshold (its family's, after Tarone's pruning), as
        # the drop-off detector keeps it: the harness's information limit tests at it.
        self.threshold = self.policy.significance

    def to_json(self) -> list[Any]:
        """The state, for a checkpoint: subjects keyed by a tuple of JSON values (the
        worker's :data:`SubjectKey`)."""
        out = []
        for key, subject in self._subjects.items():
            if not isinstance(key, tuple):
                raise TypeError(f"a stored subject is a tuple, not {key!r}")
            out.append([list(key), subject.to_json()])
        return out

    def load_json(self, raw: list[Any]) -> None:
        self._subjects = {tuple(key): _Subject.from_json(state) for key, state in raw}

    def warming_up(self) -> dict[Hashable, bool]:
        need = self.policy.min_baseline_answers
        return {key: s.baseline_answers < need for key, s in self._subjects.items()}

    def evaluate(
        self, window_end_ms: int, window: Mapping[Hashable, tuple[int, int]]
    ) -> list[LowScoreDecision]:
        """``window``: subject -> (answers, low answers) of the window that just closed (a
        subject absent had none)."""
        policy = self.policy
        longest = LOW_SCORE_SPANS[-1]
        for key in window:
            self._subjects.setdefault(key, _Subject())
        # The tests: every warm subject, every span with enough answers.
        tests: list[tuple[Hashable, int, int, float, float]] = []  # key, n, k, rate, floor p
        for key, subject in self._subjects.items():
            subject.recent.append(window.get(key, (0, 0)))
            if subject.baseline_answers < policy.min_baseline_answers:
                continue
            expected = subject.baseline_low / subject.baseline_answers
            rate = min(expected + policy.min_increase, 0.999)
            for span in LOW_SCORE_SPANS:
                pooled = subject.recent[-span:]
                n = sum(a for a, _ in pooled)
                if n < policy.min_answers:
                    continue
                k = sum(low for _, low in pooled)
                # The smallest p-value these answers could give (all low): Tarone's count.
                tests.append((key, n, k, rate, rate**n))
        threshold = self.threshold = family_threshold(policy.significance, [t[4] for t in tests])
        significant: dict[Hashable, tuple[float, int, int]] = {}
        for key, n, k, rate, _ in tests:
            p = binomial_tail(k, n, rate)
            if p <= threshold and (key not in significant or p < significant[key][0]):
                significant[key] = (p, n, k)
        decisions = []
        for key, subject in self._subjects.items():
            expected = (
                subject.baseline_low / subject.baseline_answers if subject.baseline_answers else 0.0
            )
            found = significant.get(key)
            if found is not None:
                subject.quiet_windows = 0
                if not subject.firing:
                    subject.firing = True
                    subject.fired_at_ms = window_end_ms
                    p, n, k = found
                    decisions.append(
                        LowScoreDecision(
                            key, "firing", window_end_ms, k / n, expected, n, k, p, window_end_ms
                        )
                    )
            elif subject.firing:
                subject.quiet_windows += 1
                if subject.quiet_windows >= policy.resolve_after_windows:
                    subject.firing = False
                    n, k = subject.recent[-1]
                    share = k / n if n else 0.0
                    decisions.append(
                        LowScoreDecision(
                            key,
                            "resolved",
                            window_end_ms,
                            share,
                            expected,
                            n,
                            k,
                            1.0,
                            subject.fired_at_ms,
                        )
                    )
            # The window that left the longest span joins the baseline, unless alerting.
            if len(subject.recent) > longest:
                answers, low = subject.recent.pop(0)
                if not subject.firing:
                    subject.learn(answers, low, policy.baseline_half_life)
        return decisions
