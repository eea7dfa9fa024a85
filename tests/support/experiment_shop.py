"""A/B traffic for the experiment guardrails' tests (docs/experiments.md): a three-stage checkout
funnel whose file adds only the experiment's declaration, and sessions whose variant, drawn
50/50, converts payment -> order at its own rate. The e2e test runs it through a real worker,
the unit test through the replay engine; both check the counts against SQL
(``tests/oracle/experiments.py``), told the funnel by ``ORACLE_FUNNEL``."""

from __future__ import annotations

import random
import time
from typing import Any

MINUTE = 60_000
STEP_TIMEOUT_MS = 2 * MINUTE
CONVERSION_WINDOW_MS = 10 * MINUTE
FUNNEL = f"""
name: checkout
conversion_window: {CONVERSION_WINDOW_MS // MINUTE}m
step_timeout: {STEP_TIMEOUT_MS // MINUTE}m
stages:
  - {{name: cart, event_type: add_to_cart}}
  - {{name: payment, event_type: payment_submitted}}
  - {{name: order, event_type: order_placed}}
experiments:
  - name: checkout_page
    exposure: payment
    variants: {{control: 0.5, new_page: 0.5}}
    control: control
"""
# The funnel above as the SQL oracle is told it (tests/oracle/experiments.py).
ORACLE_FUNNEL: dict[str, Any] = {
    "experiment": "checkout_page",
    "variants": ("control", "new_page"),
    "event_types": ("add_to_cart", "payment_submitted", "order_placed"),
    "conversion_window_ms": CONVERSION_WINDOW_MS,
    "timeouts_ms": (STEP_TIMEOUT_MS, STEP_TIMEOUT_MS),
    "window_ms": MINUTE,
}
START_MS = (int(time.time()) // 60 - 60) * MINUTE  # an hour ago, on a minute
SESSIONS = 1500
CONTROL_ORDER_RATE = 0.9
HURT_ORDER_RATE = 0.6


def shop(seed: int, variant_order_rate: float) -> list[dict[str, Any]]:
    """A session every 0.8 s for 20 minutes: a cart, a payment 5-40 s later (90%), an order
    5-40 s after it (the arm's rate); every event carries the session's variant, drawn 50/50."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(SESSIONS):
        variant = "new_page" if rng.random() < 0.5 else "control"
        common = {"session_id": f"s{n}", "context": {"experiments": {"checkout_page": variant}}}
        at = START_MS + n * 800
        events.append({**common, "event_id": f"c{n}", "event_type": "add_to_cart",
                       "product_id": "p-1", "occurred_at": at})  # fmt: skip
        if rng.random() >= 0.9:
            continue
        at += rng.randint(5_000, 40_000)
        events.append({**common, "event_id": f"p{n}", "event_type": "payment_submitted",
                       "payment_method": "card", "amount": 40.0, "currency": "EUR",
                       "occurred_at": at})  # fmt: skip
        rate = variant_order_rate if variant == "new_page" else CONTROL_ORDER_RATE
        if rng.random() < rate:
            at += rng.randint(5_000, 40_000)
            events.append({**common, "event_id": f"o{n}", "event_type": "order_placed",
                           "value": 40.0, "currency": "EUR", "order_id": f"o-{n}",
                           "occurred_at": at})  # fmt: skip
    return sorted(events, key=lambda e: (e["occurred_at"], e["event_id"]))
