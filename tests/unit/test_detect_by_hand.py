"""The detector against numbers worked out by hand, not against itself: binomial tails summed
term by term in exact fractions (``math.comb``, no floating point, no scipy), Tarone-Bonferroni
thresholds counted on paper, and whole evaluations whose p-value, rates and excess are the ones
written in the comments."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.detect import (
    AlertDecision,
    FunnelDetector,
    binomial_lower_tail,
    binomial_tail,
    family_threshold,
)
from streamer.funnel.windows import LOOKS_PER_WINDOW, WindowCounts

MIN = 60_000


def upper(k: int, n: int, p: Fraction) -> Fraction:
    """P(X >= k), X ~ Binomial(n, p), summed exactly."""
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)), Fraction())


def lower(k: int, n: int, p: Fraction) -> Fraction:
    """P(X <= k), X ~ Binomial(n, p), summed exactly."""
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction())


def test_binomial_tails_worked_by_hand() -> None:
    # P(X >= 3 | n=5, p=1/2) = (C(5,3) + C(5,4) + C(5,5)) / 2^5 = (10 + 5 + 1) / 32 = 1/2
    assert upper(3, 5, Fraction(1, 2)) == Fraction(1, 2)
    assert binomial_tail(3, 5, 0.5) == pytest.approx(0.5, rel=1e-12)
    # P(X <= 2 | n=10, p=1/2) = (C(10,0) + C(10,1) + C(10,2)) / 2^10 = (1 + 10 + 45) / 1024
    #                          = 56 / 1024 = 0.0546875
    assert lower(2, 10, Fraction(1, 2)) == Fraction(56, 1024)
    assert binomial_lower_tail(2, 10, 0.5) == pytest.approx(0.0546875, rel=1e-12)
    # P(X >= 8 | n=10, p=3/10) = 45 * 0.3^8 * 0.7^2 + 10 * 0.3^9 * 0.7 + 0.3^10
    #   = 45 * 0.00006561 * 0.49 + 10 * 0.000019683 * 0.7 + 0.0000059049
    #   = 0.0014467005 + 0.000137781 + 0.0000059049 = 0.0015903864
    assert upper(8, 10, Fraction(3, 10)) == Fraction(15_903_864, 10**10)
    assert binomial_tail(8, 10, 0.3) == pytest.approx(0.0015903864, rel=1e-12)
    # Every one of 10 failing at 1/10: 10^-10; none of 20 converting at 9/10: 0.1^20 = 10^-20.
    assert binomial_tail(10, 10, 0.1) == pytest.approx(1e-10, rel=1e-12)
    assert binomial_lower_tail(0, 20, 0.9) == pytest.approx(1e-20, rel=1e-9)
    # The tails the evaluations below read (exact fractions, compared at 1e-9):
    # P(X >= 14 | 50, 1/10) = 0.000285120..., P(X <= 28 | 40, 9/10) = 0.000380834...
    assert float(upper(14, 50, Fraction(1, 10))) == pytest.approx(2.851203026692694e-4)
    assert binomial_tail(14, 50, 0.1) == pytest.approx(float(upper(14, 50, Fraction(1, 10))))
    assert float(lower(28, 40, Fraction(9, 10))) == pytest.approx(3.8083426673634236e-4)
    assert binomial_lower_tail(28, 40, 0.9) == pytest.approx(
        float(lower(28, 40, Fraction(9, 10))), rel=1e-9
    )
    # The two tails of one distribution make 1 with the point between: P(X>=k) + P(X<=k-1).
    for k in range(0, 51, 5):
        assert binomial_tail(k, 50, 0.1) + binomial_lower_tail(k - 1, 50, 0.1) == pytest.approx(1)


def test_family_thresholds_worked_by_hand() -> None:
    # significance 1e-6; the tests' smallest reachable p-values 1e-10, 1e-10, 1e-7, 0.5.
    # K=1: threshold 1e-6, reachable by 3 tests (1e-10, 1e-10, 1e-7) > 1: no.
    # K=2: 5e-7, reachable by 3 > 2: no.  K=3: 3.33e-7, reachable by 3 <= 3: yes.
    assert family_threshold(1e-6, [1e-10, 1e-10, 1e-7, 0.5]) == pytest.approx(1e-6 / 3)
    # 1e-10 x4 and 4e-7: K=3 (3.33e-7) is reached by 4 > 3; K=4 (2.5e-7) by 4 (4e-7 is
    # above it) <= 4: threshold 2.5e-7.
    assert family_threshold(1e-6, [1e-10] * 4 + [4e-7]) == pytest.approx(2.5e-7)
    # One test that can reach it, nine that cannot (min p 0.9^10 = 0.35): plain 1e-6.
    assert family_threshold(1e-6, [1e-30] + [0.9**10] * 9) == pytest.approx(1e-6)
    # A test whose smallest p-value equals the threshold can reach it (p <= threshold).
    assert family_threshold(1e-6, [1e-6 / 2, 1e-6 / 2]) == pytest.approx(1e-6 / 2)


FUNNEL = FunnelDefinition.model_validate(
    {
        "name": "f",
        "conversion_window": "10m",
        "window": "1m",
        "step_timeout": "2m",
        "stages": [
            {"name": "a", "event_type": "page_view"},
            {"name": "b", "event_type": "add_to_cart"},
            {"name": "c", "event_type": "order_placed"},
        ],
        # 1e-3 per window of watermark, half of it for the look at its boundary (the other
        # half for the early looks): 5e-4, the family significance the evaluations below (at
        # window boundaries) are worked out with.
        "alerting": {"significance": 1e-3, "min_baseline_decided": 500, "min_decided": 30},
    }
)
assert LOOKS_PER_WINDOW > 1
FINAL_AFTER = MIN + 2 * MIN  # a window is final for both steps 3 minutes after its start


def counts(per_step: dict[int, tuple[int, int, int]]) -> WindowCounts:
    """step -> (entered, converted within 5 s, dropped); the rest open."""
    out = WindowCounts.empty(len(FUNNEL.stages))
    for step, (entered, converted, dropped) in per_step.items():
        out.stages[step].entered = entered
        out.stages[step].converted = converted
        out.stages[step].dropped = dropped
        out.stages[step].time_to_convert_buckets[1] = converted  # bucket <= 5 s
    return out


def learned(steps: tuple[int, ...]) -> FunnelDetector:
    """A detector whose ``steps`` learned one final window: 1000 sessions, 900 converted
    within 5 s, 100 dropped. Learned into an empty baseline, nothing is decayed: the
    baseline's conversion is 900/1000 exactly, its drop rate 1/10, its share converted
    within any bound from 5 s on 9/10."""
    detector = FunnelDetector(FUNNEL)
    warm = counts(dict.fromkeys(steps, (1000, 900, 100)))
    assert detector.evaluate(0 + FINAL_AFTER, {0: warm}) == []
    for step in steps:
        assert detector.steps[step].baseline.entered == 1000
    return detector


def only_alert(decisions: list[object]) -> AlertDecision:
    [decision] = decisions
    assert isinstance(decision, AlertDecision)
    return decision


def test_a_final_cohort_fires_at_the_hand_computed_p_value() -> None:
    # The step a->b, window 1m..2m: 50 sessions, 14 dropped. Against the baseline's drop rate
    # 1/10: p = P(X >= 14 | 50, 1/10) = 2.851e-4 (above). One test in the family, and it can
    # reach the threshold (min p = 0.1^50): K = 1, threshold 5e-4 / 1. p < 5e-4 and the
    # effect 14/50 - 1/10 = 0.18 >= 0.10: firing, excess 14 - 50 * 0.1 = 9 sessions.
    detector = learned((0,))
    decision = only_alert(detector.evaluate(MIN + FINAL_AFTER, {MIN: counts({0: (50, 36, 14)})}))
    assert (decision.state, decision.basis, decision.severity) == ("firing", "final", "warning")
    assert decision.alert_id == f"f/a->b/{MIN + FINAL_AFTER}"
    assert (decision.decided, decision.dropped) == (50, 14)
    assert decision.p_value == pytest.approx(float(upper(14, 50, Fraction(1, 10))), rel=1e-9)
    assert decision.expected_rate == pytest.approx(0.1, rel=1e-9)
    assert decision.observed_rate == pytest.approx(0.28)
    assert decision.excess_dropped == pytest.approx(9.0)
    # 13 dropped: p = P(X >= 13 | 50, 1/10) = 1.0046e-3 > 5e-4: nothing.
    assert float(upper(13, 50, Fraction(1, 10))) > 5e-4
    quiet = learned((0,))
    assert quiet.evaluate(MIN + FINAL_AFTER, {MIN: counts({0: (50, 37, 13)})}) == []


def test_a_second_test_in_the_family_halves_the_threshold() -> None:
    # The same cohort of a->b (p = 2.851e-4), and b->c tested too: a healthy final cohort of
    # 50 (5 dropped, p = P(X >= 5 | 50, 1/10) = 0.57), whose min p 0.1^50 can reach any
    # threshold. K=1: 2 tests reach 5e-4 > 1; K=2: 2 reach 2.5e-4 <= 2: threshold 2.5e-4, and
    # 2.851e-4 is not below it: nothing fires.
    assert float(upper(5, 50, Fraction(1, 10))) > 0.5
    detector = learned((0, 1))
    both = counts({0: (50, 36, 14), 1: (50, 45, 5)})
    assert detector.evaluate(MIN + FINAL_AFTER, {MIN: both}) == []
    # 15 dropped instead: p = P(X >= 15 | 50, 1/10) = 7.384e-5 < 2.5e-4: fires.
    assert float(upper(15, 50, Fraction(1, 10))) < 2.5e-4
    detector = learned((0, 1))
    worse = counts({0: (50, 35, 15), 1: (50, 45, 5)})
    decision = only_alert(detector.evaluate(MIN + FINAL_AFTER, {MIN: worse}))
    assert decision.alert_id.startswith("f/a->b/")
    assert decision.p_value == pytest.approx(float(upper(15, 50, Fraction(1, 10))), rel=1e-9)


def test_a_young_cohort_fires_at_matched_age_at_the_hand_computed_p_value() -> None:
    # Window 2m..3m of a->b at watermark 4m: 1 minute old (not final until 5m). Its age
    # reaches the bounds up to 60 s: the baseline converted 900 of 1000 within them, so
    # 9/10 of the cohort should have converted. 40 entered, 28 converted within 5 s:
    # p = P(X <= 28 | 40, 9/10) = 3.808e-4 < 5e-4 (K = 1: the only test; 36 expected
    # conversions >= 5), effect 12/40 - 1/10 = 0.2 >= 0.10: firing on 12 not converted.
    detector = learned((0,))
    young = counts({0: (40, 28, 0)})
    decision = only_alert(detector.evaluate(2 * MIN + 2 * MIN, {2 * MIN: young}))
    assert (decision.state, decision.basis) == ("firing", "matched_age")
    assert (decision.decided, decision.dropped) == (40, 12)
    assert decision.p_value == pytest.approx(float(lower(28, 40, Fraction(9, 10))), rel=1e-9)
    assert decision.expected_rate == pytest.approx(0.1, rel=1e-9)
    assert decision.excess_dropped == pytest.approx(12 - 40 * 0.1)
    # 29 converted: p = P(X <= 29 | 40, 9/10) = 1.47e-3 > 5e-4: nothing.
    assert float(lower(29, 40, Fraction(9, 10))) > 5e-4
    quiet = learned((0,))
    assert quiet.evaluate(4 * MIN, {2 * MIN: counts({0: (40, 29, 0)})}) == []
