"""The sessions stage's output records built from the core's notices: abandonments (and their
retractions), and a unit task's lifecycle figures."""

from __future__ import annotations

from streamer.events import (
    Abandonment,
    LifecycleAcquisition,
    LifecycleBuyers,
    LifecycleFirstPurchase,
    LifecycleStats,
)
from streamer.formatting import utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.lifecycle import FIRST_PURCHASE_BUCKETS_MS, Lifecycle, iso_week
from streamer.funnel.task import AbandonmentNotice

__all__ = ["abandonment_record", "lifecycle_record"]

# The time-to-first-purchase buckets' upper bounds in seconds, None above the last.
_FIRST_PURCHASE_BOUNDS_S: tuple[float | None, ...] = (
    *(ms / 1000 for ms in FIRST_PURCHASE_BUCKETS_MS),
    None,
)


def abandonment_record(funnel: FunnelDefinition, notice: AbandonmentNotice) -> Abandonment:
    """The record of an abandoned attempt (or of its retraction, with ``order_ms``)."""
    abandoned = notice.abandoned
    stage = funnel.stages[abandoned.stage].name
    abandonment_id = f"{funnel.name}/{notice.session_id}/{abandoned.attempt_ms}/{stage}"
    retracted = notice.order_ms is not None
    return Abandonment(
        record_id=f"{abandonment_id}/retracted" if retracted else abandonment_id,
        abandonment_id=abandonment_id,
        kind="retracted" if retracted else "abandoned",
        funnel=funnel.name,
        stage=stage,
        session_id=notice.session_id,
        user_id=notice.user_id,
        attempt_started_at=utc_datetime(abandoned.attempt_ms),
        last_activity_at=utc_datetime(abandoned.last_activity_ms),
        abandoned_at=utc_datetime(abandoned.abandoned_ms),
        cart_value=abandoned.cart_value or None,
        currency=abandoned.currency,
        segments={
            funnel.segments[i].name: value
            for i, value in enumerate(abandoned.segments)
            if value is not None
        },
        ordered_at=utc_datetime(notice.order_ms) if notice.order_ms is not None else None,
    )


def lifecycle_record(
    funnel: str, core: Lifecycle, *, partition: int, generation: int, version: list[int]
) -> LifecycleStats:
    """A unit partition's whole lifecycle figures as of its watermark (cohorts with no user
    left, after a channel moved, are left out)."""
    declaration = core.declaration
    return LifecycleStats(
        record_id=f"{funnel}/{partition}",
        funnel=funnel,
        partition=partition,
        generation=generation,
        version=version,
        watermark=utc_datetime(core.watermark_ms),
        horizon_days=list(declaration.horizon_days),
        churn_days=declaration.churn_days,
        acquisition=[
            LifecycleAcquisition(
                week=iso_week(week),
                week_start=utc_datetime(week),
                channel=channel,
                users=cohort.users,
                buyers=cohort.buyers,
                value_cents=list(cohort.value_cents),
            )
            for (week, channel), cohort in sorted(core.acquisition.items())
            if cohort.users
        ],
        buyer_cohorts=[
            LifecycleBuyers(
                week=iso_week(week),
                week_start=utc_datetime(week),
                buyers=cohort.buyers,
                repeaters=list(cohort.repeaters),
                advocates=cohort.advocates,
                churned=cohort.churned,
            )
            for week, cohort in sorted(core.buyer_cohorts.items())
        ],
        first_purchase=[
            LifecycleFirstPurchase(
                channel=channel,
                buckets=list(zip(_FIRST_PURCHASE_BOUNDS_S, histogram.buckets, strict=True)),
                count=histogram.count,
                sum_seconds=histogram.sum_ms / 1000,
            )
            for channel, histogram in sorted(core.first_purchase.items())
            if histogram.count
        ],
    )
