"""Alert quality: the pure core and detector over simulated days of shop traffic (no broker).

``python -m benchmarks.alert_quality [--seeds 10] [--days 7]`` runs

- **healthy** traffic: ``--days`` days from a cold start at midnight of day 0 to an end of input,
  daytime peak ``--peak`` sessions/min entering the funnel, a tenth of it at night, conversion
  drifting a few points with the hour, one or two 3x surges of 20 minutes a day at random
  times. Every alert is a false alert.
- **healthy** traffic through the same funnel in the other order modes (``--orders strict
  unordered``, :func:`funnel_in_order`): every alert is a false alert.
- **incidents** at 14:00 of day 0 (after the night's warm-up), one run each per seed: one payment
  method (apple_pay, 10% of the payment step) failing 90% of payments; payments failing for
  everyone; the checkout topic silent for 15 minutes (tracking broke, conversion did not: the
  data-quality alert must name the topic, and no drop-off alert may fire).

and writes ``docs/alert-quality.md``: false alerts per simulated day, detection latency per
incident kind (watermark time from onset to the first alert naming the right step, and for
the segment failure the segment named first), misses. Latency is counted in *watermark* time:
what the detector knows; the watermark trails the newest events by the allowed lateness.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import math
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.funnel.detect import AlertDecision, Decision, FunnelDetector
from streamer.funnel.session import CompiledFunnel, StoredEvent
from streamer.funnel.statistics import binomial_lower_tail
from streamer.funnel.task import Task
from streamer.funnel.tracking import TrackingDecision
from streamer.funnel.windows import LOOKS_PER_WINDOW, WindowCounts, look_ms

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = ROOT / "deploy/funnels/checkout.yaml"
MINUTE = 60_000
DAY = 1_440 * MINUTE
LATENESS_MS = 120_000  # the worker's default allowed lateness
EPOCH_MS = round(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)  # a Monday, 00:00
INCIDENT_AT = 14 * 60 * MINUTE  # 14:00 of day 0: every step is warm by ~01:30
INCIDENT_RUN_DAYS = 0.75  # to 18:00 of day 0
CHECKOUT_TOPIC_TYPES = frozenset(
    {"checkout_started", "shipping_submitted", "payment_submitted", "payment_failed",
     "order_placed"}
)  # fmt: skip

DEVICES = (("desktop", 0.45), ("mobile", 0.35), ("ios", 0.1), ("android", 0.08), ("tablet", 0.02))
CHANNELS = (("organic", 0.4), ("paid_search", 0.25), ("email", 0.15), ("social", 0.12),
            ("direct", 0.08))  # fmt: skip
COUNTRIES = (("DE", 0.5), ("AT", 0.15), ("CH", 0.1), ("NL", 0.15), ("FR", 0.1))
PAYMENTS = (("card", 0.45, 0.93), ("paypal", 0.3, 0.92), ("klarna", 0.15, 0.88),
            ("apple_pay", 0.1, 0.95))  # fmt: skip
# (probability of going on, mean seconds until the next step's event)
STEPS = {
    "view": (0.85, 40.0),
    "cart": (0.35, 120.0),
    "checkout": (0.55, 180.0),
    "payment": (0.77, 120.0),
}
ORDER_GAP_S = 8.0
# The information limit (docs/alert-quality.md): the broken segment's rate before the onset is
# read over the hours before it; the limit is searched on this grid of watermark time.
BEFORE_ONSET_MS = 2 * 60 * MINUTE
LIMIT_STEP_MS = 5_000
# A test of the attempts at least this old (each a candidate: the limit is the best of them),
# so the newest attempts, which could not have converted yet, do not dilute the test.
LIMIT_MIN_AGES_MS = (0, 10_000, 20_000, 30_000, 60_000)


@dataclass(frozen=True)
class Incident:
    kind: str  # "segment" | "step" | "silence"
    start_ms: int
    end_ms: int

    @property
    def step(self) -> str:
        return {"segment": "payment->order", "step": "payment->order"}.get(self.kind, "")

    def broken(self, method: str) -> bool:
        """Whether a payment by ``method`` is in the segment the incident breaks."""
        return self.kind == "step" or (self.kind == "segment" and method == "apple_pay")


INCIDENTS = {
    "segment": Incident("segment", INCIDENT_AT, INCIDENT_AT + 30 * MINUTE),
    "step": Incident("step", INCIDENT_AT, INCIDENT_AT + 30 * MINUTE),
    "silence": Incident("silence", INCIDENT_AT, INCIDENT_AT + 15 * MINUTE),
    # The same segment failure at night-time volume (a tenth of the day's), 03:00 of day 1.
    "segment_night": Incident("segment", DAY + 3 * 60 * MINUTE, DAY + 4 * 60 * MINUTE),
}
INCIDENT_KINDS = ("segment", "segment_night", "step", "silence")


def run_days(scenario: str) -> float:
    """How long an incident run lasts: to 18:00 of day 0, or an hour past a later end."""
    incident = INCIDENTS[scenario]
    return max(INCIDENT_RUN_DAYS, (incident.end_ms + 60 * MINUTE) / DAY)


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    roll, total = rng.random(), 0.0
    for name, weight in weighted:
        total += weight
        if roll < total:
            return name
    return weighted[-1][0]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, product = math.exp(-lam), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


@dataclass
class Shop:
    """Sessions entering the funnel, minute by minute, as the core's stored events."""

    seed: int
    peak_per_minute: float
    incident: Incident | None = None
    rng: random.Random = field(init=False)
    surges: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        plan = random.Random(self.seed * 7919 + 1)
        for day in range(60):
            for _ in range(plan.choice((1, 1, 2))):
                start = day * DAY + plan.randrange(0, DAY - 20 * MINUTE)
                self.surges.append((start, start + 20 * MINUTE))

    def rate(self, at_ms: int) -> float:
        at_ms -= EPOCH_MS
        hour = (at_ms % DAY) / (60 * MINUTE)
        daily = 0.1 + 0.9 * (1 - math.cos(2 * math.pi * (hour - 4) / 24)) / 2
        surge = 3.0 if any(a <= at_ms < b for a, b in self.surges) else 1.0
        return self.peak_per_minute * daily * surge

    def drift(self, at_ms: int) -> float:
        hour = (at_ms % DAY) / (60 * MINUTE)
        return 1.0 + 0.04 * math.sin(2 * math.pi * (hour - 6) / 24)

    def minute(self, minute_ms: int) -> Iterator[tuple[int, str, StoredEvent]]:
        rng = self.rng
        for _ in range(_poisson(rng, self.rate(minute_ms))):
            start = minute_ms + rng.randrange(MINUTE)
            yield from self.session(f"{self.seed}-{start}-{rng.randrange(10**9)}", start)

    def session(self, session_id: str, start_ms: int) -> Iterator[tuple[int, str, StoredEvent]]:
        rng, drift = self.rng, self.drift(start_ms)
        context = {
            "context.device": _pick(rng, DEVICES),
            "context.channel": _pick(rng, CHANNELS),
            "context.country": _pick(rng, COUNTRIES),
        }
        clock, seq = start_ms, 0

        def event(event_type: str, **fields: object) -> tuple[int, str, StoredEvent]:
            nonlocal seq
            seq += 1
            stored = StoredEvent(clock, f"{session_id}-{seq}", event_type, {**context, **fields})
            return clock, session_id, stored

        def go(step: str) -> bool:
            nonlocal clock
            chance, gap_s = STEPS[step]
            if rng.random() >= min(0.99, chance * drift):
                return False
            clock += 1 + round(rng.expovariate(1.0 / gap_s) * 1000)
            return True

        yield event("page_view", landing=True)
        if not go("view"):
            return
        yield event("product_view")
        if not go("cart"):
            return
        value = round(rng.uniform(9, 250), 2)
        yield event("add_to_cart", cart_value=value)
        if not go("checkout"):
            return
        yield event("checkout_started", cart_value=value)
        if not go("payment"):
            return
        roll, total, method, success = rng.random(), 0.0, PAYMENTS[-1][0], PAYMENTS[-1][2]
        for name, weight, rate in PAYMENTS:
            total += weight
            if roll < total:
                method, success = name, rate
                break
        yield event("payment_submitted", payment_method=method, amount=value)
        incident = self.incident
        if incident and incident.start_ms <= clock - EPOCH_MS < incident.end_ms:
            if incident.kind == "segment" and method == "apple_pay":
                success = 0.10
            elif incident.kind == "step":
                success = 0.05
        clock += 1 + round(rng.expovariate(1.0 / ORDER_GAP_S) * 1000)
        if rng.random() < min(0.99, success * drift):
            yield event("order_placed", value=value, payment_method=method)
        else:
            yield event("payment_failed", payment_method=method)


@dataclass
class RunResult:
    seed: int
    scenario: str
    days: float
    sessions: int
    alerts: list[Decision]
    warm_at_ms: dict[str, int | None]
    seconds: float
    order: str = "ordered"
    # Incident runs: the broken segment's payments around the onset, (payment time, order time
    # or None) in event time, and the detector's per-test threshold at each evaluation there.
    broken_payments: list[tuple[int, int | None]] = field(default_factory=list)
    thresholds: dict[int, float] = field(default_factory=dict)
    looks: int = LOOKS_PER_WINDOW  # the detector's looks per window (1: before early looks)


def funnel_in_order(order: str) -> FunnelDefinition:
    """The checkout funnel in ``order`` mode. Strict as it is: the simulated sessions do their
    steps back to back (a product_view before the cart is a stage; a payment_failed instead of
    the order breaks the last step at once). Unordered without what positions cannot have (a
    stage's own timeout, abandonment stages): every position's timeout is 30 minutes."""
    raw = yaml.safe_load(CHECKOUT.read_text())
    raw["order"] = order
    if order == "unordered":
        raw["stages"] = [
            {k: v for k, v in stage.items() if k != "timeout"} for stage in raw["stages"]
        ]
        raw["abandonment"] = []
        raw["step_timeout"] = "30m"
    return FunnelDefinition.model_validate(raw)


def simulate(
    seed: int,
    scenario: str,
    days: float,
    peak: float,
    funnel: FunnelDefinition | None = None,
    looks: int = LOOKS_PER_WINDOW,
) -> RunResult:
    """Feed ``days`` of traffic through one task and the funnel's detector, look by look
    (events offered in event-time order, the watermark ``LATENESS_MS`` behind the newest;
    ``looks`` per minute, as the detector's ``looks_per_window``)."""
    started = time.perf_counter()
    definition = funnel or load_funnel(CHECKOUT)
    compiled = CompiledFunnel(definition)
    incident = INCIDENTS.get(scenario)
    shop = Shop(seed, peak, incident)
    task = Task((compiled,), 0, retention_ms=3_600_000)
    detector = FunnelDetector(definition, looks)
    step_ms = look_ms(definition.window_ms) if looks > 1 else definition.window_ms
    assert MINUTE % step_ms == 0, "the traffic is made a minute at a time"
    windows: dict[int, WindowCounts] = {}
    pending: list[tuple[int, int, str, StoredEvent]] = []
    alerts: list[Decision] = []
    warm_at: dict[str, int | None] = dict.fromkeys(definition.step_names)
    order, sessions = 0, 0
    horizon = definition.window_ms + definition.finality_lag_ms
    # The broken segment's payments near the onset (session -> [payment ms, order ms]).
    watched: dict[str, list[int | None]] = {}
    thresholds: dict[int, float] = {}
    near = (
        range(EPOCH_MS + incident.start_ms - BEFORE_ONSET_MS, EPOCH_MS + incident.end_ms)
        if incident is not None and incident.step
        else range(0)
    )
    for minute in range(round(days * 1440)):
        minute_ms = minute * MINUTE
        for at_ms, session_id, stored in shop.minute(EPOCH_MS + minute_ms):
            order += 1
            heapq.heappush(pending, (at_ms, order, session_id, stored))
            sessions += stored.event_type == "page_view"
        for end_ms in range(minute_ms + step_ms, minute_ms + MINUTE + 1, step_ms):
            while pending and pending[0][0] < EPOCH_MS + end_ms:
                at_ms, _, session_id, stored = heapq.heappop(pending)
                silenced = (
                    incident is not None
                    and incident.kind == "silence"
                    and incident.start_ms <= at_ms - EPOCH_MS < incident.end_ms
                    and stored.event_type in CHECKOUT_TOPIC_TYPES
                )
                if incident is not None and at_ms in near:
                    method = str(stored.fields.get("payment_method", ""))
                    if stored.event_type == "payment_submitted" and incident.broken(method):
                        watched[session_id] = [at_ms, None]
                    elif stored.event_type == "order_placed" and session_id in watched:
                        watched[session_id][1] = at_ms
                if not silenced:
                    checkout = stored.event_type in CHECKOUT_TOPIC_TYPES
                    task.offer(session_id, stored, None, "checkout" if checkout else "clickstream")
            watermark = end_ms - LATENESS_MS
            if watermark <= 0:
                continue
            task.advance(EPOCH_MS + watermark)
            for partial in task.drain().partials:
                windows[partial.window_start_ms] = partial.counts
            alerts.extend(detector.evaluate(EPOCH_MS + watermark, windows))
            if EPOCH_MS + watermark in near:
                thresholds[EPOCH_MS + watermark] = detector.threshold
            for start in [s for s in windows if s + horizon <= EPOCH_MS + watermark]:
                del windows[start]
            for step, warming in detector.warming_up().items():
                if not warming and warm_at[step] is None:
                    warm_at[step] = watermark
    elapsed = time.perf_counter() - started
    payments = sorted((int(pay or 0), placed) for pay, placed in watched.values())
    return RunResult(
        seed, scenario, days, sessions, alerts, warm_at, elapsed, str(definition.order),
        payments, thresholds, looks,
    )  # fmt: skip


def information_limit_ms(result: RunResult) -> int | None:
    """Watermark time from the onset to the incident's **information limit**: the earliest
    moment at which a one-sided exact binomial test of the broken segment's conversions since
    the onset (those seen by then), against that segment's conversion before the onset
    (scaled by the share converting within each attempt's age, as the data before the onset
    converted), at the detector's own per-test threshold at that moment, would fire. What
    the data could say at the earliest, searched every ``LIMIT_STEP_MS``; no minimum count
    or effect. None when it never could within the incident."""
    incident = INCIDENTS.get(result.scenario)
    if incident is None or not incident.step or not result.thresholds:
        return None
    onset = EPOCH_MS + incident.start_ms
    before = [(pay, placed) for pay, placed in result.broken_payments if pay < onset]
    delays = sorted(placed - pay for pay, placed in before if placed is not None)
    if not before or not delays:
        return None
    rate = len(delays) / len(before)
    after = [(pay, placed) for pay, placed in result.broken_payments if pay >= onset]
    evaluations = sorted(result.thresholds)
    for at in range(onset + LIMIT_STEP_MS, EPOCH_MS + incident.end_ms + 1, LIMIT_STEP_MS):
        # The threshold of the detector's latest evaluation by then.
        latest = evaluations[max(bisect.bisect_right(evaluations, at) - 1, 0)]
        threshold = result.thresholds[latest]
        for min_age in LIMIT_MIN_AGES_MS:
            seen = [(pay, placed) for pay, placed in after if pay <= at - min_age]
            if not seen:
                continue
            converted = sum(1 for _, placed in seen if placed is not None and placed <= at)
            share = sum(bisect.bisect_right(delays, at - pay) for pay, _ in seen) / len(delays)
            expected = rate * share / len(seen)
            if binomial_lower_tail(converted, len(seen), expected) < threshold:
                return at - onset
    return None


@dataclass
class Verdict:
    false_alerts: list[Decision]
    latency_ms: int | None = None  # incident runs: onset to the first right alert
    segment_named_first: bool | None = None
    limit_ms: int | None = None  # incident runs: onset to the information limit


def judge(result: RunResult) -> Verdict:
    """Which alerts were false, and how fast the incident (if any) was found."""
    firing = [a for a in result.alerts if a.state == "firing"]
    incident = INCIDENTS.get(result.scenario)
    if incident is None:
        return Verdict(false_alerts=firing)
    onset = EPOCH_MS + incident.start_ms
    during = range(onset, onset + (incident.end_ms - incident.start_ms) + 1)

    def right_one(a: Decision) -> bool:
        if a.evaluated_at_ms not in during:
            return False
        if incident.kind == "silence":  # the topic named, and nothing else
            return isinstance(a, TrackingDecision) and (a.subject, a.name) == ("topic", "checkout")
        return isinstance(a, AlertDecision) and a.alert_id.split("/")[1] == incident.step

    right = [a for a in firing if right_one(a)]
    verdict = Verdict(false_alerts=[a for a in firing if a not in right])
    verdict.limit_ms = information_limit_ms(result)
    if right:
        first = right[0]
        verdict.latency_ms = first.evaluated_at_ms - onset
        if incident.kind == "segment" and isinstance(first, AlertDecision):
            named = first.explanations[0] if first.explanations else None
            verdict.segment_named_first = named is not None and (named.dimension, named.value) == (
                "payment_method",
                "apple_pay",
            )
    return verdict


Job = tuple[int, str, float, float, str, int]  # seed, scenario, days, peak, order mode, looks


def run_job(job: Job) -> RunResult:
    seed, scenario, days, peak, order, looks = job
    funnel = None if order == "ordered" else funnel_in_order(order)
    return simulate(seed, scenario, days, peak, funnel, looks)


def run_all(
    seeds: int,
    days: float,
    peak: float,
    workers: int,
    orders: Sequence[str] = (),
    compare_looks: Sequence[int] = (),
) -> list[RunResult]:
    """The healthy runs (every order) and the incident runs with the detector as it is; the
    incidents with a conversion limit also with each of ``compare_looks`` looks per window
    (1: as before the early looks), on the same traffic (same seeds)."""
    now = LOOKS_PER_WINDOW
    seeded = range(1, seeds + 1)
    jobs: list[Job] = [(seed, "healthy", days, peak, "ordered", now) for seed in seeded]
    jobs += [
        (seed, kind, run_days(kind), peak, "ordered", now)
        for seed in seeded
        for kind in INCIDENT_KINDS
    ]
    jobs += [  # the incidents with a conversion limit (the silence has none)
        (seed, kind, run_days(kind), peak, "ordered", looks)
        for looks in sorted(set(compare_looks) - {now})
        for seed in seeded
        for kind in INCIDENT_KINDS
        if INCIDENTS[kind].step
    ]
    jobs += [(seed, "healthy", days, peak, order, now) for order in orders for seed in seeded]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_job, jobs))


def _fmt_min(ms: float) -> str:
    return f"{ms / MINUTE:.1f}"


def _describe(alert: Decision) -> str:
    at = datetime.fromtimestamp(alert.evaluated_at_ms / 1000, tz=UTC) - datetime.fromtimestamp(
        EPOCH_MS / 1000, tz=UTC
    )
    if isinstance(alert, TrackingDecision):
        return (
            f"data quality `{alert.subject} {alert.name}` day {at.days} "
            f"{at.seconds // 3600:02d}:{at.seconds % 3600 // 60:02d} (expected "
            f"{alert.expected_events:.0f} events)"
        )
    why = ", ".join(f"{e.dimension}={e.value}" for e in alert.explanations[:2])
    return (
        f"`{alert.alert_id.split('/')[1]}` day {at.days} {at.seconds // 3600:02d}:"
        f"{at.seconds % 3600 // 60:02d} ({alert.basis}, observed {alert.observed_rate:.3f} vs "
        f"{alert.expected_rate:.3f}, n={alert.decided}, p={alert.p_value:.1e}"
        f"{', ' + why if why else ''})"
    )


def report(results: list[RunResult], command: str, elapsed: float, peak: float) -> str:
    healthy = [r for r in results if r.scenario == "healthy" and r.order == "ordered"]
    compared = sorted({r.looks for r in results} - {LOOKS_PER_WINDOW})
    lines = [
        "# Alert quality",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}` in {elapsed / 60:.0f} "
        "minutes: the pure core and detector (`streamer.funnel`) over simulated event time, "
        "no broker. Funnel `deploy/funnels/checkout.yaml` with its alert policy; one task; "
        "events offered in event-time order, the watermark 120 s (the default allowed "
        f"lateness) behind the newest; the detector looks {LOOKS_PER_WINDOW} times per minute "
        "of watermark (at each minute every test, between them its early looks: "
        'docs/alerts.md, "Early looks")'
        + (
            ", and the incidents also with "
            + ", ".join(f"{n} look{'s' if n > 1 else ''}" for n in compared)
            + " per minute (1: the detector before the early looks), on the same traffic."
            if compared
            else "."
        ),
        "",
        "Traffic (`benchmarks/alert_quality.py`): sessions entering the funnel peak at "
        f"{peak:g}/min by day (a tenth at night), conversion drifting ±4% with the hour, one "
        "or two 3x surges of 20 minutes a day at random times; a cold start at midnight of "
        "day 0 and an end of input at the last minute.",
        "",
        "## Healthy traffic: false alerts",
        "",
        "| seed | days | sessions | alerts (all false) | steps warm after (h, slowest) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in healthy:
        warm = [v for v in r.warm_at_ms.values() if v is not None]
        slowest = f"{max(warm) / 3_600_000:.1f}" if len(warm) == len(r.warm_at_ms) else "never"
        lines.append(f"| {r.seed} | {r.days:g} | {r.sessions:,} | {len(r.alerts)} | {slowest} |")
    days = sum(r.days for r in healthy)
    false_healthy = sum(len(judge(r).false_alerts) for r in healthy)
    lines += [
        "",
        f"**{false_healthy} false alerts in {days:g} simulated days "
        f"({false_healthy / max(days, 1):.3f} per day).**",
        "",
    ]
    for r in healthy:
        for alert in judge(r).false_alerts[:5]:
            lines.append(f"- seed {r.seed}: {_describe(alert)}")
    others = [r for r in results if r.scenario == "healthy" and r.order != "ordered"]
    if others:
        lines += [
            "## Healthy traffic in the other order modes: false alerts",
            "",
            "The same traffic and alert policy through the funnel in `strict` and `unordered` "
            'order (`funnel_in_order`; docs/alerts.md, "Every mode").',
            "",
            "| order | seed | days | sessions | alerts (all false) |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in others:
            false = len(judge(r).false_alerts)
            lines.append(f"| {r.order} | {r.seed} | {r.days:g} | {r.sessions:,} | {false} |")
        for r in others:
            for alert in judge(r).false_alerts[:3]:
                lines.append(f"- {r.order}, seed {r.seed}: {_describe(alert)}")
        lines.append("")
    lines += [
        "",
        "## Incidents (at 14:00 of day 0, runs end at 18:00; at night: 03:00 of day 1)",
        "",
        "| incident | looks / min | runs | detected | latency median / worst (min) | "
        "information limit median / worst (min) | latency / limit median / worst | segment "
        "named first | false alerts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "segment": "apple_pay (10% of payments) fails 90%",
        "segment_night": "apple_pay fails 90%, at night (a tenth of the volume)",
        "step": "payments fail for everyone (95%)",
        "silence": "checkout topic silent 15 min",
    }
    for kind, looks in [(k, n) for k in INCIDENT_KINDS for n in [*compared, LOOKS_PER_WINDOW]]:
        runs = [r for r in results if r.scenario == kind and r.looks == looks]
        if not runs:
            continue
        verdicts = [judge(r) for r in runs]
        limits = [v.limit_ms for v in verdicts if v.limit_ms is not None]
        multiples = [v.latency_ms / v.limit_ms for v in verdicts if v.latency_ms and v.limit_ms]
        limit = (
            f"{_fmt_min(statistics.median(limits))} / {_fmt_min(max(limits))}" if limits else "-"
        )
        multiple = (
            f"{statistics.median(multiples):.2f}x / {max(multiples):.2f}x" if multiples else "-"
        )
        latencies = [v.latency_ms for v in verdicts if v.latency_ms is not None]
        named = [v.segment_named_first for v in verdicts if v.segment_named_first is not None]
        false_count = sum(len(v.false_alerts) for v in verdicts)
        detected = f"{len(latencies)} of {len(runs)}"
        latency = (
            f"{_fmt_min(statistics.median(latencies))} / {_fmt_min(max(latencies))}"
            if latencies
            else "-"
        )
        named_text = f"{sum(named)} of {len(named)}" if named else "-"
        lines.append(
            f"| {names[kind]} | {looks} | {len(runs)} | {detected} | {latency} | {limit} "
            f"| {multiple} "
            f"| {named_text} | {false_count} |"
        )
    lines += [
        "",
        "Detected: a firing alert on the broken step (for the silence: a data-quality alert "
        "naming the checkout topic) between the onset and the incident's end; latency in "
        "watermark time. False alerts: any other firing alert of the run (for the silence, "
        "every drop-off alert: tracking broke, conversion did not).",
        "",
        "Information limit (`information_limit_ms`): the earliest watermark, on a 5 s grid, at "
        "which a one-sided exact binomial test of the broken segment's conversions since the "
        "onset (the payments seen by then, converted by then), against that segment's "
        "conversion over the two hours before the onset (times the share of it that converts "
        "within each payment's age), at the detector's own per-test threshold of that moment "
        "(its family's significance over Tarone's count), would fire; no minimum count or "
        "effect. Latency / limit is per run; the silence has no conversion limit (-).",
        "",
        "What holds the latency above the limit (the detector's structure, "
        "`streamer/funnel/detect.py`): a cohort is a one-minute window, tested at matched age "
        "once it is `min_age` (60 s) past its end at the minute's boundary; between "
        "boundaries, every 15 s, the early looks test the step over quarter-minute slices of "
        "the newest windows, each once it is 15 s old, at the time-to-convert bounds its age "
        "reaches (15 s, 30 s, ...). So a break at a minute's start is first tested 30 s later, "
        "on one slice (about 9 payments by day: not enough at the threshold), and found at "
        "45 s on two; the limit reads each payment's exact age, about 25 s. With one look a "
        "minute (the rows with 1 look) the floor was 2 minutes. The early looks test the step "
        "only: a segment's failure is found at the boundaries, as before. A segment too small "
        "for one young span (at night apple_pay has about 0.4 payments a minute: fewer than 5 "
        "expected conversions in the young cohorts, never 10 sessions in one final window) is "
        "found by the matched-age test over the accumulated spans (20 and 30 minutes, taking "
        "in the cohorts already final for the step): the evidence of every payment since the "
        "break, in the same family. The limit reads the threshold of the latest look, an early "
        "one too (fewer tests, its share of the significance: docs/alerts.md).",
        "",
    ]
    for r in results:
        if r.scenario in INCIDENT_KINDS:
            for alert in judge(r).false_alerts[:3]:
                lines.append(
                    f"- {r.scenario}, {r.looks} looks/min, seed {r.seed}, false: {_describe(alert)}"
                )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--peak", type=float, default=300, help="sessions/min entering by day")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--orders",
        nargs="*",
        default=["strict", "unordered"],
        choices=["strict", "unordered"],
        help="other order modes to run the healthy traffic through",
    )
    parser.add_argument(
        "--compare-looks",
        nargs="*",
        type=int,
        default=[1],
        help="the incidents also with these looks per window (1: before the early looks)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/alert-quality.md")
    args = parser.parse_args()
    began = time.perf_counter()
    results = run_all(
        args.seeds, args.days, args.peak, args.workers, args.orders, args.compare_looks
    )
    command = " ".join(
        [
            f"python -m benchmarks.alert_quality --seeds {args.seeds} --days {args.days:g}",
            f"--peak {args.peak:g} --orders",
            *args.orders,
            "--compare-looks",
            *map(str, args.compare_looks),
        ]
    )
    text = report(results, command, time.perf_counter() - began, args.peak)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
