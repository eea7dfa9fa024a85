"""The lifecycle funnels' figures in the windows stage: each unit partition's latest
:class:`~streamer.events.LifecycleStats` record, summed (docs/lifecycle.md, "Published").

A unit task publishes its whole figures on ``funnel.partials`` at most once per checkpoint
interval; a record *replaces* its partition's previous one (kept in the merger's
``window-merge`` table under ``life:<funnel>:<partition>``), unless it is older (a lower
``version``: a late copy from a previous owner). The sum of the partitions' latest records is
what the gauges show (``streamer_lifecycle_*``, the newest ``lifecycle_cohort_weeks`` cohort
weeks only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime

from streamer.events import LifecycleStats
from streamer.metrics import LifecycleView, Metrics

__all__ = ["LifecycleAggregator", "LifecycleSum", "sum_lifecycle"]

log = logging.getLogger(__name__)

_KEY_PREFIX = "life:"


@dataclass
class LifecycleSum:
    """A funnel's figures summed over partitions, keyed by week start ms (and channel); the
    watermark is the lowest partition's."""

    horizon_days: list[int]
    partitions: int = 0
    watermark_ms: int = 0
    # (week start ms, channel) -> users, buyers, value cents per horizon
    acquisition: dict[tuple[int, str], tuple[int, int, list[int]]] = field(default_factory=dict)
    # week start ms -> buyers, repeaters per horizon, advocates, churned
    buyers: dict[int, tuple[int, list[int], int, int]] = field(default_factory=dict)
    # channel -> buyers per bucket (not cumulative), sum of seconds
    first_purchase: dict[str, tuple[list[int], float]] = field(default_factory=dict)
    week_names: dict[int, str] = field(default_factory=dict)


def _plus(left: list[int], right: Iterable[int]) -> list[int]:
    return [a + b for a, b in zip(left, right, strict=True)]


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def sum_lifecycle(records: Iterable[LifecycleStats]) -> LifecycleSum | None:
    """The sum of one funnel's partitions' records (one each), or None for none."""
    total: LifecycleSum | None = None
    for record in records:
        if total is None:
            total = LifecycleSum(list(record.horizon_days), watermark_ms=_ms(record.watermark))
        total.partitions += 1
        total.watermark_ms = min(total.watermark_ms, _ms(record.watermark))
        zeros = [0] * len(total.horizon_days)
        for cohort in record.acquisition:
            week = _ms(cohort.week_start)
            total.week_names[week] = cohort.week
            users, buyers, cents = total.acquisition.get((week, cohort.channel), (0, 0, zeros))
            total.acquisition[(week, cohort.channel)] = (
                users + cohort.users,
                buyers + cohort.buyers,
                _plus(cents, cohort.value_cents),
            )
        for bought in record.buyer_cohorts:
            week = _ms(bought.week_start)
            total.week_names[week] = bought.week
            buyers, repeaters, advocates, churned = total.buyers.get(week, (0, zeros, 0, 0))
            total.buyers[week] = (
                buyers + bought.buyers,
                _plus(repeaters, bought.repeaters),
                advocates + bought.advocates,
                churned + bought.churned,
            )
        for histogram in record.first_purchase:
            counts = [n for _, n in histogram.buckets]
            held, seconds = total.first_purchase.get(histogram.channel, ([0] * len(counts), 0.0))
            total.first_purchase[histogram.channel] = (
                _plus(held, counts),
                seconds + histogram.sum_seconds,
            )
    return total


def lifecycle_view(total: LifecycleSum, cohort_weeks: int) -> LifecycleView:
    """What the gauges show of a sum: every channel's time to first purchase; the newest
    ``cohort_weeks`` first-order and acquisition cohort weeks (label sets stay bounded)."""
    newest_buyers = sorted(total.buyers)[-cohort_weeks:]
    newest_acquired = set(sorted({week for week, _ in total.acquisition})[-cohort_weeks:])
    return LifecycleView(
        horizons=[f"{days}d" for days in total.horizon_days],
        first_purchase=dict(total.first_purchase),
        buyers={
            total.week_names[week]: (buyers, repeaters, churned)
            for week in newest_buyers
            for buyers, repeaters, _, churned in [total.buyers[week]]
        },
        acquisition={
            (total.week_names[week], channel): (users, cents)
            for (week, channel), (users, _, cents) in sorted(total.acquisition.items())
            if week in newest_acquired
        },
    )


class LifecycleAggregator:
    """The merger's part for lifecycle records: keep each partition's latest, show the sum."""

    def __init__(
        self,
        *,
        funnels: Iterable[str],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        cohort_weeks: int,
    ) -> None:
        self._funnels = frozenset(funnels)
        self._table = table
        self._metrics = metrics
        self._cohort_weeks = cohort_weeks
        # funnel -> partition -> its latest record; None: to be read from the table again
        self._latest: dict[str, dict[int, LifecycleStats]] | None = None

    def reset(self) -> None:
        """Forget the in-memory view (a rebalance may have changed the table under us) and
        the gauges: a worker that lost the merger must not show stale figures; the one that
        has it shows them again at the next record (every checkpoint interval)."""
        self._latest = None
        self._metrics.lifecycle.views.clear()

    def _load(self) -> dict[str, dict[int, LifecycleStats]]:
        if self._latest is None:
            latest: dict[str, dict[int, LifecycleStats]] = {}
            for key in list(self._table.keys()):
                if not key.startswith(_KEY_PREFIX):
                    continue
                raw = self._table.get(key)
                if raw is None:
                    continue
                record = LifecycleStats.model_validate_json(raw)
                if record.funnel in self._funnels:
                    latest.setdefault(record.funnel, {})[record.partition] = record
            self._latest = latest
            for funnel in latest:
                self._show(funnel)
        return self._latest

    def take(self, value: bytes) -> bool:
        """One partition's record: replaces its previous one unless older; False if not
        taken (a late copy, or a funnel not run any more)."""
        latest = self._load()
        record = LifecycleStats.model_validate_json(value)
        if record.funnel not in self._funnels:
            log.warning("lifecycle record for unknown funnel %r ignored", record.funnel)
            return False
        held = latest.get(record.funnel, {}).get(record.partition)
        if held is not None and record.version < held.version:
            self._metrics.late_partials.inc()  # an older view of the partition: kept the newer
            return False
        self._table[f"{_KEY_PREFIX}{record.funnel}:{record.partition}"] = value
        latest.setdefault(record.funnel, {})[record.partition] = record
        self._show(record.funnel)
        return True

    def figures(self, funnel: str) -> LifecycleSum | None:
        """The funnel's figures: the sum of each partition's latest record."""
        return sum_lifecycle(self._load().get(funnel, {}).values())

    def _show(self, funnel: str) -> None:
        total = self.figures(funnel)
        if total is not None:
            self._metrics.lifecycle.show(funnel, lifecycle_view(total, self._cohort_weeks))
