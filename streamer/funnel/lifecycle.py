"""A user funnel's lifecycle: first visit -> first order -> repeat orders -> review or referral,
as cohort figures (docs/lifecycle.md is the definition; tests/oracle/lifecycle.py computes
the same in SQL).

Fed a unit task's released events, each unit's in event-time order, and the watermark (every
event below it given). Per user it keeps one small :class:`UserRecord` in a mapping the caller
provides (the unit store, on disk: decision 0009); the cohort figures are bounded by cohorts x
channels x horizons, and the churn clock by cohorts x days.

Pure: no Faust, Kafka, HTTP or Prometheus; time is always an argument.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streamer.funnel.definition import LifecycleDeclaration, stored_field
from streamer.funnel.session import StoredEvent

__all__ = [
    "DAY_MS",
    "FIRST_PURCHASE_BUCKETS_MS",
    "AcquisitionCohort",
    "BuyerCohort",
    "FirstPurchaseHistogram",
    "Lifecycle",
    "UserRecord",
    "iso_week",
    "week_start_ms",
]

DAY_MS = 86_400_000
_WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday: ISO weeks (Monday 00:00 UTC) start 4 days after the epoch's.
_FIRST_MONDAY_MS = 4 * DAY_MS
_HOUR_MS = 3_600_000
# Time from first visit to first order, upper bounds (inclusive, as Prometheus' le): same-visit
# buyers, same-day, within the week, within the month, and the slow ones.
FIRST_PURCHASE_BUCKETS_MS = (
    _HOUR_MS,
    6 * _HOUR_MS,
    DAY_MS,
    3 * DAY_MS,
    7 * DAY_MS,
    14 * DAY_MS,
    30 * DAY_MS,
    60 * DAY_MS,
    90 * DAY_MS,
)
UNKNOWN = "unknown"
OTHER = "other"


def week_start_ms(at_ms: int) -> int:
    """The start of the ISO week (Monday 00:00 UTC) that holds ``at_ms``."""
    return at_ms - (at_ms - _FIRST_MONDAY_MS) % _WEEK_MS


def iso_week(start_ms: int) -> str:
    """``2026-W49`` for a week's start."""
    year, week, _ = datetime.fromtimestamp(start_ms / 1000, UTC).isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(slots=True)
class UserRecord:
    """What the lifecycle keeps of one user: 7 numbers and a channel label (at most 64
    characters, one of the declared few), about 100 bytes as JSON."""

    first_visit_ms: int
    channel: str
    orders: int = 0
    first_order_ms: int = 0  # meaningful once orders > 0
    first_order_cents: int = 0
    value_cents: int = 0
    last_order_ms: int = 0
    advocate: bool = False

    def to_json(self) -> list[Any]:
        return [
            self.first_visit_ms,
            self.channel,
            self.orders,
            self.first_order_ms,
            self.first_order_cents,
            self.value_cents,
            self.last_order_ms,
            self.advocate,
        ]

    @classmethod
    def from_json(cls, raw: list[Any]) -> UserRecord:
        return cls(
            int(raw[0]), str(raw[1]), int(raw[2]), int(raw[3]), int(raw[4]), int(raw[5]),
            int(raw[6]), bool(raw[7]),
        )  # fmt: skip


@dataclass
class AcquisitionCohort:
    """Users first seen in one ISO week through one channel, and what they ordered within each
    horizon of their own first visit (value per user = ``value_cents[i] / users``)."""

    users: int = 0
    buyers: int = 0
    value_cents: list[int] = field(default_factory=list)


@dataclass
class BuyerCohort:
    """Buyers whose first order fell in one ISO week: those who ordered again within each
    horizon, the advocates, and those churned at the watermark."""

    buyers: int = 0
    repeaters: list[int] = field(default_factory=list)
    advocates: int = 0
    churned: int = 0


@dataclass
class FirstPurchaseHistogram:
    """Time to first purchase of one channel's buyers: counts per bucket of
    :data:`FIRST_PURCHASE_BUCKETS_MS` (not cumulative), the last one above them all."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(FIRST_PURCHASE_BUCKETS_MS) + 1))
    sum_ms: int = 0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def observe(self, elapsed_ms: int) -> None:
        index = next(
            (i for i, bound in enumerate(FIRST_PURCHASE_BUCKETS_MS) if elapsed_ms <= bound),
            len(FIRST_PURCHASE_BUCKETS_MS),
        )
        self.buckets[index] += 1
        self.sum_ms += elapsed_ms

    def forget(self, elapsed_ms: int) -> None:
        index = next(
            (i for i, bound in enumerate(FIRST_PURCHASE_BUCKETS_MS) if elapsed_ms <= bound),
            len(FIRST_PURCHASE_BUCKETS_MS),
        )
        self.buckets[index] -= 1
        self.sum_ms -= elapsed_ms


class Lifecycle:
    """One user funnel's lifecycle figures. ``users`` holds the per-user records (a plain dict
    by default; the worker hands its unit store). The cohort figures are this object's own
    state: :meth:`to_json` / :meth:`from_json` store and restore them with the records."""

    def __init__(
        self,
        declaration: LifecycleDeclaration,
        users: MutableMapping[str, UserRecord] | None = None,
    ) -> None:
        self.declaration = declaration
        self.users: MutableMapping[str, UserRecord] = {} if users is None else users
        self.watermark_ms = -(2**62)
        self.acquisition: dict[tuple[int, str], AcquisitionCohort] = {}
        self.buyer_cohorts: dict[int, BuyerCohort] = {}
        self.first_purchase: dict[str, FirstPurchaseHistogram] = {}
        # Buyers not churned yet, by (first-order week, the day their churn comes): a user's
        # entry moves when they order again. Bounded by cohorts x (churn_days + 7) days.
        self.churn_due: dict[tuple[int, int], int] = {}
        self._visits = frozenset(declaration.visits)
        self._orders = frozenset(declaration.orders)
        self._advocacy = frozenset(declaration.advocacy)
        self._channels = frozenset(declaration.channels)
        self._horizons_ms = tuple(days * DAY_MS for days in declaration.horizon_days)
        self._value_field = stored_field(declaration.value_from)
        self._channel_field = stored_field(declaration.channel_from)

    # --- input ---------------------------------------------------------------------
    def apply(self, unit: str, event: StoredEvent) -> None:
        """One event of ``unit``; a unit's events come in event-time order (any order within
        one instant), none below the watermark."""
        event_type = event.event_type
        is_order = event_type in self._orders
        if is_order or event_type in self._visits:
            record = self._visit(unit, event)
            if is_order:
                self._order(record, event)
            self.users[unit] = record
        elif event_type in self._advocacy:
            found = self.users.get(unit)
            # Strictly after the first order: an instant's events come in any order.
            if found and found.orders and event.at_ms > found.first_order_ms and not found.advocate:
                found.advocate = True
                self.buyer_cohorts[week_start_ms(found.first_order_ms)].advocates += 1
                self.users[unit] = found

    def advance(self, watermark_ms: int) -> None:
        """Every event below ``watermark_ms`` has been given: buyers whose churn day came
        count as churned."""
        if watermark_ms <= self.watermark_ms:
            return
        self.watermark_ms = watermark_ms
        for key in [k for k in self.churn_due if k[1] * DAY_MS <= watermark_ms]:
            self.buyer_cohorts[key[0]].churned += self.churn_due.pop(key)

    def _visit(self, unit: str, event: StoredEvent) -> UserRecord:
        found = self.users.get(unit)
        label = self._channel_of(event)
        if found is None:
            record = UserRecord(event.at_ms, label)
            self._acquired(record).users += 1
            return record
        # The first instant's channel is the smallest it names, whatever order its events came in.
        first_instant = event.at_ms == found.first_visit_ms and label != UNKNOWN
        if first_instant and (found.channel == UNKNOWN or label < found.channel):
            self._move_channel(found, label)
        return found

    def _order(self, record: UserRecord, event: StoredEvent) -> None:
        at_ms = event.at_ms
        cents = self._cents(event)
        if record.orders == 0:
            record.first_order_ms = at_ms
            record.first_order_cents = cents
            self._acquired(record).buyers += 1
            self._first_purchase(record.channel).observe(at_ms - record.first_visit_ms)
            self._buyers(week_start_ms(at_ms)).buyers += 1
        else:
            if record.orders == 1:
                cohort = self._buyers(week_start_ms(record.first_order_ms))
                for index, horizon in enumerate(self._horizons_ms):
                    if at_ms - record.first_order_ms <= horizon:
                        cohort.repeaters[index] += 1
            self._forget_churn_clock(record)
        record.orders += 1
        record.value_cents += cents
        record.last_order_ms = at_ms
        self._start_churn_clock(record)
        acquired = self._acquired(record)
        for index, horizon in enumerate(self._horizons_ms):
            if at_ms - record.first_visit_ms <= horizon:
                acquired.value_cents[index] += cents

    # --- the churn clock -----------------------------------------------------------
    def _churn_day(self, record: UserRecord) -> int:
        return record.last_order_ms // DAY_MS + self.declaration.churn_days + 1

    def _start_churn_clock(self, record: UserRecord) -> None:
        cohort = week_start_ms(record.first_order_ms)
        day = self._churn_day(record)
        if day * DAY_MS <= self.watermark_ms:  # only for an event below the watermark
            self.buyer_cohorts[cohort].churned += 1
        else:
            self.churn_due[(cohort, day)] = self.churn_due.get((cohort, day), 0) + 1

    def _forget_churn_clock(self, record: UserRecord) -> None:
        cohort = week_start_ms(record.first_order_ms)
        key = (cohort, self._churn_day(record))
        if key[1] * DAY_MS <= self.watermark_ms:
            self.buyer_cohorts[cohort].churned -= 1  # back: a churned buyer ordered again
        elif self.churn_due[key] == 1:
            del self.churn_due[key]
        else:
            self.churn_due[key] -= 1

    # --- cohorts -------------------------------------------------------------------
    def _acquired(self, record: UserRecord) -> AcquisitionCohort:
        key = (week_start_ms(record.first_visit_ms), record.channel)
        found = self.acquisition.get(key)
        if found is None:
            found = self.acquisition[key] = AcquisitionCohort(
                value_cents=[0] * len(self._horizons_ms)
            )
        return found

    def _buyers(self, week_ms: int) -> BuyerCohort:
        found = self.buyer_cohorts.get(week_ms)
        if found is None:
            found = self.buyer_cohorts[week_ms] = BuyerCohort(
                repeaters=[0] * len(self._horizons_ms)
            )
        return found

    def _first_purchase(self, channel: str) -> FirstPurchaseHistogram:
        found = self.first_purchase.get(channel)
        if found is None:
            found = self.first_purchase[channel] = FirstPurchaseHistogram()
        return found

    def _move_channel(self, record: UserRecord, label: str) -> None:
        """A later event of the first-visit instant names a smaller channel: the user's
        counts so far (all from that instant) move to its cohort."""
        before = self._acquired(record)
        before.users -= 1
        if record.orders:
            before.buyers -= 1
            self._first_purchase(record.channel).forget(
                record.first_order_ms - record.first_visit_ms
            )
        for index in range(len(before.value_cents)):
            before.value_cents[index] -= record.value_cents
        record.channel = label
        after = self._acquired(record)
        after.users += 1
        if record.orders:
            after.buyers += 1
            self._first_purchase(label).observe(record.first_order_ms - record.first_visit_ms)
        for index in range(len(after.value_cents)):
            after.value_cents[index] += record.value_cents

    def _channel_of(self, event: StoredEvent) -> str:
        raw = event.fields.get(self._channel_field)
        if raw is None or raw == "":
            return UNKNOWN
        text = str(raw)
        return text if text in self._channels else OTHER

    def _cents(self, event: StoredEvent) -> int:
        raw = event.fields.get(self._value_field)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return 0
        if not math.isfinite(raw) or raw < 0:
            return 0
        return round(raw * 100)

    # --- output ----------------------------------------------------------------------
    def repeat_final(self, week_ms: int, horizon_index: int) -> bool:
        """Whether a first-order cohort's repeat figure at that horizon can still change."""
        return self.watermark_ms >= week_ms + _WEEK_MS + self._horizons_ms[horizon_index]

    def value_final(self, week_ms: int, horizon_index: int) -> bool:
        """Whether an acquisition cohort's value at that horizon can still change."""
        return self.repeat_final(week_ms, horizon_index)  # same rule, from the visit's week

    def to_json(self) -> dict[str, Any]:
        """The cohort figures and the watermark (the user records are stored by their owner)."""
        return {
            "watermark_ms": self.watermark_ms,
            "acquisition": [
                [week, channel, c.users, c.buyers, c.value_cents]
                for (week, channel), c in sorted(self.acquisition.items())
            ],
            "buyers": [
                [week, c.buyers, c.repeaters, c.advocates, c.churned]
                for week, c in sorted(self.buyer_cohorts.items())
            ],
            "first_purchase": [
                [channel, h.buckets, h.sum_ms] for channel, h in sorted(self.first_purchase.items())
            ],
            "churn_due": [[week, day, n] for (week, day), n in sorted(self.churn_due.items())],
        }

    def restore(self, stored: Mapping[str, Any]) -> None:
        """The figures :meth:`to_json` stored (the records must be those of the same moment)."""
        self.watermark_ms = int(stored["watermark_ms"])
        self.acquisition = {
            (int(w), str(ch)): AcquisitionCohort(int(u), int(b), [int(v) for v in values])
            for w, ch, u, b, values in stored["acquisition"]
        }
        self.buyer_cohorts = {
            int(w): BuyerCohort(int(b), [int(r) for r in rep], int(adv), int(ch))
            for w, b, rep, adv, ch in stored["buyers"]
        }
        self.first_purchase = {
            str(ch): FirstPurchaseHistogram([int(n) for n in buckets], int(total))
            for ch, buckets, total in stored["first_purchase"]
        }
        self.churn_due = {(int(w), int(d)): int(n) for w, d, n in stored["churn_due"]}
