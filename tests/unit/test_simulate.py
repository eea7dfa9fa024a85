from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.decode import DecodeLimits, decode_event
from streamer.events import CHECKOUT_EVENT_TYPES
from streamer.settings import Settings
from streamer.simulate import StepRates, TrafficModel, topic_for

START = datetime(2026, 3, 1, 12, tzinfo=UTC)
LIMITS = DecodeLimits(max_age=timedelta(days=3650))


@given(seed=st.integers(min_value=0, max_value=2**32))
@settings(max_examples=40, deadline=None)
def test_every_simulated_event_honours_the_contract(seed: int) -> None:
    for session in TrafficModel().sessions(seed=seed, count=20, start=START):
        times = []
        for event in session:
            decoded = decode_event(orjson.dumps(event), received_at=START + timedelta(days=1),
                                   limits=LIMITS)  # fmt: skip
            assert not hasattr(decoded, "reason"), decoded
            times.append(decoded.occurred_at)  # type: ignore[union-attr]
        assert times == sorted(times)
        assert session[0]["event_type"] == "page_view"
        assert len({e["session_id"] for e in session}) == 1


def test_same_seed_same_sessions() -> None:
    first = list(TrafficModel().sessions(seed=3, count=50, start=START))
    assert first == list(TrafficModel().sessions(seed=3, count=50, start=START))
    assert first != list(TrafficModel().sessions(seed=4, count=50, start=START))


def test_drop_off_follows_the_step_rates() -> None:
    model = TrafficModel(rates=StepRates(cart_after_view=0.5, checkout_after_cart=0.5))
    sessions = list(model.sessions(seed=1, count=4000, start=START))
    reached = Counter(t for s in sessions for t in {e["event_type"] for e in s})
    carts_per_view = reached["add_to_cart"] / reached["product_view"]
    checkouts_per_cart = reached["checkout_started"] / reached["add_to_cart"]
    assert 0.45 < carts_per_view < 0.55
    assert 0.45 < checkouts_per_cart < 0.55
    assert reached["order_placed"] < reached["payment_submitted"] < reached["checkout_started"]


def test_checkout_events_go_to_the_checkout_topic() -> None:
    settings = Settings()
    for event_type in CHECKOUT_EVENT_TYPES:
        assert topic_for(settings, event_type) == settings.checkout_topic
    assert topic_for(settings, "product_view") == settings.clickstream_topic
