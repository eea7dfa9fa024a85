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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamer.funnel.definition import Experiment, FunnelDefinition
from streamer.funnel.windows import WindowCounts

__all__ = [
    "MIN_ENTERED",
    "ArmCounts",
    "Comparison",
    "ExperimentGuard",
    "GuardrailDecision",
    "RatioCheck",
    "RatioDecision",
    "compare_conversion",
    "guard_step",
    "sample_ratio_mismatch",
]

# Pseudo-counts in each arm's rate for the variance only: a step at 0% or 100% so far must
# not make the estimate look certain.
_VARIANCE_PRIOR = 0.5
# The mixture's scale: a tenth of the control's rate at the step (the drop worth a page).
TAU_SHARE = 0.1
# Decided attempts per arm before a step is judged: the interval rests on the normal
# approximation of each rate, poor below a few hundred.
MIN_ENTERED = 200


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
    # Always-valid p-value of "no difference": 1 / the mixture likelihood ratio at 0, capped
    # at 1; below alpha exactly when the interval excludes 0.
    p_value: float = 1.0

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
    log_ratio_at_zero = 0.5 * math.log(variance / mixed) + tau * tau * difference * difference / (
        2.0 * variance * mixed
    )
    return Comparison(
        difference=difference,
        low=difference - half_width,
        high=difference + half_width,
        control_rate=control.rate,
        variant_rate=variant.rate,
        p_value=math.exp(-max(0.0, log_ratio_at_zero)),
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


def guard_step(control: ArmCounts, variant: ArmCounts, *, alpha: float) -> Comparison | None:
    """The guardrail of one step as streamer reads it: None until each arm has
    ``MIN_ENTERED`` decided attempts, then :func:`compare_conversion` with a mixture scale of
    ``TAU_SHARE`` of the control's rate."""
    if min(control.entered, variant.entered) < MIN_ENTERED:
        return None
    tau = TAU_SHARE * max(control.rate, 0.01)
    return compare_conversion(control, variant, alpha=alpha, tau=tau)


# --- the guard of a funnel's experiments, fed with cohort windows --------------------------


@dataclass(frozen=True, slots=True)
class GuardrailDecision:
    """A variant converts significantly worse than the control at one step."""

    alert_id: str  # funnel/experiment/variant/step: raised once
    experiment: Experiment
    variant: str
    step: str
    control: ArmCounts
    treated: ArmCounts
    comparison: Comparison
    alpha: float  # the test's share of the experiment's alpha
    start_ms: int  # the step's counts are its cohorts from the first window's start ...
    end_ms: int  # ... to the end of the last one counted for it
    evaluated_at_ms: int
    ratio_mismatch: bool  # the sample-ratio check fired before: read with suspicion


@dataclass(frozen=True, slots=True)
class RatioDecision:
    """Exposures per variant contradict the intended split."""

    alert_id: str  # funnel/experiment/sample_ratio: raised once
    experiment: Experiment
    exposures: dict[str, int]
    check: RatioCheck
    start_ms: int
    end_ms: int
    evaluated_at_ms: int


@dataclass
class _ExperimentState:
    counted_until_ms: dict[int, int] = field(default_factory=dict)  # step -> newest start
    # variant -> step -> [decided, converted], summed over the counted cohorts
    arms: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    exposures: dict[str, int] = field(default_factory=dict)
    first_ms: int | None = None  # the first counted window holding an exposed attempt
    raised: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "counted_until_ms": {str(k): v for k, v in self.counted_until_ms.items()},
            "arms": {v: {str(k): c for k, c in steps.items()} for v, steps in self.arms.items()},
            "exposures": self.exposures,
            "first_ms": self.first_ms,
            "raised": self.raised,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _ExperimentState:
        return cls(
            {int(k): int(v) for k, v in raw["counted_until_ms"].items()},
            {
                str(v): {int(k): [int(x) for x in c] for k, c in steps.items()}
                for v, steps in raw["arms"].items()
            },
            {str(v): int(n) for v, n in raw["exposures"].items()},
            raw["first_ms"],
            [str(a) for a in raw["raised"]],
        )


class ExperimentGuard:
    """The guardrails and sample-ratio checks of one funnel's experiments.

    Counts come from **final cohorts only**: a step's cohort window is counted once the
    watermark passed its end plus the step's timeout, when every attempt in it is decided
    (converted or dropped). A young cohort holds its quick conversions but not yet its drops
    (a drop waits for the timeout), so counting it would inflate every arm's rate, and more
    for an arm that converts faster. Exposures are the attempts that entered the exposure
    stage in the windows counted for its step. ``to_json`` / ``load_json`` persist it."""

    def __init__(self, funnel: FunnelDefinition) -> None:
        self.funnel = funnel
        self.states = {e.name: _ExperimentState() for e in funnel.experiments}
        self.evaluated_ms = -(2**62)

    def to_json(self) -> dict[str, Any]:
        return {
            "evaluated_ms": self.evaluated_ms,
            "experiments": {name: state.to_json() for name, state in self.states.items()},
        }

    def load_json(self, raw: Mapping[str, Any]) -> None:
        self.evaluated_ms = int(raw["evaluated_ms"])
        for name, state in raw["experiments"].items():
            if name in self.states:  # an experiment removed from the file is forgotten
                self.states[name] = _ExperimentState.from_json(state)

    def arms(self) -> list[tuple[str, str, str, ArmCounts]]:
        """(experiment, variant, step, counts) for every declared variant at every guarded
        step, over the cohorts counted so far: what the per-variant gauges show."""
        names = self.funnel.step_names
        return [
            (e.name, variant, names[step], ArmCounts(*arms.get(step, [0, 0])))
            for e in self.funnel.experiments
            for variant, arms in ((v, self.states[e.name].arms.get(v, {})) for v in e.variants)
            for step in self.funnel.guarded_steps(e)
        ]

    def exposures(self) -> list[tuple[str, str, int]]:
        """(experiment, variant, exposed attempts counted so far) for every declared variant."""
        return [
            (e.name, variant, self.states[e.name].exposures.get(variant, 0))
            for e in self.funnel.experiments
            for variant in e.variants
        ]

    def evaluate(
        self, watermark_ms: int, windows: Mapping[int, WindowCounts]
    ) -> list[GuardrailDecision | RatioDecision]:
        """Count the cohorts that became final at ``watermark_ms`` and read every test; the
        decisions not raised before. Call once per window of watermark, in order, with
        the windows the detector gets (every one not final yet and those that became final
        since the last call)."""
        if watermark_ms <= self.evaluated_ms:
            return []
        self.evaluated_ms = watermark_ms
        decisions: list[GuardrailDecision | RatioDecision] = []
        for experiment in self.funnel.experiments:
            state = self.states[experiment.name]
            self._count(experiment, state, watermark_ms, windows)
            decisions += self._judge(experiment, state, watermark_ms)
        return decisions

    def _count(
        self,
        experiment: Experiment,
        state: _ExperimentState,
        watermark_ms: int,
        windows: Mapping[int, WindowCounts],
    ) -> None:
        dim = [s.name for s in self.funnel.segments].index(experiment.name)
        exposure = [s.name for s in self.funnel.stages].index(experiment.exposure)
        size = self.funnel.window_ms
        for step in sorted({exposure, *self.funnel.guarded_steps(experiment)}):
            timeout = self.funnel.step_timeout_ms(step)
            until = state.counted_until_ms.get(step, -(2**62))
            for start in sorted(windows):
                if start <= until or start + size + timeout > watermark_ms:
                    continue
                until = start
                counts = windows[start]
                for variant in experiment.variants:
                    per_stage = counts.segments.get((dim, variant))
                    if per_stage is None:
                        continue
                    at = per_stage[step]
                    arm = state.arms.setdefault(variant, {}).setdefault(step, [0, 0])
                    arm[0] += at.converted + at.dropped
                    arm[1] += at.converted
                    if step == exposure:
                        state.exposures[variant] = state.exposures.get(variant, 0) + at.entered
                    state.first_ms = start if state.first_ms is None else min(state.first_ms, start)
            state.counted_until_ms[step] = until

    def _judge(
        self, experiment: Experiment, state: _ExperimentState, watermark_ms: int
    ) -> list[GuardrailDecision | RatioDecision]:
        if state.first_ms is None:
            return []
        exposure = [s.name for s in self.funnel.stages].index(experiment.exposure)
        size = self.funnel.window_ms

        def end_ms(step: int) -> int:  # the end of the step's last counted window
            return state.counted_until_ms[step] + size

        decisions: list[GuardrailDecision | RatioDecision] = []
        prefix = f"{self.funnel.name}/{experiment.name}"
        variants = list(experiment.variants)
        ratio_id = f"{prefix}/sample_ratio"
        exposures = [state.exposures.get(v, 0) for v in variants]
        if ratio_id not in state.raised and any(exposures):
            check = sample_ratio_mismatch(
                exposures, list(experiment.variants.values()), alpha=experiment.alpha
            )
            if check.mismatch:
                state.raised.append(ratio_id)
                decisions.append(RatioDecision(
                    ratio_id, experiment, dict(zip(variants, exposures, strict=True)), check,
                    state.first_ms, end_ms(exposure), watermark_ms,
                ))  # fmt: skip
        steps = self.funnel.guarded_steps(experiment)
        treated = [v for v in variants if v != experiment.control]
        # Bonferroni over the experiment's tests: its family's false-alert rate stays <= alpha.
        alpha = experiment.alpha / (len(steps) * len(treated))
        names = self.funnel.step_names
        for step in steps:
            control = ArmCounts(*state.arms.get(experiment.control, {}).get(step, [0, 0]))
            for variant in treated:
                alert_id = f"{prefix}/{variant}/{names[step]}"
                if alert_id in state.raised:
                    continue
                arm = ArmCounts(*state.arms.get(variant, {}).get(step, [0, 0]))
                comparison = guard_step(control, arm, alpha=alpha)
                if comparison is None or not comparison.hurts:
                    continue
                state.raised.append(alert_id)
                decisions.append(GuardrailDecision(
                    alert_id, experiment, variant, names[step], control, arm, comparison, alpha,
                    state.first_ms, end_ms(step), watermark_ms, ratio_id in state.raised,
                ))  # fmt: skip
        return decisions
