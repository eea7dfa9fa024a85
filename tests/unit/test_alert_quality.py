"""The short version of ``benchmarks.alert_quality``: the pure core and detector over simulated
shop traffic (cold start, day and night, drift, surges, end of input) raise no false alert, and
injected incidents are found within their bounds, the broken segment named first."""

from __future__ import annotations

import pytest

from benchmarks.alert_quality import MINUTE, judge, simulate


def test_two_healthy_days_from_a_cold_start_raise_no_alert() -> None:
    result = simulate(seed=1, scenario="healthy", days=2, peak=300)
    assert result.sessions > 200_000
    verdict = judge(result)
    assert verdict.false_alerts == [], [a.alert_id for a in verdict.false_alerts]
    assert all(at is not None for at in result.warm_at_ms.values()), "every step warms up"


@pytest.mark.parametrize(("kind", "bound_minutes"), [("segment", 5), ("step", 2)])
def test_an_incident_is_found_within_its_bound(kind: str, bound_minutes: int) -> None:
    verdict = judge(simulate(seed=2, scenario=kind, days=1.75, peak=300))
    assert verdict.latency_ms is not None, f"{kind} incident missed"
    assert verdict.latency_ms <= bound_minutes * MINUTE
    assert verdict.false_alerts == [], [a.alert_id for a in verdict.false_alerts]
    if kind == "segment":
        assert verdict.segment_named_first
