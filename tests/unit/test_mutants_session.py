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
from tests.support.funnels import MIN, ev, funnel

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
            # device keeps two values (the rest is "other"); channel keeps any
            "segments": {"device": {"values": ["ios", "android"]}, "channel": None},
            "abandonment": ["cart", "pay"],
        }
    )
)


def at(
    progress: Progress, at_ms: int, event_type: str, out: list[Outcome], **fields: object
) -> None:
    event = StoredEvent(at_ms, f"{event_type}@{at_ms}", event_type, fields)
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
    # (kind, stage, cohort, when, time to convert)
    assert [(o.kind, o.stage, o.cohort_ms, o.at_ms, o.time_to_convert_ms) for o in out] == [
        (Kind.ENTERED, 0, 1 * S, 1 * S, 0),
        (Kind.CONVERTED, 0, 1 * S, 8 * S, 7 * S),
        (Kind.ENTERED, 1, 8 * S, 8 * S, 0),
    ]


def test_segment_values_empty_ones_do_not_count_and_unlisted_ones_are_other() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out, **{"context.device": "", "context.channel": ""})
    at(
        progress,
        5 * S,
        "add_to_cart",
        out,
        **{"context.device": "tv", "context.channel": "x" * 100},
    )
    # land entered with no value yet; cart with "tv" (not listed: other) and the channel cut
    # to 64 characters (SEGMENT_VALUE_CHARS)
    assert [(o.kind, o.stage, o.segments) for o in out] == [
        (Kind.ENTERED, 0, (None, None)),
        (Kind.CONVERTED, 0, (None, None)),
        (Kind.ENTERED, 1, ("other", "x" * 64)),
    ]
    listed, out = Progress(), []
    at(listed, 0, "page_view", out, **{"context.device": "ios", "context.channel": "ads"})
    assert out[0].segments == ("ios", "ads")


def test_the_cart_value_is_the_first_positive_field_and_the_latest_instant_sets_it() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out, cart_value=0, amount=25.0)  # 0 is not a value: amount
    assert progress.attempt is not None
    assert progress.attempt.cart_value == 25.0
    at(progress, 5 * S, "add_to_cart", out, cart_value=0.5)  # positive, under 1: a value
    assert progress.attempt.cart_value == 0.5


def test_only_an_order_retracts_an_abandonment() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out)
    at(progress, 5 * S, "add_to_cart", out)
    abandoned = expire_attempt(F, progress, 16 * S, out)  # cart dropped at 15s
    assert abandoned is not None
    view = StoredEvent(20 * S, "v", "page_view", {})
    assert apply_instant(F, progress, 20 * S, [view], out).retracted is None  # a new attempt
    assert progress.abandoned == abandoned
    order = StoredEvent(30 * S, "o", "order_placed", {})
    assert apply_instant(F, progress, 30 * S, [order], out).retracted == (abandoned, 30 * S)
    assert progress.abandoned is None


def test_an_event_failing_its_stage_filter_matches_no_stage() -> None:
    shop = CompiledFunnel(funnel())  # landing: page_view where landing; order: value > 0
    idle, out = Progress(), []
    apply_instant(shop, idle, 0, [ev(0, "page_view", landing=False)], out)
    assert idle.attempt is None
    assert out == []
    progress = Progress()
    apply_instant(shop, progress, 0, [ev(0, "page_view")], out)
    apply_instant(shop, progress, MIN, [ev(MIN, "page_view", landing=False)], out)
    apply_instant(shop, progress, 2 * MIN, [ev(2 * MIN, "order_placed", value=0)], out)
    assert progress.attempt is not None
    assert progress.attempt.stage == 0
    assert [(o.kind, o.stage) for o in out] == [(Kind.ENTERED, 0)]


def test_the_currency_is_the_greatest_code_of_the_latest_instant_that_has_one() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out)
    assert progress.attempt is not None
    assert progress.attempt.currency is None  # no code yet
    at(progress, 1 * S, "add_to_cart", out, cart_value=10.0, currency="EUR")
    assert progress.attempt.currency == "EUR"
    at(progress, 2 * S, "product_view", out)  # no code, no value: the attempt keeps its own
    assert progress.attempt.currency == "EUR"
    assert progress.attempt.cart_value == 10.0
    pay = [
        StoredEvent(3 * S, "p1", "payment_submitted", {"amount": 12.0, "currency": "USD"}),
        StoredEvent(3 * S, "p2", "product_view", {"currency": "CHF"}),
    ]
    apply_instant(F, progress, 3 * S, pay, out)
    assert progress.attempt.currency == "USD"
    assert progress.attempt.cart_value == 12.0


def test_an_instant_that_drops_an_abandonment_and_starts_again_reports_the_abandonment() -> None:
    progress, out = Progress(), []
    at(progress, 0, "page_view", out)
    at(progress, 5 * S, "add_to_cart", out)  # cart's deadline: 15s
    out.clear()
    land = StoredEvent(20 * S, "l", "page_view", {})
    result = apply_instant(F, progress, 20 * S, [land], out)  # past 15s: drop, then a start
    assert result.abandoned is not None
    assert (result.abandoned.stage, result.abandoned.abandoned_ms) == (1, 15 * S)
    assert result.abandoned == progress.abandoned
    assert [(o.kind, o.stage, o.at_ms) for o in out] == [
        (Kind.DROPPED, 1, 15 * S),
        (Kind.ENTERED, 0, 20 * S),
    ]


def test_a_property_segment_is_read_from_the_property_by_its_name() -> None:
    shop = CompiledFunnel(funnel())  # segments: device (context.device), payment_method
    progress, out = Progress(), []
    landing = ev(0, "page_view", **{"context.device": "ios", "payment_method": "card"})
    apply_instant(shop, progress, 0, [landing], out)
    assert out[0].segments == ("ios", "card")
