"""Experiment guardrails: does a variant hurt a funnel step, and are units assigned in the ratio
the experiment says? Pure and safe under continuous looking: both tests may be read after every
window without raising their false-alert rate (docs/experiments.md).

- :func:`compare_conversion`: a variant's conversion at one step against the control's, with
  an always-valid confidence sequence for the difference (the normal-mixture sequential
  probability ratio test, mSPRT: Johari, Pekelis and Walsh, "Always valid inference", 2017;
  Howard et al., "Time-uniform, nonparametric, nonasymptotic confidence sequences", 2021). The
  sequence excludes a difference of 0 at some time with probability at most ``alpha`` when the
  variant changes nothing, however often it is read.
- :func:`sample_ratio_mismatch`: the Dirichlet-multinomial Bayes factor of the assignment
  counts against the intended split (Lindon and Malek, "Anytime-valid inference for
  multinomial count data", 2022), a test martingale under the intended split: exceeding
  ``1/alpha`` at any time happens with probability at most ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ArmCounts",
    "Comparison",
    "RatioCheck",
    "compare_conversion",
    "sample_ratio_mismatch",
]

# Pseudo-counts in each arm's rate for the variance only: a step at 0% or 100% so far must
# not make the estimate look certain.
_VARIANCE_PRIOR = 0.5


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """One arm at one step: attempts that reached the step before it, and those that converted."""

    entered: int
    converted: int

    @property
    def rate(self) -> float:
        return self.converted / self.entered if self.entered else 0.0


@dataclass(frozen=True, slots=True)
class Comparison:
    """variant - control at one step: the difference of conversion rates, its always-valid
    interval, and the relative effect (the difference over the control's rate)."""

    difference: float
    low: float
    high: float
    control_rate: float
    variant_rate: float

    @property
    def hurts(self) -> bool:
        """The whole interval is below 0: the variant converts worse at this step."""
        return self.high < 0.0

    @property
    def helps(self) -> bool:
        return self.low > 0.0

    @property
    def relative(self) -> tuple[float, float, float] | None:
        """(effect, low, high) relative to the control's rate (None while it is 0); the
        interval divides by the control's observed rate, so it ignores that rate's own
        uncertainty (small next to the difference's once the control has hundreds)."""
        if self.control_rate <= 0.0:
            return None
        base = self.control_rate
        return self.difference / base, self.low / base, self.high / base


def _variance(arm: ArmCounts) -> float:
    rate = (arm.converted + _VARIANCE_PRIOR) / (arm.entered + 2 * _VARIANCE_PRIOR)
    return rate * (1.0 - rate) / max(arm.entered, 1)


def compare_conversion(
    control: ArmCounts, variant: ArmCounts, *, alpha: float, tau: float
) -> Comparison:
    """The variant's conversion against the control's with a ``1 - alpha`` confidence
    sequence for the difference. ``tau`` is the mixture's scale: the size of difference the
    test is most sensitive to (an absolute difference of rates, e.g. 10% of the step's usual
    rate); any positive value keeps the guarantee, a well-chosen one detects sooner."""
    if not 0.0 < alpha < 1.0 or tau <= 0.0:
        raise ValueError(f"alpha must be in (0, 1) and tau positive, got {alpha}, {tau}")
    difference = variant.rate - control.rate
    variance = _variance(control) + _variance(variant)
    mixed = variance + tau * tau
    half_width = math.sqrt(
        variance * mixed / (tau * tau) * (math.log(mixed / variance) + 2.0 * math.log(1 / alpha))
    )
    return Comparison(
        difference=difference,
        low=difference - half_width,
        high=difference + half_width,
        control_rate=control.rate,
        variant_rate=variant.rate,
    )


@dataclass(frozen=True, slots=True)
class RatioCheck:
    """Assignment counts against the intended split."""

    counts: tuple[int, ...]
    expected: tuple[float, ...]
    log_bayes_factor: float
    alpha: float

    @property
    def mismatch(self) -> bool:
        return self.log_bayes_factor >= math.log(1 / self.alpha)


def sample_ratio_mismatch(
    counts: Sequence[int], expected: Sequence[float], *, alpha: float, concentration: float = 100.0
) -> RatioCheck:
    """Whether ``counts`` (units assigned to each variant so far) contradict the intended
    split ``expected`` (shares summing to 1). The prior under the alternative is
    Dirichlet(``concentration`` x ``expected``): centred on the intended split, so only a
    sustained departure builds evidence."""
    if len(counts) != len(expected) or len(counts) < 2:
        raise ValueError("need one intended share per variant, and at least two variants")
    total_share = sum(expected)
    if any(share <= 0 for share in expected) or not math.isclose(total_share, 1.0, rel_tol=1e-6):
        raise ValueError(f"intended shares must be positive and sum to 1, got {list(expected)}")
    prior = [concentration * share for share in expected]
    n = sum(counts)
    log_bf = math.lgamma(sum(prior)) - math.lgamma(sum(prior) + n)
    for count, a, share in zip(counts, prior, expected, strict=True):
        log_bf += math.lgamma(a + count) - math.lgamma(a) - count * math.log(share)
    return RatioCheck(tuple(counts), tuple(expected), log_bf, alpha)
