"""Exact binomial tails and the family threshold of one evaluation's tests: the statistics
the detector decides with, pure and small enough to check by hand."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["binomial_lower_tail", "binomial_tail", "family_threshold"]


def _far_tail(k: int, trials: int, rate: float, upward: bool) -> float:
    """P(X >= k) (``upward``) or P(X <= k), for ``k`` beyond the mode on that side: the terms
    shrink monotonically from ``pmf(k)``, so the sum stops once they no longer count."""
    log_first = (
        math.lgamma(trials + 1)
        - math.lgamma(k + 1)
        - math.lgamma(trials - k + 1)
        + k * math.log(rate)
        + (trials - k) * math.log1p(-rate)
    )
    odds = rate / (1.0 - rate)
    total, term, j = 1.0, 1.0, k
    while True:
        if upward:
            if j >= trials:
                break
            term *= (trials - j) / (j + 1) * odds
            j += 1
        else:
            if j <= 0:
                break
            term *= j / (trials - j + 1) / odds
            j -= 1
        total += term
        if term < total * 1e-17:
            break
    return min(1.0, math.exp(log_first + math.log(total)))


def binomial_tail(successes: int, trials: int, rate: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, rate), exact to double precision."""
    if successes <= 0:
        return 1.0
    if successes > trials or rate <= 0.0:
        return 0.0
    if rate >= 1.0:
        return 1.0
    if successes > math.floor((trials + 1) * rate):
        return _far_tail(successes, trials, rate, upward=True)
    return max(0.0, 1.0 - _far_tail(successes - 1, trials, rate, upward=False))


def binomial_lower_tail(successes: int, trials: int, rate: float) -> float:
    """P(X <= successes) for X ~ Binomial(trials, rate), exact to double precision."""
    if successes >= trials or rate <= 0.0:
        return 1.0
    if successes < 0:
        return 0.0
    if rate >= 1.0:
        return 0.0
    if successes < math.floor((trials + 1) * rate):
        return _far_tail(successes, trials, rate, upward=False)
    return max(0.0, 1.0 - _far_tail(successes + 1, trials, rate, upward=True))


def family_threshold(significance: float, min_p_values: Sequence[float]) -> float:
    """The per-test threshold that holds the family's false-alert rate at ``significance``
    (Tarone's refinement of Bonferroni): a test whose trials cannot reach the threshold even
    if every one failed cannot raise a false alert, so it does not count. The threshold is
    ``significance / K`` for the smallest ``K`` with at most ``K`` tests able to reach it."""
    ordered = sorted(min_p_values)
    low, high = 1, max(1, len(ordered))
    while low < high:  # the count able to reach significance / K only falls as K grows
        middle = (low + high) // 2
        if bisect.bisect_right(ordered, significance / middle) <= middle:
            high = middle
        else:
            low = middle + 1
    return significance / low
