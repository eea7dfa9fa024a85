"""Experiment guardrails over simulated weeks (no broker): false alerts on A/A traffic and the
time to detect a variant that hurts one step, with the test read after every simulated hour.

``python -m benchmarks.guardrails [--runs 200] [--days 28] [--carts-per-day 4000] [--out F]``

Each run simulates an experiment with a control and one variant splitting the funnel's
entries 50/50: per hour, attempts entering the cart step (Poisson, a daytime peak and a tenth
of it at night), then each step converting with its own rate (cart -> checkout 55%, checkout
-> payment 75%, payment -> order 92%). After every hour, every step is compared
(:func:`streamer.funnel.experiments.compare_conversion`, the family's ``alpha`` split over the
steps) and the assignment split is checked (:func:`sample_ratio_mismatch`).

- **A/A**: the variant is the control. Any guardrail or ratio alert in a run is a false alert;
  the share of runs with one must stay at or below ``alpha`` (0.05), however often we look.
- **A/B**: the variant's payment -> order rate is 10% lower (0.828 instead of 0.92) from the
  start; the detection time is the simulated hours until the first "hurts" on that step.
- **SRM**: the variant gets 48% of the units instead of 50%: hours until the ratio check fires.

For the A/B runs it also reports each run's **information limit** (docs/alert-quality.md,
"Alerts near the information limit"): the first hour at which a one-sided exact binomial test
of the variant's conversions at the hurt step so far, against the control's rate so far, at
the guardrail's own per-test alpha, would reject, read once with no correction for looking
again (what the data could say at the earliest, not a test to run), and the guardrail's
detection time as a multiple of it.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from streamer.funnel.experiments import ArmCounts, guard_step, sample_ratio_mismatch
from streamer.funnel.statistics import binomial_lower_tail

ALPHA = 0.05
STEPS = ("cart->checkout", "checkout->payment", "payment->order")
RATES = (0.55, 0.75, 0.92)
HURT_STEP = 2
HURT_FACTOR = 0.9


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """Binomial(n, p) by geometric waiting times: O(n min(p, 1-p)) draws."""
    if p <= 0.0 or n <= 0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - _binomial(rng, n, 1.0 - p)
    log_q = math.log1p(-p)
    count, position = 0, 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return count
        count += 1


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:  # normal approximation, continuity-corrected: ample at these volumes
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _hourly_mean(carts_per_day: float, hour: int) -> float:
    """Daytime peak, a tenth of it at night: a day's shape summing to ``carts_per_day``."""
    shape = [0.1 + 0.9 * max(0.0, math.sin(math.pi * (h - 6) / 16)) for h in range(24)]
    return carts_per_day * shape[hour % 24] / sum(shape)


@dataclass
class RunResult:
    guardrail_hours: dict[int, float]  # step -> first hour a "hurts" fired
    ratio_hour: float | None
    # step -> first hour a one-look binomial test at the per-test alpha would reject
    limit_hours: dict[int, float]


def run(
    seed: int,
    *,
    days: int,
    carts_per_day: float,
    variant_rates: tuple[float, ...] = RATES,
    variant_share: float = 0.5,
) -> RunResult:
    rng = random.Random(seed)
    entered = {arm: [0] * len(RATES) for arm in ("control", "variant")}
    converted = {arm: [0] * len(RATES) for arm in ("control", "variant")}
    units = {"control": 0, "variant": 0}
    fired: dict[int, float] = {}
    limits: dict[int, float] = {}
    ratio_hour: float | None = None
    alpha_per_step = ALPHA / len(RATES)
    for hour in range(days * 24):
        arrivals = _poisson(rng, _hourly_mean(carts_per_day, hour))
        in_variant = _binomial(rng, arrivals, variant_share)
        for arm, count, rates in (
            ("control", arrivals - in_variant, RATES),
            ("variant", in_variant, variant_rates),
        ):
            units[arm] += count
            for step, rate in enumerate(rates):
                passed = _binomial(rng, count, rate)
                entered[arm][step] += count
                converted[arm][step] += passed
                count = passed
        for step in range(len(RATES)):
            control = ArmCounts(entered["control"][step], converted["control"][step])
            variant = ArmCounts(entered["variant"][step], converted["variant"][step])
            if step not in limits and control.entered and variant.entered:
                below = binomial_lower_tail(variant.converted, variant.entered, control.rate)
                if below < alpha_per_step:
                    limits[step] = hour + 1
            if step in fired:
                continue
            comparison = guard_step(control, variant, alpha=alpha_per_step)
            if comparison is not None and comparison.hurts:
                fired[step] = hour + 1
        if ratio_hour is None:
            check = sample_ratio_mismatch(
                [units["control"], units["variant"]], [0.5, 0.5], alpha=ALPHA
            )
            if check.mismatch:
                ratio_hour = hour + 1
    return RunResult(fired, ratio_hour, limits)


def _hurt_rates() -> tuple[float, ...]:
    rates = list(RATES)
    rates[HURT_STEP] *= HURT_FACTOR
    return tuple(rates)


def _hours_text(hours: list[float], runs: int) -> str:
    if not hours:
        return f"never (0 of {runs} runs)"
    cuts = statistics.quantiles(hours, n=10) if len(hours) > 1 else [hours[0]] * 9
    return (
        f"median {statistics.median(hours):.0f} h, 90th percentile {cuts[8]:.0f} h, "
        f"detected in {len(hours)} of {runs} runs"
    )


def _multiple_text(multiples: list[float]) -> str:
    if not multiples:
        return "-"
    cuts = statistics.quantiles(multiples, n=10) if len(multiples) > 1 else [multiples[0]] * 9
    return (
        f"median {statistics.median(multiples):.2f}x, 90th percentile {cuts[8]:.2f}x, "
        f"worst {max(multiples):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.guardrails")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--carts-per-day", type=float, default=4000)
    parser.add_argument("--out", type=Path, default=None, help="write the summary here too")
    args = parser.parse_args()
    started = time.perf_counter()
    aa = [run(seed, days=args.days, carts_per_day=args.carts_per_day) for seed in range(args.runs)]
    aa_guardrail = sum(1 for r in aa if r.guardrail_hours)
    aa_ratio = sum(1 for r in aa if r.ratio_hour is not None)
    ab = [
        run(10_000 + seed, days=args.days, carts_per_day=args.carts_per_day,
            variant_rates=_hurt_rates())
        for seed in range(args.runs)
    ]  # fmt: skip
    ab_hours = [r.guardrail_hours[HURT_STEP] for r in ab if HURT_STEP in r.guardrail_hours]
    ab_limits = [r.limit_hours[HURT_STEP] for r in ab if HURT_STEP in r.limit_hours]
    multiples = [
        r.guardrail_hours[HURT_STEP] / r.limit_hours[HURT_STEP]
        for r in ab
        if HURT_STEP in r.guardrail_hours and HURT_STEP in r.limit_hours
    ]
    ab_wrong = sum(1 for r in ab if set(r.guardrail_hours) - {HURT_STEP})
    srm = [
        run(20_000 + seed, days=args.days, carts_per_day=args.carts_per_day, variant_share=0.48)
        for seed in range(args.runs)
    ]
    srm_hours = [r.ratio_hour for r in srm if r.ratio_hour is not None]
    lines = [
        f"`python -m benchmarks.guardrails --runs {args.runs} --days {args.days} "
        f"--carts-per-day {args.carts_per_day:.0f}` ({time.perf_counter() - started:.0f} s); "
        f"alpha {ALPHA}, read after every simulated hour.",
        "",
        "| traffic | runs | what | result |",
        "|---|---:|---|---|",
        f"| A/A | {args.runs} | runs with a false guardrail alert (any step) | "
        f"{aa_guardrail} ({aa_guardrail / args.runs:.1%}; nominal at most {ALPHA:.0%}) |",
        f"| A/A | {args.runs} | runs with a false sample-ratio alert | "
        f"{aa_ratio} ({aa_ratio / args.runs:.1%}; nominal at most {ALPHA:.0%}) |",
        f"| A/B: {STEPS[HURT_STEP]} 10% lower | {args.runs} | time to the guardrail alert | "
        f"{_hours_text(ab_hours, args.runs)} |",
        f"| A/B | {args.runs} | information limit (one look, alpha {ALPHA / len(RATES):.3g}) "
        f"| {_hours_text(ab_limits, args.runs)} |",
        f"| A/B | {args.runs} | detection time / information limit, per run | "
        f"{_multiple_text(multiples)} |",
        f"| A/B | {args.runs} | runs alerting on another step | {ab_wrong} |",
        f"| 48/52 split | {args.runs} | time to the sample-ratio alert | "
        f"{_hours_text(srm_hours, args.runs)} |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
