"""Generated shop traffic as users' producers send it, for end-to-end tests on real Kafka.

Events arrive roughly in time order, each delayed by up to ``disorder_s`` (network, batching,
mobile apps coming back online), a share of them twice (producer retries). At the end every
partition of both topics gets a *closing* event far later in event time, so the watermark
passes every window and the test can compare final numbers; closing events match no stage.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from streamer.events import CHECKOUT_EVENT_TYPES
from streamer.settings import Settings
from streamer.simulate import TrafficModel, topic_for

ENVELOPE = {"event_id", "event_type", "session_id", "user_id", "occurred_at", "sent_at", "context"}


def at_ms(event: dict[str, Any]) -> int:
    moment = event["occurred_at"]
    if isinstance(moment, int):
        return moment
    return round(datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp() * 1000)


def oracle_event(event: dict[str, Any]) -> dict[str, Any]:
    """A contract event -> the oracle's input row."""
    return {
        "session_id": event["session_id"],
        "user_id": event.get("user_id"),
        "event_id": event["event_id"],
        "event_type": event["event_type"],
        "at_ms": at_ms(event),
        "properties": {k: v for k, v in event.items() if k not in ENVELOPE},
        "context": dict(event.get("context") or {}),
    }


@dataclass
class Dataset:
    arrivals: list[dict[str, Any]]  # in the order producers send them (copies included)
    closing_ms: int  # event time of the closing events
    sessions: int

    def messages(self, settings: Settings) -> list[tuple[str, bytes, bytes]]:
        return [
            (topic_for(settings, e["event_type"]), e["session_id"].encode(), orjson.dumps(e))
            for e in self.arrivals
        ]

    def closing(self, settings: Settings) -> list[tuple[str, int, bytes, bytes]]:
        return closing_messages(settings, self.closing_ms)

    def oracle_events(self) -> list[dict[str, Any]]:
        return [oracle_event(e) for e in self.arrivals]

    @property
    def final_watermark_ms(self) -> int:
        return self.closing_ms - 120_000  # the default allowed lateness


def partition_of(session_id: str, partitions: int) -> int:
    """The partition a producer keying by session puts it on (Kafka's default partitioner)."""
    return (murmur2(session_id.encode()) & 0x7FFFFFFF) % partitions


def users_across_partitions(data: Dataset, partitions: int) -> int:
    """How many users of ``data`` have sessions on more than one of ``partitions``."""
    found: dict[str, set[int]] = {}
    for event in data.arrivals:
        if event.get("user_id"):
            found.setdefault(event["user_id"], set()).add(
                partition_of(event["session_id"], partitions)
            )
    return sum(1 for seen in found.values() if len(seen) > 1)


def closing_messages(
    settings: Settings, at_ms: int, tag: str = "", partitions: Mapping[str, int] | None = None
) -> list[tuple[str, int, bytes, bytes]]:
    """(topic, partition, key, value): an event at ``at_ms`` on every partition of both
    topics, matching no funnel stage, so every input's front reaches ``at_ms`` (``tag``: in
    the event ids, for a second round, which would otherwise be duplicates of the first;
    ``partitions``: each topic's partition count when not ``topic_partitions``)."""
    counts = dict.fromkeys(
        (settings.clickstream_topic, settings.checkout_topic), settings.topic_partitions
    ) | dict(partitions or {})
    out = []
    for partition in range(max(counts.values())):
        for topic, event_type, extra in (
            (settings.clickstream_topic, "page_view", {"page": "/closing", "landing": False}),
            (settings.checkout_topic, "shipping_submitted", {"shipping_method": "none"}),
        ):
            if partition >= counts[topic]:
                continue
            session = f"closing-{partition}"
            event = {
                "event_id": f"closing{tag}-{topic}-{partition}",
                "event_type": event_type,
                "session_id": session,
                "occurred_at": at_ms,
                **extra,
            }
            out.append((topic, partition, session.encode(), orjson.dumps(event)))
    return out


def generate(
    *,
    seed: int,
    minutes: float,
    sessions_per_second: float,
    disorder_s: float = 60.0,
    duplicate_share: float = 0.01,
    start: datetime | None = None,
    checkout_silent_minutes: tuple[float, float] | None = None,
) -> Dataset:
    """``checkout_silent_minutes``: from and to, in minutes after the start, the checkout
    topic's producer sends nothing (its events of that time are lost: broken tracking)."""
    rng = random.Random(seed)
    # History ending a few hours ago: the closing events must not be in the future.
    begin = start or datetime.now(UTC) - timedelta(minutes=minutes) - timedelta(hours=4)
    count = round(minutes * 60 * sessions_per_second)
    sessions = list(
        TrafficModel().sessions(
            seed=seed, count=count, start=begin, sessions_per_second=sessions_per_second
        )
    )
    silent = range(0)
    if checkout_silent_minutes is not None:
        since, until = (
            round(begin.timestamp() * 1000 + m * 60_000) for m in checkout_silent_minutes
        )
        silent = range(since, until)
    sent = (
        event
        for session in sessions
        for event in session
        if not (event["event_type"] in CHECKOUT_EVENT_TYPES and at_ms(event) in silent)
    )
    arrivals = _arrivals(rng, sent, disorder_s, duplicate_share)
    last = max(at_ms(event) for event in arrivals)
    return Dataset(arrivals=arrivals, closing_ms=last + 3 * 3_600_000, sessions=len(sessions))


def _arrivals(
    rng: random.Random,
    events: Iterable[dict[str, Any]],
    disorder_s: float,
    duplicate_share: float,
) -> list[dict[str, Any]]:
    """``events`` in the order producers send them: each delayed by up to ``disorder_s``, a
    ``duplicate_share`` of them sent again up to 5 s later (retries)."""
    timed: list[tuple[float, dict[str, Any]]] = []
    for event in events:
        arrival = at_ms(event) + rng.uniform(0, disorder_s * 1000)
        timed.append((arrival, event))
        if rng.random() < duplicate_share:
            timed.append((arrival + rng.uniform(0, 5000), event))
    timed.sort(key=lambda pair: pair[0])
    return [event for _, event in timed]


def product_cart_order_yaml(name: str, *, by_user: bool, conversion_window: str = "4h") -> str:
    """The funnel file the user-funnel tests read (product -> cart -> order, 10-minute windows,
    device segments, abandonment at cart), followed by user or by session."""
    follows = "follows: user\n" if by_user else ""
    return f"""\
name: {name}
{follows}conversion_window: {conversion_window}
window: 10m
stages:
  - {{name: product, event_types: [product_view]}}
  - {{name: cart, event_types: [add_to_cart]}}
  - {{name: order, event_types: [order_placed]}}
segments:
  device: {{cap: 6}}
abandonment: [cart]
"""


def generate_users(
    *,
    seed: int,
    users: int,
    minutes: float,
    later_hours: tuple[float, float],
    closing_after_hours: float,
    disorder_s: float = 60.0,
    duplicate_share: float = 0.01,
) -> Dataset:
    """Users on two devices (user funnels): ``2 * users`` sessions of the shop's traffic model
    starting over ``minutes``, paired. A user's first session starts anonymous and logs in at
    a random event (its events carry the user id from there on; maybe never); the second, on
    another device, moved ``later_hours`` later (drawn per user), carries it throughout. The
    closing events come ``closing_after_hours`` after the last event."""
    rng = random.Random(seed)
    begin = datetime.now(UTC) - timedelta(minutes=minutes, hours=later_hours[1] + 12)
    sessions = list(
        TrafficModel().sessions(
            seed=seed, count=2 * users, start=begin, sessions_per_second=2 * users / minutes / 60
        )
    )
    events: list[dict[str, Any]] = []
    for index in range(users):
        first, second = sessions[2 * index], sessions[2 * index + 1]
        user = f"user-{seed}-{index}"
        login = rng.randrange(len(first) + 1)
        for position, event in enumerate(first):
            anonymous = {k: v for k, v in event.items() if k != "user_id"}
            events.append(anonymous if position < login else {**anonymous, "user_id": user})
        later_ms = round(rng.uniform(*later_hours) * 3_600_000)
        for event in second:
            moved = datetime.fromtimestamp((at_ms(event) + later_ms) / 1000, UTC)
            occurred = moved.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            events.append({**event, "user_id": user, "occurred_at": occurred})
    arrivals = _arrivals(rng, events, disorder_s, duplicate_share)
    last = max(at_ms(event) for event in arrivals)
    closing_ms = last + round(closing_after_hours * 3_600_000)
    return Dataset(arrivals=arrivals, closing_ms=closing_ms, sessions=len(sessions))


def generate_lifecycle(*, seed: int, users: int, days: int, start_ms: int) -> list[dict[str, Any]]:
    """Users' lifecycle events over ``days`` of event time from ``start_ms`` (the oracle's
    rows, ``unit`` the user): first visits through declared, undeclared and missing channels
    (some first instants naming two), first orders from the same instant to months later,
    repeat orders some exactly 30 days (and 1 ms more) after the first, two orders in one
    instant, values missing or not numbers, reviews and referrals before, at and after the
    first order, and events no lifecycle reads. Each user's events in time order; users
    interleave in the caller's sort."""
    rng = random.Random(seed)
    day = 86_400_000
    events: list[dict[str, Any]] = []

    def add(user: str, at: int, event_type: str, **fields: Any) -> None:
        context = {"channel": fields.pop("channel")} if "channel" in fields else {}
        events.append({
            "unit": user, "event_id": f"{user}-{len(events)}", "event_type": event_type,
            "at_ms": at, "properties": fields, "context": context,
        })  # fmt: skip

    def value() -> Any:
        roll = rng.random()
        if roll < 0.9:
            return round(rng.uniform(5, 400), 2)
        return rng.choice([None, "12.50", True, -5.0, 0])

    channels = ["search", "social", "email", "affiliate", "partner-x", "", None]
    for index in range(users):
        user = f"u{seed}-{index}"
        first = start_ms + rng.randrange(days * day)
        channel = rng.choice(channels)
        add(user, first, "page_view", channel=channel)
        if rng.random() < 0.1:  # a second event of the first instant naming another channel
            add(
                user, first, rng.choice(["page_view", "order_placed"]), channel=rng.choice(channels)
            )
        for _ in range(rng.randrange(3)):
            add(user, first + rng.randrange(30 * day), "product_view")
        if rng.random() < 0.1:
            add(user, first + rng.randrange(10 * day), "review_submitted")
        if rng.random() < 0.45:
            continue
        to_first = rng.choice([0, rng.randrange(3_600_000), rng.randrange(3 * day)])
        to_first = rng.choice([to_first, rng.randrange(120 * day)])
        order_at = first + to_first
        add(user, order_at, "order_placed", value=value())
        if rng.random() < 0.2:  # advocacy in the first order's instant does not count
            add(user, order_at, rng.choice(["review_submitted", "referral_sent"]))
        if rng.random() < 0.3:
            add(user, order_at + rng.randrange(1, 90 * day), "referral_sent", channel="email")
        at = order_at
        for _ in range(rng.choice([0, 0, 1, 1, 2, 4])):
            gap = rng.choice([
                30 * day, 30 * day + 1, 60 * day, 0, rng.randrange(100 * day),
                rng.randrange(40 * day),
            ])  # fmt: skip
            at += gap
            add(user, at, "order_placed", value=value())
    return events
