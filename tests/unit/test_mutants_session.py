"""The state machine's time rules (docs/funnel-semantics.md, "Steps" and "Abandonments"), pinned
at their boundaries where the mutation run (docs/mutation-testing.md) found them free to change.
Funnel F of the spec's worked examples: land (20s), cart (10s), pay (10s), order; CW = 60s;
abandonment at cart and pay.

A watermark W means every event before W has been applied: an event at exactly W may still
come, so nothing whose boundary is W (inclusive, as deadlines and the conversion window are)
may be decided by W alone.
"""

from __future__ import annotations

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import (
    CompiledFunnel,
    Kind,
    Outcome,
    Progress,
    StoredEvent,
    apply_instant,
    expire_attempt,
)

S = 1000
F = CompiledFunnel(
    FunnelDefinition.model_validate(
        {
            "name": "f",
            "conversion_window": "60s",
            "window": "10s",
            "stages": [
                {"name": "land", "event_type": "page_view", "timeout": "20s"},
                {"name": "cart", "event_type": "add_to_cart", "timeout": "10s"},
                {"name": "pay", "event_type": "payment_submitted", "timeout": "10s"},
                {"name": "order", "event_type": "order_placed"},
            ],
            "abandonment": ["cart", "pay"],
        }
    )
)


def at(progress: Progress, at_ms: int, event_type: str, out: list[Outcome]) -> None:
    event = StoredEvent(at_ms, f"{event_type}@{at_ms}", event_type, {})
    apply_instant(F, progress, at_ms, [event], out)


def test_a_step_drops_only_once_the_watermark_is_past_its_deadline_and_at_the_deadline() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out)
    out.clear()
    assert expire_attempt(F, progress, 20 * S, out) is None  # d = 20s: cart@20 may still come
    assert out == []
    assert progress.attempt is not None
    assert expire_attempt(F, progress, 20 * S + 1, out) is None  # land is no abandonment
    assert [(o.kind, o.stage, o.cohort_ms, o.at_ms) for o in out] == [
        (Kind.DROPPED, 0, 0, 20 * S)  # dropped at the deadline (spec, example 3)
    ]
    assert progress.attempt is None
    assert progress.ended_ms == 20 * S


def test_an_abandonment_stays_retractable_while_the_watermark_is_at_the_window_end() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out)
    at(progress, 5 * S, "add_to_cart", out)  # cart's deadline: min(5 + 10, 0 + 60) = 15s
    out.clear()
    abandoned = expire_attempt(F, progress, 16 * S, out)
    assert abandoned is not None
    assert (abandoned.stage, abandoned.abandoned_ms, abandoned.retractable_until_ms) == (
        1,
        15 * S,
        60 * S,
    )
    assert [(o.kind, o.stage, o.at_ms) for o in out] == [(Kind.DROPPED, 1, 15 * S)]
    # W = 60s: an order at a + CW = 60s retracts (inclusive) and has not been read yet
    assert expire_attempt(F, progress, 60 * S, out) is None
    assert progress.abandoned == abandoned
    order = StoredEvent(60 * S, "o", "order_placed", {})
    result = apply_instant(F, progress, 60 * S, [order], out)
    assert result.retracted == (abandoned, 60 * S)


def test_the_retraction_horizon_ends_once_the_watermark_is_past_it() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out)
    at(progress, 5 * S, "add_to_cart", out)
    assert expire_attempt(F, progress, 16 * S, out) is not None
    assert expire_attempt(F, progress, 60 * S + 1, out) is None
    assert progress.abandoned is None
    assert progress.at_rest


def test_an_event_of_no_stage_neither_starts_nor_advances_an_attempt() -> None:
    progress, out = Progress(), []
    at(progress, 0, "product_view", out)  # not a stage of F: the session stays idle
    assert progress.attempt is None
    assert out == []
    at(progress, 1 * S, "page_view", out)
    at(progress, 5 * S, "product_view", out)  # only activity
    assert progress.attempt is not None
    assert progress.attempt.stage == 0
    assert progress.attempt.last_activity_ms == 5 * S
    at(progress, 8 * S, "add_to_cart", out)
    assert [(o.kind, o.stage, o.time_to_convert_ms) for o in out] == [
        (Kind.ENTERED, 0, 0),
        (Kind.CONVERTED, 0, 7 * S),
        (Kind.ENTERED, 1, 0),
    ]
