"""The sessions stage's output records built from the core's notices: abandonments (and their
retractions)."""

from __future__ import annotations

from streamer.events import Abandonment
from streamer.formatting import utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.task import AbandonmentNotice

__all__ = ["abandonment_record"]


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
