"""Spike detection, lifecycle and explanations with explicit windows."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.funnel.detect import StepDetector, StepWindow, binomial_tail, explain
from tests.unit.funnel_helpers import MIN, funnel

PAYMENT_STEP = 2  # checkout -> order in the test funnel: landing, cart, checkout, order


def detector(**alerting: Any) -> StepDetector:
    spec = {
        "min_decided": 30,
        "min_baseline_decided": 200,
        "significance": 1e-4,
        "min_increase": 0.1,
        "cooldown": "30m",
        "resolve_after_windows": 2,
        **alerting,
    }
    return StepDetector(funnel(abandonment=["cart", "checkout"], alerting=spec), PAYMENT_STEP)


def window(index: int, decided: int, dropped: int, segments: dict | None = None) -> StepWindow:
    return StepWindow(
        index * MIN, (index + 1) * MIN, decided, dropped, dropped * 50.0, segments or {}
    )


@given(n=st.integers(0, 60), k=st.integers(0, 61), p=st.floats(0.001, 0.999))
@settings(max_examples=300, deadline=None)
def test_binomial_tail_matches_a_direct_sum(n: int, k: int, p: float) -> None:
    direct = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    assert binomial_tail(k, n, p) == pytest.approx(min(1.0, direct), rel=1e-9, abs=1e-12)


def test_no_alert_while_learning_the_baseline() -> None:
    d = detector()
    assert all(d.observe(window(i, 40, 30)) is None for i in range(5))  # 200 decided: learned
    assert d.expected_rate() == pytest.approx(0.75)


def test_false_positive_rate_on_stable_traffic_is_tiny() -> None:
    rng = random.Random(7)
    fired = 0
    windows = 0
    for run in range(20):
        d = detector()
        rate = rng.uniform(0.05, 0.4)
        for i in range(250):
            decided = rng.randint(20, 200)
            dropped = sum(rng.random() < rate for _ in range(decided))
            decision = d.observe(window(run * 1000 + i, decided, dropped))
            windows += 1
            fired += decision is not None and decision.state == "firing"
    assert windows == 5000
    assert fired / windows < 0.001, f"{fired} false alerts in {windows} windows"


def test_quiet_nights_do_not_page() -> None:
    d = detector()
    for i in range(10):
        d.observe(window(i, 100, 10))
    assert d.observe(window(10, 4, 2)) is None  # 50% of 4: too few sessions
    assert d.observe(window(11, 12, 6)) is None


def test_a_real_jump_fires_within_one_window_then_resolves_once() -> None:
    d = detector()
    for i in range(10):
        assert d.observe(window(i, 100, 10)) is None  # 10% normal
    first = d.observe(window(10, 100, 40))  # 40%: a 30 point jump
    assert first is not None
    assert first.state == "firing"
    assert first.alert_id == f"shop/checkout->order/{10 * MIN}"
    assert first.expected_rate == pytest.approx(0.10)
    assert first.excess_dropped == pytest.approx(30.0)
    assert first.severity == "page"  # it leaves checkout, an abandonment stage
    assert [d.observe(window(i, 100, 45)) for i in range(11, 15)] == [None] * 4  # in cooldown
    assert d.observe(window(15, 100, 10)) is None  # one quiet window is not enough
    resolved = d.observe(window(16, 100, 11))
    assert resolved is not None
    assert (resolved.state, resolved.alert_id) == ("resolved", first.alert_id)
    assert d.observe(window(17, 100, 10)) is None
    assert d.expected_rate() == pytest.approx(0.1, abs=0.01)  # the incident is not baseline


def test_a_long_incident_repeats_after_the_cooldown() -> None:
    d = detector(cooldown="5m")
    for i in range(10):
        d.observe(window(i, 100, 10))
    states = [getattr(d.observe(window(i, 100, 50)), "state", None) for i in range(10, 22)]
    assert states == ["firing", None, None, None, None, "repeat"] + [None] * 4 + ["repeat", None]


def test_abandonment_steps_page_and_steps_can_be_overridden() -> None:
    f = funnel(abandonment=["cart"], alerting={"steps": {"landing->cart": {"severity": "off"}}})
    assert StepDetector(f, 1).severity == "page"  # cart -> checkout leaves an abandonment stage
    assert StepDetector(f, 2).severity == "warning"
    off = StepDetector(f, 0)
    for i in range(10):
        off.observe(window(i, 100, 10))
    assert off.observe(window(10, 100, 90)) is None


def test_the_broken_segment_is_named_first() -> None:
    def segments(paypal_drop: int, card_drop: int) -> dict[tuple[str, str], tuple[int, int]]:
        return {
            ("payment_method", "paypal"): (30, paypal_drop),
            ("payment_method", "card"): (70, card_drop),
            ("device", "ios"): (40, (paypal_drop + card_drop) * 4 // 10),
            ("device", "desktop"): (60, (paypal_drop + card_drop) * 6 // 10),
        }

    d = detector()
    for i in range(10):
        d.observe(window(i, 100, 10, segments(3, 7)))
    decision = d.observe(window(10, 100, 31, segments(24, 7)))
    assert decision is not None
    top = decision.explanations[0]
    assert (top.dimension, top.value) == ("payment_method", "paypal")
    assert top.share_of_excess > 0.8
    assert top.observed_rate == pytest.approx(0.8)
    assert all(e.value != "card" for e in decision.explanations)


def test_explain_is_empty_without_excess() -> None:
    assert explain(window(0, 100, 5), [], 0.1) == ()


def test_state_survives_a_round_trip() -> None:
    d = detector()
    for i in range(10):
        d.observe(window(i, 100, 10, {("device", "ios"): (50, 5)}))
    fired = d.observe(window(10, 100, 40))
    restored = detector()
    restored.load_json(d.to_json())
    assert restored.alert_id == fired.alert_id  # type: ignore[union-attr]
    assert restored.observe(window(11, 100, 10)) == d.observe(window(11, 100, 10))
