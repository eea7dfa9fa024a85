"""Generated cases for the core-versus-SQL tests: many small cases laid side by side in event
time, then delivered in a disordered arrival order."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

CASE_SPAN_MS = 10**7  # cases are this far apart in event time: none reaches into the next


@st.composite
def case_batch(draw: Any, one_case: Any, size: int) -> list[list[dict[str, Any]]]:
    """``size`` cases drawn from ``one_case(prefix)``, the n-th moved ``n * CASE_SPAN_MS`` on."""
    cases = []
    for index in range(size):
        events = draw(one_case(f"c{index}"))
        for event in events:
            event["at_ms"] += index * CASE_SPAN_MS
        cases.append(events)
    return cases


def arrival(events: list[dict[str, Any]], seed: int, lateness_ms: int) -> list[dict[str, Any]]:
    """Each event delayed by up to ``lateness_ms`` (ties in list order: a retry comes after its
    original, an answer often before its stage)."""
    rng = random.Random(seed)
    delayed = [(e["at_ms"] + rng.uniform(0, lateness_ms), i, e) for i, e in enumerate(events)]
    return [e for _, _, e in sorted(delayed, key=lambda item: (item[0], item[1]))]
