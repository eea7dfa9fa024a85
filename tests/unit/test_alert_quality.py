"""The short version of ``benchmarks.alert_quality``: the pure core and detector over simulated
shop traffic (cold start, day and night, drift, surges, end of input) raise no false alert, and
injected incidents are found within their bounds, the broken segment named first; a silent
checkout topic raises the data-quality alert and no drop-off alert."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest

from benchmarks.alert_quality import MINUTE, RunResult, judge, simulate
from tests.support.alert_pipeline import DETECTION_BOUND_MINUTES

# Incident runs end at 15:36 of day 0 (the incidents start at 14:00): the two cores share
# about 1.5 simulated days each. The simulation takes minutes: a timeout of its own.
INCIDENT_DAYS = 0.65
RUNS = {
    "healthy": (1, "healthy", 1.5, 300.0),
    "segment": (2, "segment", INCIDENT_DAYS, 300.0),
    "step": (3, "step", INCIDENT_DAYS, 300.0),
    "silence": (4, "silence", INCIDENT_DAYS, 300.0),
}
pytestmark = pytest.mark.timeout(900)


def _simulate(job: tuple[int, str, float, float]) -> RunResult:
    return simulate(*job)


@pytest.fixture(scope="module")
def results() -> dict[str, RunResult]:
    with ProcessPoolExecutor(max_workers=2) as pool:  # the machine's two cores
        return dict(zip(RUNS, pool.map(_simulate, RUNS.values()), strict=True))


def test_healthy_traffic_from_a_cold_start_raises_no_alert(results: dict[str, RunResult]) -> None:
    result = results["healthy"]
    assert result.sessions > 200_000
    verdict = judge(result)
    assert verdict.false_alerts == [], [a.alert_id for a in verdict.false_alerts]
    assert all(at is not None for at in result.warm_at_ms.values()), "every step warms up"


@pytest.mark.parametrize("kind", ["segment", "step", "silence"])
def test_an_incident_is_found_within_its_bound(results: dict[str, RunResult], kind: str) -> None:
    verdict = judge(results[kind])
    assert verdict.latency_ms is not None, f"{kind} incident missed"
    assert verdict.latency_ms <= DETECTION_BOUND_MINUTES[kind] * MINUTE
    assert verdict.false_alerts == [], [a.alert_id for a in verdict.false_alerts]
    if kind == "segment":
        assert verdict.segment_named_first
