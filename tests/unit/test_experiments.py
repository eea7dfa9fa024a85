"""Experiment guardrails (streamer/funnel/experiments.py): the always-valid comparison of a
variant's conversion with the control's, and the sample-ratio check; their false-alert rates
under continuous looking measured on simulated weeks (benchmarks/guardrails.py's model)."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks.guardrails import ALPHA, HURT_STEP, _hurt_rates, run
from streamer.funnel.experiments import ArmCounts, compare_conversion, sample_ratio_mismatch


def _mixture_ratio(difference: float, theta: float, variance: float, tau: float) -> float:
    """The mixture likelihood ratio of effect ``theta`` against N(0, tau^2) effects, for an
    estimate ``difference`` with ``variance``: the integral of the normal likelihood ratio
    over the mixing distribution, computed here by quadrature (the module uses its closed form)."""
    steps = 4000
    width = 12 * tau
    total = 0.0
    for i in range(steps):
        effect = -width / 2 + width * (i + 0.5) / steps
        log_lr = ((difference - theta) ** 2 - (difference - theta - effect) ** 2) / (2 * variance)
        density = math.exp(-(effect**2) / (2 * tau * tau)) / math.sqrt(2 * math.pi * tau * tau)
        total += math.exp(log_lr) * density * width / steps
    return total


def test_the_interval_ends_where_the_mixture_ratio_reaches_one_over_alpha() -> None:
    control, variant = ArmCounts(2000, 1100), ArmCounts(2000, 1020)
    tau = 0.05
    result = compare_conversion(control, variant, alpha=0.05, tau=tau)
    p_c, p_v = 1100.5 / 2001, 1020.5 / 2001
    variance = p_c * (1 - p_c) / 2000 + p_v * (1 - p_v) / 2000
    for end in (result.low, result.high):
        ratio = _mixture_ratio(result.difference, end, variance, tau)
        assert ratio == pytest.approx(1 / 0.05, rel=1e-3)
    assert result.difference == pytest.approx(-0.04)
    assert result.low < result.difference < result.high


def test_a_clear_drop_hurts_and_a_clear_gain_helps() -> None:
    control = ArmCounts(5000, 4600)  # 92%
    worse = compare_conversion(control, ArmCounts(5000, 4140), alpha=0.01, tau=0.09)  # 82.8%
    better = compare_conversion(ArmCounts(5000, 4140), control, alpha=0.01, tau=0.09)
    assert (worse.hurts, worse.helps) == (True, False)
    assert (better.hurts, better.helps) == (False, True)
    effect, low, high = worse.relative or (0, 0, 0)
    assert effect == pytest.approx(-0.1)
    assert low < -0.1 < high < 0


def test_small_arms_decide_nothing_and_intervals_narrow_with_more_data() -> None:
    small = compare_conversion(ArmCounts(20, 18), ArmCounts(20, 12), alpha=0.05, tau=0.09)
    assert not small.hurts  # 90% against 60% on 20 each: not enough to be sure, any time
    widths = [
        (r.high - r.low)
        for n in (100, 1000, 10_000)
        for r in [
            compare_conversion(ArmCounts(n, n // 2), ArmCounts(n, n // 2), alpha=0.05, tau=0.05)
        ]
    ]
    assert widths[0] > widths[1] > widths[2]
    assert (
        compare_conversion(ArmCounts(0, 0), ArmCounts(0, 0), alpha=0.05, tau=0.05).relative is None
    )


@pytest.mark.parametrize(("alpha", "tau"), [(0.0, 0.1), (1.0, 0.1), (0.05, 0.0)])
def test_bad_parameters_are_refused(alpha: float, tau: float) -> None:
    with pytest.raises(ValueError, match="alpha must be in"):
        compare_conversion(ArmCounts(10, 5), ArmCounts(10, 5), alpha=alpha, tau=tau)


def test_looking_every_hour_for_two_weeks_keeps_false_alerts_under_alpha() -> None:
    """A/A: 150 simulated experiments read after every hour for 14 days. The guarantee is at
    most 5% of runs with any false alert; with 150 runs a rate of 5% would give 7.5 expected,
    and 15 or more has probability under 0.5%."""
    runs = [run(seed, days=14, carts_per_day=3000) for seed in range(150)]
    guardrail = sum(1 for r in runs if r.guardrail_hours)
    ratio = sum(1 for r in runs if r.ratio_hour is not None)
    assert guardrail < 15, f"{guardrail} of 150 A/A runs raised a guardrail alert"
    assert ratio < 15, f"{ratio} of 150 A/A runs raised a sample-ratio alert"


def test_a_ten_percent_drop_at_one_step_is_found_on_that_step() -> None:
    runs = [
        run(100 + seed, days=7, carts_per_day=3000, variant_rates=_hurt_rates())
        for seed in range(20)
    ]
    found = [r.guardrail_hours.get(HURT_STEP) for r in runs]
    assert all(hours is not None for hours in found), found
    assert sum(1 for r in runs if set(r.guardrail_hours) - {HURT_STEP}) <= 2


def test_the_intended_split_never_builds_evidence_and_a_skewed_one_does() -> None:
    assert not sample_ratio_mismatch([5000, 5000], [0.5, 0.5], alpha=ALPHA).mismatch
    assert sample_ratio_mismatch([5200, 4800], [0.5, 0.5], alpha=ALPHA).mismatch
    assert not sample_ratio_mismatch([300, 200, 500], [0.3, 0.2, 0.5], alpha=ALPHA).mismatch
    rng = random.Random(3)
    false = 0
    for _ in range(200):  # the split read after each of 50 batches of 100 units
        counts = [0, 0]
        for _batch in range(50):
            for _unit in range(100):
                counts[rng.random() < 0.5] += 1
            if sample_ratio_mismatch(counts, [0.5, 0.5], alpha=ALPHA).mismatch:
                false += 1
                break
    assert false < 20, f"{false} of 200 runs flagged a fair split"


def test_a_split_that_does_not_add_up_is_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        sample_ratio_mismatch([10, 10], [0.5, 0.4], alpha=ALPHA)
    with pytest.raises(ValueError, match="one intended share per variant"):
        sample_ratio_mismatch([10, 10, 10], [0.5, 0.5], alpha=ALPHA)
