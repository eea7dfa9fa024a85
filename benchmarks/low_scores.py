"""The low-score alert's quality on simulated survey answers: false alerts on healthy traffic
over many days (day and night volume, a drifting low share), and the detection time of a
planted rise of the low share. Pure: no broker. ``python -m benchmarks.low_scores``.

Answers come in 10-minute windows; the healthy low share drifts with the hour between 13% and
17% (its own baseline follows it); a planted incident raises it to ``incident_share`` from
14:00 of the last day on (a checkout fault that makes buyers answer badly)."""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass

from streamer.funnel.satisfaction import LowScoreDecision, LowScoreDetector
from streamer.funnel.statistics import binomial_tail

WINDOW_MS = 600_000
DAY_MS = 86_400_000
SUBJECTS = (("csat", "order"), ("csat", "payment"), ("nps", "order"))
# The information limit (docs/alert-quality.md, the same measure as the drop-off incidents'):
# the broken subject's low share before the onset is read over these hours before it.
BEFORE_ONSET_MS = 2 * 3_600_000


@dataclass
class Run:
    seed: int
    days: float
    incident_share: float | None
    answers: int
    decisions: list[LowScoreDecision]
    onset_ms: int | None
    seconds: float
    limit_ms: int | None = None  # incident runs: onset to the information limit

    @property
    def false_alerts(self) -> list[LowScoreDecision]:
        firing = [d for d in self.decisions if d.state == "firing"]
        if self.onset_ms is None:
            return firing
        return [d for d in firing if d.evaluated_at_ms < self.onset_ms or d.subject != SUBJECTS[0]]

    @property
    def latency_ms(self) -> int | None:
        if self.onset_ms is None:
            return None
        onset = self.onset_ms
        hits = [
            d.evaluated_at_ms - onset
            for d in self.decisions
            if d.state == "firing" and d.subject == SUBJECTS[0] and d.evaluated_at_ms >= onset
        ]
        return min(hits) if hits else None


def information_limit_ms(
    onset_ms: int, broken: list[tuple[int, int, int]], thresholds: dict[int, float]
) -> int | None:
    """From the onset to the **information limit**: the end of the first window at which a
    one-sided exact binomial test of the broken subject's answers since the onset (all of
    them: the share is constant after it), against its low share over the
    ``BEFORE_ONSET_MS`` before the onset, at the detector's own per-test threshold of that
    evaluation, would fire. No minimum count or effect (the detector asks 5 points more
    than its baseline). ``broken``: (window start, answers, low) in order."""
    before = [
        (n, low) for start, n, low in broken if onset_ms - BEFORE_ONSET_MS <= start < onset_ms
    ]
    answered = sum(n for n, _ in before)
    if not answered:
        return None
    rate = sum(low for _, low in before) / answered
    seen = low_seen = 0
    for start, n, low in broken:
        if start < onset_ms:
            continue
        seen, low_seen = seen + n, low_seen + low
        end = start + WINDOW_MS
        if seen and binomial_tail(low_seen, seen, rate) < thresholds[end]:
            return end - onset_ms
    return None


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def simulate(
    seed: int, days: float, peak_per_window: float = 60.0, incident_share: float | None = None
) -> Run:
    """``days`` of answers through one detector, one evaluation per window."""
    started = time.perf_counter()
    rng = random.Random(seed)
    detector = LowScoreDetector()
    windows = round(days * DAY_MS / WINDOW_MS)
    last_day = math.floor(days - 1e-9)
    onset = last_day * DAY_MS + 14 * 3_600_000 if incident_share is not None else None
    decisions: list[LowScoreDecision] = []
    answers = 0
    broken: list[tuple[int, int, int]] = []  # the planted subject's windows
    thresholds: dict[int, float] = {}
    for index in range(windows):
        start = index * WINDOW_MS
        hour = (start % DAY_MS) / 3_600_000
        volume = peak_per_window * (0.1 + 0.9 * (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2)
        share = 0.15 + 0.02 * math.sin(2 * math.pi * (hour - 6) / 24)
        window: dict[tuple[str, str], tuple[int, int]] = {}
        for subject in SUBJECTS:
            n = _poisson(rng, volume * (0.5 if subject[1] == "payment" else 1.0))
            rate = share
            if onset is not None and start >= onset and subject == SUBJECTS[0]:
                rate = incident_share or share
            low = sum(rng.random() < rate for _ in range(n))
            window[subject] = (n, low)
            answers += n
        broken.append((start, *window[SUBJECTS[0]]))
        decisions += detector.evaluate(start + WINDOW_MS, window)
        thresholds[start + WINDOW_MS] = detector.threshold
    limit = information_limit_ms(onset, broken, thresholds) if onset is not None else None
    seconds = time.perf_counter() - started
    return Run(seed, days, incident_share, answers, decisions, onset, seconds, limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()
    healthy = [simulate(seed, args.days) for seed in range(args.seeds)]
    evaluations = sum(round(r.days * DAY_MS / WINDOW_MS) for r in healthy)
    print(
        f"healthy: {args.seeds} runs x {args.days:g} days, {sum(r.answers for r in healthy):,} "
        f"answers, {evaluations:,} evaluations of {len(SUBJECTS)} subjects: "
        f"{sum(len(r.false_alerts) for r in healthy)} false alerts"
    )
    for share in (0.35, 0.25):
        runs = [simulate(100 + seed, 3.0, incident_share=share) for seed in range(args.seeds)]
        latencies = sorted(r.latency_ms / 60_000 for r in runs if r.latency_ms is not None)
        detected = len(latencies)
        false = sum(len(r.false_alerts) for r in runs)
        limits = sorted(r.limit_ms / 60_000 for r in runs if r.limit_ms is not None)
        multiples = sorted(
            r.latency_ms / r.limit_ms for r in runs if r.latency_ms and r.limit_ms is not None
        )
        print(
            f"low share 15% -> {share:.0%} at 14:00: detected {detected} of {len(runs)}, "
            f"median {_middle(latencies):.0f} min, worst {_last(latencies):.0f} min, "
            f"{false} false alerts; "
            f"information limit median {_middle(limits):.0f} min, worst {_last(limits):.0f} min"
            f"; latency / limit per run: median {_middle(multiples):.2f}x, "
            f"worst {_last(multiples):.2f}x"
        )


def _middle(values: list[float]) -> float:
    return values[len(values) // 2] if values else float("nan")


def _last(values: list[float]) -> float:
    return values[-1] if values else float("nan")


if __name__ == "__main__":
    main()
