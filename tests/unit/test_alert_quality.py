"""The short version of ``benchmarks.alert_quality``: the pure core and detector over simulated
shop traffic (cold start, day and night, drift, surges, end of input) raise no false alert, and
injected incidents are found within their bounds, the broken segment named first; a silent
checkout topic raises the data-quality alert and no drop-off alert; the funnel in strict and in
unordered order raises none on healthy traffic."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ProcessPoolExecutor

import pytest

from benchmarks.alert_quality import (
    EPOCH_MS,
    INCIDENTS,
    MINUTE,
    Job,
    RunResult,
    information_limit_ms,
    judge,
    run_job,
)
from streamer.funnel.windows import LOOKS_PER_WINDOW as LOOKS
from tests.support.alert_pipeline import DETECTION_BOUND_MINUTES

# Incident runs end at 15:36 of day 0 (the incidents start at 14:00): the two cores share
# about 1.5 simulated days each. The other order modes' healthy runs end at noon of day 0
# (after the night's warm-up and the morning's rise). The simulation takes minutes: a timeout
# of its own.
INCIDENT_DAYS = 0.65
RUNS: dict[str, Job] = {
    "healthy": (1, "healthy", 1.5, 300.0, "ordered", LOOKS),
    "segment": (2, "segment", INCIDENT_DAYS, 300.0, "ordered", LOOKS),
    "step": (3, "step", INCIDENT_DAYS, 300.0, "ordered", LOOKS),
    "silence": (4, "silence", INCIDENT_DAYS, 300.0, "ordered", LOOKS),
    "strict": (5, "healthy", 0.5, 300.0, "strict", LOOKS),
    "unordered": (6, "healthy", 0.5, 300.0, "unordered", LOOKS),
}
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def results() -> dict[str, RunResult]:
    with ProcessPoolExecutor(max_workers=2) as pool:  # the machine's two cores
        return dict(zip(RUNS, pool.map(run_job, RUNS.values()), strict=True))


def test_healthy_traffic_from_a_cold_start_raises_no_alert(results: dict[str, RunResult]) -> None:
    result = results["healthy"]
    assert result.sessions > 200_000
    verdict = judge(result)
    assert verdict.false_alerts == [], [a.alert_id for a in verdict.false_alerts]
    assert all(at is not None for at in result.warm_at_ms.values()), "every step warms up"


@pytest.mark.parametrize("order", ["strict", "unordered"])
def test_healthy_traffic_in_another_order_mode_raises_no_alert(
    results: dict[str, RunResult], order: str
) -> None:
    result = results[order]
    assert result.order == order
    assert result.sessions > 50_000
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


def test_the_information_limit_is_the_first_moment_a_test_at_the_threshold_fires() -> None:
    """Worked by hand: before the onset 98 of 100 payments convert 1 s after; after it, a
    payment every 10 s and none converts. At a threshold of 1e-6, 0.02^3 = 8e-6 is not enough
    and 0.02^4 = 1.6e-7 is: the fourth payment (onset + 30 s) once it is 1 s old, on the 5 s
    grid onset + 35 s (at + 30 s it is 0 s old and converts with share 0: 0.265^4 = 5e-3)."""
    incident = INCIDENTS["segment"]
    onset = EPOCH_MS + incident.start_ms
    hour_ago = onset - 3_600_000
    before = [(hour_ago + k * 1000, hour_ago + k * 1000 + 1000) for k in range(98)]
    before += [(hour_ago + 200_000 + k, None) for k in range(2)]
    after = [(onset + k * 10_000, None) for k in range(10)]
    evaluations = range(onset - 600_000, onset + 1_800_000, MINUTE)
    result = RunResult(
        1, "segment", 0.75, 0, [], {}, 0.0, "ordered",
        sorted(before + after), dict.fromkeys(evaluations, 1e-6),
    )  # fmt: skip
    assert information_limit_ms(result) == 35_000
    assert judge(result).limit_ms == 35_000
    # At a threshold ten times lower, 0.02^5 = 3.2e-9: the fifth payment, 1 s old.
    lower = dataclasses.replace(result, thresholds=dict.fromkeys(evaluations, 1e-7))
    assert information_limit_ms(lower) == 45_000
