"""Which funnel stage an event type belongs to.

The product's lifecycle runs awareness -> consideration -> decision -> retention -> advocacy;
within *decision* the checkout funnel has finer steps. Retention (repeat orders) needs user
history and is decided by the session/user state, not by the event type alone.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["LIFECYCLE_BY_EVENT_TYPE", "LifecycleStage", "lifecycle_stage"]


class LifecycleStage(StrEnum):
    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    DECISION = "decision"
    RETENTION = "retention"
    ADVOCACY = "advocacy"


LIFECYCLE_BY_EVENT_TYPE: dict[str, LifecycleStage] = {
    "page_view": LifecycleStage.AWARENESS,
    "product_view": LifecycleStage.CONSIDERATION,
    "search": LifecycleStage.CONSIDERATION,
    "add_to_cart": LifecycleStage.DECISION,
    "remove_from_cart": LifecycleStage.DECISION,
    "checkout_started": LifecycleStage.DECISION,
    "shipping_submitted": LifecycleStage.DECISION,
    "payment_submitted": LifecycleStage.DECISION,
    "payment_failed": LifecycleStage.DECISION,
    "order_placed": LifecycleStage.DECISION,
    "review_submitted": LifecycleStage.ADVOCACY,
    "referral_sent": LifecycleStage.ADVOCACY,
}


def lifecycle_stage(event_type: str) -> LifecycleStage | None:
    """The lifecycle stage of an event type, or None for a type streamer does not know."""
    return LIFECYCLE_BY_EVENT_TYPE.get(event_type)
