"""Realistic shop traffic: sessions that land, browse, add to cart, check out, pay and order,
with plausible drop-off at every step.

:class:`TrafficModel` is pure and seeded (same seed, same sessions); :func:`run_live` produces
its sessions to Kafka in real time at a target event rate, keyed by session id as the
contract recommends.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streamer.events import CHECKOUT_EVENT_TYPES
from streamer.kafka_io import ensure_topics, make_producer
from streamer.settings import Settings
from streamer.shapes import shape_event

__all__ = [
    "Incident",
    "SimulationReport",
    "StepRates",
    "TrafficModel",
    "run_live",
    "topic_for",
    "write_export",
]

log = logging.getLogger(__name__)

# The simulated devices and their shares (the ops-stack test declares an A/A split on them).
DEVICE_SHARES = (("desktop", 0.45), ("mobile", 0.35), ("ios", 0.1), ("android", 0.08),
                 ("tablet", 0.02))  # fmt: skip
_CHANNELS = (("organic", 0.4), ("paid_search", 0.25), ("email", 0.15), ("social", 0.12),
             ("direct", 0.08))  # fmt: skip
_COUNTRIES = (("DE", 0.5), ("AT", 0.15), ("CH", 0.1), ("NL", 0.15), ("FR", 0.1))
_PAYMENT_METHODS = (("card", 0.45), ("paypal", 0.3), ("klarna", 0.15), ("apple_pay", 0.1))
_CATEGORIES = ("shoes", "jackets", "shirts", "bags", "electronics", "home")


@dataclass(frozen=True)
class StepRates:
    """Probability of going on to the next step (the rest drop off there)."""

    view_after_landing: float = 0.85
    cart_after_view: float = 0.35
    checkout_after_cart: float = 0.55
    shipping_after_checkout: float = 0.9
    payment_after_shipping: float = 0.85
    order_after_payment: float = 0.92
    review_after_order: float = 0.08


@dataclass(frozen=True)
class Incident:
    """Between ``start`` and ``end`` (event time), payments with ``payment_method`` fail with
    probability ``failure_rate`` (a broken payment provider)."""

    start: datetime
    end: datetime
    payment_method: str = "paypal"
    failure_rate: float = 0.8


@dataclass(frozen=True)
class TrafficModel:
    rates: StepRates = field(default_factory=StepRates)
    incidents: tuple[Incident, ...] = ()
    # Typical seconds between two events of one session (exponential); a real shop's are
    # minutes, the demo compresses them.
    mean_gap_seconds: float = 20.0

    def mean_events_per_session(self, samples: int = 2000) -> float:
        rng = random.Random(0)
        start = datetime(2026, 1, 1, tzinfo=UTC)
        total = sum(len(self.session(rng, f"s{i}", start)) for i in range(samples))
        return total / samples

    def session(self, rng: random.Random, session_id: str, start: datetime) -> list[dict[str, Any]]:
        """One session's events in event-time order, as contract-valid JSON-ready dicts."""
        r = self.rates
        written = _SessionEvents(rng, session_id, start, self.mean_gap_seconds)
        emit, events = written.emit, written.events
        emit("page_view", page="/", landing=True, referrer="https://www.google.com/")
        if rng.random() >= r.view_after_landing:
            return events
        cart_value = 0.0
        products = []
        for _ in range(1 + min(int(rng.expovariate(0.5)), 8)):
            if rng.random() < 0.2:
                emit("search", query=rng.choice(_CATEGORIES), results_count=rng.randrange(200))
            product = f"p{rng.randrange(5000)}"
            price = round(rng.uniform(9, 250), 2)
            products.append((product, price))
            emit("product_view", product_id=product, category=rng.choice(_CATEGORIES),
                 price=price, currency="EUR")  # fmt: skip
        if rng.random() >= r.cart_after_view:
            return events
        for product, price in rng.sample(products, k=rng.randint(1, len(products))):
            cart_value = round(cart_value + price, 2)
            emit("add_to_cart", product_id=product, quantity=1, price=price,
                 cart_value=cart_value, currency="EUR")  # fmt: skip
        if rng.random() >= r.checkout_after_cart:
            return events
        emit("checkout_started", cart_value=cart_value, currency="EUR", item_count=1)
        if rng.random() >= r.shipping_after_checkout:
            return events
        emit("shipping_submitted", shipping_method=rng.choice(("standard", "express")))
        if rng.random() >= r.payment_after_shipping:
            return events
        method = _pick(rng, _PAYMENT_METHODS)
        emit("payment_submitted", payment_method=method, amount=cart_value, currency="EUR")
        clock = written.clock
        broken = any(
            i.start <= clock < i.end and i.payment_method == method for i in self.incidents
        )
        failed = rng.random() >= r.order_after_payment
        if broken and rng.random() < self._incident_rate(clock):
            failed = True
        if failed:
            emit("payment_failed", payment_method=method, failure_reason="declined",
                 amount=cart_value, currency="EUR")  # fmt: skip
            return events
        emit("order_placed", order_id=f"o-{session_id}", value=cart_value, currency="EUR",
             payment_method=method)  # fmt: skip
        if rng.random() < r.review_after_order:
            emit("review_submitted", product_id=products[0][0], rating=rng.randint(1, 5))
        return events

    def _incident_rate(self, moment: datetime) -> float:
        return max(i.failure_rate for i in self.incidents if i.start <= moment < i.end)

    def sessions(
        self, seed: int, count: int, start: datetime, sessions_per_second: float = 5.0
    ) -> Iterator[list[dict[str, Any]]]:
        """``count`` sessions starting as a Poisson process from ``start`` (batch datasets)."""
        rng = random.Random(seed)
        moment = start
        for index in range(count):
            yield self.session(rng, f"s{seed}-{index}", moment)
            moment += timedelta(seconds=rng.expovariate(sessions_per_second))


_CAMPAIGNS = {"google": "search_brand", "newsletter": "december_sale", "instagram": "reels_gifts"}


class _SessionEvents:
    """One session's events as it emits them: its context and user drawn once, a random gap
    before each event but the first."""

    def __init__(
        self, rng: random.Random, session_id: str, start: datetime, mean_gap_seconds: float
    ) -> None:
        context = {
            "device": _pick(rng, DEVICE_SHARES),
            "channel": _pick(rng, _CHANNELS),
            "country": _pick(rng, _COUNTRIES),
            "utm_source": rng.choice(("google", "newsletter", "instagram", None)),
        }
        # Each source's campaign, drawn from nothing: the generated traffic stays the same.
        context["utm_campaign"] = _CAMPAIGNS.get(context["utm_source"] or "")
        self._context = {k: v for k, v in context.items() if v is not None}
        self._user_id = f"u{rng.randrange(1_000_000)}" if rng.random() < 0.4 else None
        self._rng = rng
        self._session_id = session_id
        self._mean_gap_seconds = mean_gap_seconds
        self.clock = start
        self.events: list[dict[str, Any]] = []

    def emit(self, event_type: str, **props: Any) -> None:
        if self.events:
            self.clock += timedelta(seconds=self._rng.expovariate(1.0 / self._mean_gap_seconds))
        event: dict[str, Any] = {
            "event_id": f"{self._session_id}-{len(self.events) + 1}",
            "event_type": event_type,
            "session_id": self._session_id,
            "occurred_at": self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "context": self._context,
            **props,
        }
        if self._user_id is not None:
            event["user_id"] = self._user_id
        self.events.append(event)


def _pick(rng: random.Random, weighted: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([name for name, _ in weighted], [w for _, w in weighted])[0]


def topic_for(settings: Settings, event_type: str) -> str:
    return (
        settings.checkout_topic
        if event_type in CHECKOUT_EVENT_TYPES
        else settings.clickstream_topic
    )


@dataclass
class SimulationReport:
    sessions: int = 0
    events: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def count(self, event: dict[str, Any]) -> None:
        self.events += 1
        self.by_type[event["event_type"]] = self.by_type.get(event["event_type"], 0) + 1


def _schedule(
    pending: list[tuple[float, int, dict[str, Any]]],
    session: list[dict[str, Any]],
    wall_start: datetime,
    tiebreak: Iterator[int],
) -> None:
    """Queue a session's events at their seconds after ``wall_start``."""
    for event in session:
        offset = (datetime.fromisoformat(event["occurred_at"]) - wall_start).total_seconds()
        heapq.heappush(pending, (offset, next(tiebreak), event))


async def run_live(
    settings: Settings,
    *,
    rate: float,
    duration: float,
    seed: int = 1,
    model: TrafficModel | None = None,
    shape: str = "streamer",
) -> SimulationReport:
    """Produce ~``rate`` events per second for ``duration`` seconds, in real time, in
    ``shape`` (streamer's own events, or ``segment``/``posthog``: ``streamer.shapes``).

    Sessions start as a Poisson process; each event is sent when its event time comes due, so
    sessions interleave as in a real shop. Sessions still under way at the end are cut short.
    """
    # Live sessions are compressed (seconds between clicks, not minutes) so a short demo
    # shows every step of the funnel.
    model = model or TrafficModel(mean_gap_seconds=3.0)
    session_rate = rate / model.mean_events_per_session()
    rng = random.Random(seed)
    await ensure_topics(settings, (settings.clickstream_topic, settings.checkout_topic))
    producer = make_producer(settings, linger_ms=5, acks="all")
    await producer.start()
    report = SimulationReport()
    pending: list[tuple[float, int, dict[str, Any]]] = []
    tiebreak = itertools.count()  # equal times leave in the order queued (dicts never compared)
    began = time.monotonic()
    wall_start = datetime.now(UTC)
    next_session_at = 0.0
    try:
        while (elapsed := time.monotonic() - began) < duration:
            while next_session_at <= elapsed:
                start = wall_start + timedelta(seconds=next_session_at)
                session = model.session(rng, f"sim-{seed}-{report.sessions}", start)
                _schedule(pending, session, wall_start, tiebreak)
                report.sessions += 1
                next_session_at += rng.expovariate(session_rate)
            while pending and pending[0][0] <= elapsed:
                _, _, event = heapq.heappop(pending)
                await producer.send(
                    topic_for(settings, event["event_type"]),
                    key=event["session_id"].encode(),
                    value=orjson.dumps(shape_event(shape, event)),
                )
                report.count(event)
            wake = min(next_session_at, pending[0][0] if pending else math.inf, duration)
            await asyncio.sleep(max(0.0, min(0.05, wake - (time.monotonic() - began))))
    finally:
        await producer.stop()  # flushes what is buffered
    return report


def write_export(
    path: Path,
    *,
    rate: float,
    duration: float,
    seed: int = 1,
    shape: str = "streamer",
    end: datetime | None = None,
) -> SimulationReport:
    """Write ``duration`` seconds of history (ending at ``end``, default now) at ~``rate``
    events per second to ``path`` as JSONL in ``shape``, in event-time order: an export to
    try ``streamer report`` on. Same seed and end, same file."""
    model = TrafficModel()
    end = end or datetime.now(UTC).replace(microsecond=0)
    sessions_per_second = rate / model.mean_events_per_session()
    count = max(1, round(duration * sessions_per_second))
    start = end - timedelta(seconds=duration)
    events = [
        event
        for session in model.sessions(seed, count, start, sessions_per_second)
        for event in session
        if datetime.fromisoformat(event["occurred_at"]) < end
    ]
    events.sort(key=lambda event: str(event["occurred_at"]))
    report = SimulationReport(sessions=count)
    with path.open("wb") as out:
        for event in events:
            out.write(orjson.dumps(shape_event(shape, event)) + b"\n")
            report.count(event)
    return report
