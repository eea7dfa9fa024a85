"""Every cohort window is read final by the detector and the experiment guard exactly once,
whatever the window length and the step timeouts: a window's holder (a replay here, the
merger live: tests/unit/test_merger.py) keeps it until the first window boundary at which
every cohort of it is decided (``judged_final_lag_ms``), because judgements run on window
boundaries only. Before this rule a funnel whose timeouts were not a multiple of its window
(5 s windows, 4 s timeouts) let its windows go between two boundaries: the detector's
baselines learned nothing and the guard counted no arm."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.funnel.baselines import Cohort
from streamer.funnel.definition import FunnelDefinition
from streamer.range_replay import RangeReplay

START_MS = 1_700_000_000_000 - 1_700_000_000_000 % 60_000


def _funnel(window_s: int, timeouts_s: tuple[int, int]) -> FunnelDefinition:
    return FunnelDefinition.model_validate({
        "name": "shop",
        "window": f"{window_s}s",
        "conversion_window": "60s",
        "stages": [
            {"name": "cart", "event_type": "add_to_cart", "timeout": f"{timeouts_s[0]}s"},
            {"name": "payment", "event_type": "payment_submitted",
             "timeout": f"{timeouts_s[1]}s"},
            {"name": "order", "event_type": "order_placed"},
        ],
        "experiments": [{"name": "page", "exposure": "cart", "control": "a",
                         "variants": {"a": 0.5, "b": 0.5}}],
    })  # fmt: skip


# What each event type needs besides the envelope (streamer's own events).
_FIELDS: dict[str, dict[str, Any]] = {
    "add_to_cart": {"product_id": "p-1"},
    "payment_submitted": {"payment_method": "card", "amount": 40.0, "currency": "EUR"},
    "order_placed": {"value": 40.0, "currency": "EUR", "order_id": "o-1"},
}


def _traffic(seed: int, minutes: int) -> list[dict[str, Any]]:
    """A session every 200 ms, each stepping on after 0.5 to 9 s or stopping."""
    rng = random.Random(seed)
    events = []
    for n in range(minutes * 300):
        at, variant = START_MS + n * 200, rng.choice("ab")
        for kind, fields in _FIELDS.items():
            events.append({"event_id": f"s{n}-{kind}", "session_id": f"s{n}", "occurred_at": at,
                           "event_type": kind, **fields,
                           "context": {"experiments": {"page": variant}}})  # fmt: skip
            if rng.random() < 0.3:
                break
            at += rng.randint(500, 9_000)
    return sorted(events, key=lambda e: e["occurred_at"])


def _replay(funnel: FunnelDefinition, events: list[dict[str, Any]], step_ms: int) -> Any:
    """Offer the events, moving the watermark every ``step_ms`` of event time (not on window
    boundaries), and record the cohorts each step's baseline learns."""
    end = datetime.fromtimestamp((events[-1]["occurred_at"] // 60_000 + 2) * 60, UTC)
    engine = RangeReplay(
        [funnel],
        start=datetime.fromtimestamp(START_MS / 1000, UTC),
        end=end,
        inputs=["in"],
        allowed_lateness_ms=0,
        retention_ms=600_000,
        partitions=1,
    )
    [run] = engine.runs
    learned: list[list[int]] = [[] for _ in run.detector.steps]
    for step in run.detector.steps:
        original = step.baseline.learn

        def learn(cohort: Cohort, seen: list[int] = learned[step.index], keep: Any = original):
            if cohort.entered:
                seen.append(cohort.start_ms)
            keep(cohort)

        step.baseline.learn = learn  # type: ignore[method-assign]
    received = datetime.now(UTC)
    next_step = START_MS
    for event in events:
        engine.offer("in", "clickstream", orjson.dumps(event), received)
        if event["occurred_at"] >= next_step:
            engine.advance()
            next_step = event["occurred_at"] + step_ms
    engine.finish("in")
    engine.report()
    return run, learned


@settings(max_examples=12, deadline=None)
@given(
    window_s=st.sampled_from((2, 5, 10)),
    timeouts_s=st.tuples(st.integers(1, 25), st.integers(1, 25)),
    step_ms=st.sampled_from((300, 1_300, 3_700)),
)
def test_every_final_window_is_learned_and_counted_once(
    window_s: int, timeouts_s: tuple[int, int], step_ms: int
) -> None:
    funnel = _funnel(window_s, timeouts_s)
    run, learned = _replay(funnel, _traffic(seed=window_s + sum(timeouts_s), minutes=2), step_ms)
    assert len(run.final_counts) >= 10
    held = {**run.final_counts, **run.windows}
    for index, seen in enumerate(learned):
        # Final for this step at the last boundary judged: its end plus the step's timeout.
        due = run.judged_ms - window_s * 1000 - funnel.step_timeout_ms(index)
        final = [s for s in sorted(held) if s <= due and held[s].stages[index].entered]
        assert seen == final, f"step {index}: learned {len(seen)} of {len(final)} windows"
    # The guard's arms (exposed at the cart, every session carries a variant): each step's
    # decided attempts over the windows final for it, every one counted once.
    for index in range(len(learned)):
        due = run.judged_ms - window_s * 1000 - funnel.step_timeout_ms(index)
        decided = sum(
            held[s].stages[index].converted + held[s].stages[index].dropped
            for s in held
            if s <= due
        )
        in_arms = sum(
            arm.entered for _, _, step, arm in run.guard.arms() if step == funnel.step_names[index]
        )
        assert decided > 0
        assert in_arms == decided, f"step {index}"
