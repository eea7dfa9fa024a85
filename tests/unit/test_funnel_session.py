"""The session rules with explicit timestamps (ms)."""

from __future__ import annotations

from streamer.funnel.session import Contribution, Kind, StoredEvent, evaluate
from tests.unit.funnel_helpers import MIN, ev, funnel

F = funnel()
END = 10**12  # a watermark past everything


def kinds(result: tuple[Contribution, ...]) -> list[tuple[str, int, int]]:
    return [(c.kind.name, c.index, c.at_ms) for c in result]


def test_a_session_that_converts_all_the_way() -> None:
    events = [
        ev(0, "page_view"),
        ev(MIN, "add_to_cart"),
        ev(2 * MIN, "checkout_started"),
        ev(3 * MIN, "order_placed"),
    ]
    result = evaluate(F, events, watermark_ms=0)
    assert kinds(result.contributions) == [
        ("ENTERED", 0, 0),
        ("CONVERTED", 0, MIN),
        ("ENTERED", 1, MIN),
        ("CONVERTED", 1, 2 * MIN),
        ("ENTERED", 2, 2 * MIN),
        ("CONVERTED", 2, 3 * MIN),
        ("ENTERED", 3, 3 * MIN),
    ]
    assert result.open_stage is None
    assert [c.time_to_convert_ms for c in result.contributions if c.kind is Kind.CONVERTED] == [
        MIN,
        MIN,
        MIN,
    ]


def test_open_until_the_watermark_passes_the_timeout_then_dropped() -> None:
    events = [ev(0, "page_view"), ev(MIN, "add_to_cart")]
    deadline = MIN + 10 * MIN  # cart timeout after the last activity
    open_result = evaluate(F, events, watermark_ms=deadline)
    assert open_result.open_stage == 1
    assert open_result.next_deadline_ms == deadline
    assert all(c.kind is not Kind.DROPPED for c in open_result.contributions)
    dropped = evaluate(F, events, watermark_ms=deadline + 1)
    assert dropped.open_stage is None
    assert kinds(dropped.contributions)[-1] == ("DROPPED", 1, deadline)


def test_the_timeout_end_is_inclusive_and_any_activity_extends_it() -> None:
    at_deadline = [ev(0, "page_view"), ev(MIN, "add_to_cart"), ev(11 * MIN, "checkout_started")]
    assert evaluate(F, at_deadline, END).contributions[-1].index == 2  # reached checkout
    too_late = [ev(0, "page_view"), ev(MIN, "add_to_cart"), ev(11 * MIN + 1, "checkout_started")]
    assert ("DROPPED", 1, 11 * MIN) in kinds(evaluate(F, too_late, END).contributions)
    # A product view at 8 min is activity: the cart timeout now runs to 18 min.
    active = [
        ev(0, "page_view"),
        ev(MIN, "add_to_cart"),
        ev(8 * MIN, "product_view"),
        ev(17 * MIN, "checkout_started"),
    ]
    assert ("ENTERED", 2, 17 * MIN) in kinds(evaluate(F, active, END).contributions)


def test_the_conversion_window_caps_every_step() -> None:
    slow = funnel(conversion_window="20m")
    events = [
        ev(0, "page_view"),
        ev(9 * MIN, "add_to_cart"),
        ev(18 * MIN, "checkout_started"),
        ev(21 * MIN, "order_placed"),
    ]
    result = evaluate(slow, events, END)
    assert kinds(result.contributions)[-1] == ("DROPPED", 2, 20 * MIN)


def test_a_purchase_without_a_cart_does_not_convert_the_cart_step() -> None:
    events = [ev(0, "page_view"), ev(MIN, "order_placed")]
    result = evaluate(F, events, END)
    assert kinds(result.contributions) == [("ENTERED", 0, 0), ("DROPPED", 0, 60 * MIN)]


def test_filters_select_the_events_of_a_stage() -> None:
    events = [
        ev(0, "page_view", landing=False),
        ev(MIN, "page_view"),
        ev(2 * MIN, "add_to_cart"),
        ev(3 * MIN, "checkout_started"),
        ev(4 * MIN, "order_placed", value=0.0),
    ]
    result = evaluate(F, events, END)
    assert kinds(result.contributions)[0] == ("ENTERED", 0, MIN)
    assert kinds(result.contributions)[-1] == ("DROPPED", 2, 9 * MIN)  # a zero order is no order


def test_after_a_drop_the_next_landing_starts_a_new_attempt() -> None:
    events = [
        ev(0, "page_view"),
        ev(MIN, "add_to_cart"),
        ev(30 * MIN, "page_view"),
        ev(31 * MIN, "add_to_cart"),
        ev(32 * MIN, "checkout_started"),
    ]
    result = evaluate(F, events, END)
    entered_landing = [
        c.at_ms for c in result.contributions if (c.kind, c.index) == (Kind.ENTERED, 0)
    ]
    assert entered_landing == [0, 30 * MIN]
    assert ("DROPPED", 1, 11 * MIN) in kinds(result.contributions)
    assert ("ENTERED", 2, 32 * MIN) in kinds(result.contributions)


def test_segments_are_first_touch_as_known_at_each_contribution() -> None:
    events = [
        ev(0, "page_view", **{"context.device": "ios"}),
        ev(MIN, "add_to_cart", **{"context.device": "android"}),
        ev(2 * MIN, "checkout_started"),
        ev(3 * MIN, "order_placed", payment_method="paypal"),
    ]
    result = evaluate(F, events, END)
    assert result.contributions[0].segments == ("ios", None)
    assert result.contributions[-1].segments == ("ios", "paypal")
    assert result.contributions[-2].segments == ("ios", "paypal")  # the conversion to order
    assert result.contributions[-3].segments == ("ios", None)  # entered checkout


def test_events_before_the_first_landing_are_not_in_the_funnel() -> None:
    events = [ev(0, "add_to_cart"), ev(MIN, "checkout_started")]
    assert evaluate(F, events, END).contributions == ()


def test_abandonment_drops_carry_attempt_value_and_last_activity() -> None:
    shop = funnel(abandonment=["cart", "checkout"])
    events = [
        ev(0, "page_view"),
        ev(MIN, "add_to_cart", cart_value=40.0),
        ev(3 * MIN, "add_to_cart", cart_value=75.5),
    ]
    drop = evaluate(shop, events, END).contributions[-1]
    assert (drop.kind, drop.index, drop.at_ms) == (Kind.DROPPED, 1, 13 * MIN)
    assert (drop.attempt_ms, drop.value, drop.last_activity_ms) == (0, 75.5, 3 * MIN)


def test_an_order_after_an_abandonment_retracts_it() -> None:
    shop = funnel(abandonment=["cart", "checkout"])
    events = [ev(0, "page_view"), ev(MIN, "add_to_cart"), ev(40 * MIN, "order_placed")]
    result = evaluate(shop, events, END)
    assert [(r.stage, r.attempt_ms, r.order_ms) for r in result.retractions] == [(1, 0, 40 * MIN)]
    no_order = evaluate(shop, events[:2], END)
    assert no_order.retractions == ()
    landing_only = evaluate(shop, [ev(0, "page_view"), ev(40 * MIN, "order_placed")], END)
    assert landing_only.retractions == ()  # landing is not an abandonment stage


def test_the_sessions_stage_keeps_every_field_the_cart_value_is_read_from() -> None:
    from streamer.funnel.session import VALUE_FIELDS
    from streamer.pipeline.sessions import needed_fields, stored_event

    assert set(VALUE_FIELDS) <= needed_fields((F,))
    payment = {
        "event_id": "p1",
        "event_type": "payment_submitted",
        "session_id": "s",
        "occurred_at": "2026-11-22T10:00:00Z",
        "payment_method": "card",
        "amount": 42.5,
        "currency": "EUR",
    }
    stored = stored_event(payment, needed_fields((F,)))
    assert stored.fields["amount"] == 42.5
    shop = funnel(abandonment=["cart", "checkout"])
    events = [
        ev(0, "page_view"),
        ev(MIN, "add_to_cart"),
        StoredEvent(2 * MIN, "c1", "checkout_started", {"amount": 42.5}),
    ]
    assert evaluate(shop, events, END).contributions[-1].value == 42.5
