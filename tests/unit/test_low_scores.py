"""Satisfaction figures worked by hand, and the low-score alert: warm-up, no alert on healthy
simulated answers, a planted rise of the low share found and resolved (the short version of
``benchmarks.low_scores``)."""

from __future__ import annotations

import pytest

from benchmarks.low_scores import (
    BEFORE_ONSET_MS,
    SUBJECTS,
    WINDOW_MS,
    information_limit_ms,
    simulate,
)
from streamer.funnel.satisfaction import LowScoreDetector, LowScorePolicy, Scores, is_low
from streamer.funnel.statistics import binomial_tail


def test_nps_and_csat_worked_by_hand() -> None:
    nps = Scores("nps")
    for score, n in {10: 5, 9: 3, 8: 4, 7: 2, 6: 3, 0: 3}.items():
        nps.add(score, n)
    # 20 answers: 8 promoters, 6 detractors -> (8 - 6) / 20 = +10
    assert (nps.answers, nps.low, nps.nps()) == (20, 6, 10.0)
    csat = Scores("csat")
    for score, n in {5: 6, 4: 3, 3: 2, 2: 1, 1: 0}.items():
        csat.add(score, n)
    assert (csat.answers, csat.low, csat.satisfied_share(), csat.nps()) == (12, 1, 0.75, None)
    assert Scores("nps").nps() is None  # no answers: no figure
    assert [is_low("csat", s) for s in range(1, 6)] == [True, True, False, False, False]
    assert [s for s in range(11) if is_low("nps", s)] == [0, 1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="a csat score is 1 to 5, not 0"):
        csat.add(0)


def test_a_subject_warms_up_on_its_own_answers_before_it_may_alert() -> None:
    detector = LowScoreDetector(LowScorePolicy(min_baseline_answers=300))
    key = ("csat", "order")
    at = 0
    # Every answer low from the start: nothing to compare with yet, so no alert.
    for _ in range(12):
        at += WINDOW_MS
        assert detector.evaluate(at, {key: (20, 20)}) == []
        assert detector.warming_up()[key]
    # Windows join the baseline once older than the longest span (12), decayed with a
    # half-life of 2,000 answers: 300 answers need a little more than 15 windows of 20.
    for _ in range(20):
        at += WINDOW_MS
        detector.evaluate(at, {key: (20, 3)})
    assert not detector.warming_up()[key]


def test_healthy_answers_over_days_raise_no_alert() -> None:
    run = simulate(seed=7, days=20)
    assert run.answers > 200_000
    assert run.false_alerts == []


def test_a_rise_of_the_low_share_fires_within_two_hours_and_resolves() -> None:
    run = simulate(seed=3, days=3, incident_share=0.35)
    assert run.false_alerts == []
    assert run.latency_ms is not None
    assert run.latency_ms <= 120 * 60_000
    [fired] = [d for d in run.decisions if d.state == "firing"]
    assert fired.subject == SUBJECTS[0]
    assert fired.observed_share > fired.expected_share + 0.05

    # The fault ends: the alert resolves after its quiet windows, and nothing else fires.
    detector = LowScoreDetector()
    key = SUBJECTS[0]
    at, decisions = 0, []
    for index in range(200):
        at += WINDOW_MS
        low = 30 if 100 <= index < 110 else 8  # 50 answers: 16%, then 60% for ten windows
        decisions += detector.evaluate(at, {key: (50, low)})
    assert [d.state for d in decisions] == ["firing", "resolved"]
    firing, resolved = decisions
    assert firing.evaluated_at_ms == 101 * WINDOW_MS  # the first broken window's end
    assert resolved.evaluated_at_ms > 110 * WINDOW_MS


def test_the_information_limit_is_the_first_window_whose_answers_since_the_onset_could_fire() -> (
    None
):
    """The harness's limit: answers since the onset against the low share of the two hours
    before it (15 of 100 per window: 15%), at each evaluation's threshold."""
    onset = 10 * BEFORE_ONSET_MS
    windows = BEFORE_ONSET_MS // WINDOW_MS
    before = [(onset - (i + 1) * WINDOW_MS, 100, 15) for i in reversed(range(windows))]
    older = [(onset - BEFORE_ONSET_MS - WINDOW_MS, 100, 100)]  # outside the 2 hours: unread
    thresholds = {onset + (i + 1) * WINDOW_MS: 1e-6 for i in range(12)}

    def limit(after: list[tuple[int, int]]) -> int | None:
        broken = [*older, *before]
        broken += [(onset + i * WINDOW_MS, n, low) for i, (n, low) in enumerate(after)]
        return information_limit_ms(onset, broken, thresholds)

    assert limit([(100, 15)] * 12) is None  # nothing changed: it never could
    assert limit([(100, 100)]) == WINDOW_MS  # every answer low: the first window says it
    after = [(30, 8)] * 12  # 27% of 30 answers a window
    found = limit(after)
    assert found is not None
    assert found > WINDOW_MS
    windows_seen = found // WINDOW_MS
    n, k = 30 * windows_seen, 8 * windows_seen
    assert binomial_tail(k, n, 0.15) < 1e-6 <= binomial_tail(k - 8, n - 30, 0.15)
    assert limit([(60, 16)] * 12) < found  # twice the answers: sooner


def test_the_harness_measures_its_incidents_against_their_limit() -> None:
    run = simulate(101, 3.0, incident_share=0.35)
    assert run.limit_ms is not None
    assert run.limit_ms % WINDOW_MS == 0  # evaluations close windows
    assert run.limit_ms > 0
    assert simulate(101, 3.0).limit_ms is None  # a healthy run has no incident to measure


async def test_the_worker_alerts_on_a_low_score_burst_and_names_it() -> None:
    """The detector stage runs the low-score alert on the windows it judges (one window per
    boundary, its state in the table between calls, at every look of the drop-off detector):
    quiet on healthy answers, one alert per
    subject when the low share of CSAT at order on iOS jumps, named in the record, in Slack
    and in Alertmanager's labels; resolved once answers are healthy again."""
    import random

    from prometheus_client import CollectorRegistry

    from streamer.events import Alert
    from streamer.funnel.windows import WindowCounts, look_ms
    from streamer.metrics import Metrics
    from streamer.notify.routes import alertmanager_alert
    from streamer.notify.slack import slack_message
    from streamer.pipeline.detector import DetectorStage
    from tests.unit.test_satisfaction_join import FUNNEL

    size = FUNNEL.window_ms
    order = [s.name for s in FUNNEL.stages].index("order")
    rng = random.Random(11)

    def window(ios_low_share: float) -> WindowCounts:
        counts = WindowCounts.empty(len(FUNNEL.stages))
        for device, share in (("ios", ios_low_share), ("web", 0.15)):
            for _ in range(30):
                score = rng.choice((1, 2)) if rng.random() < share else rng.choice((3, 4, 5))
                for dim, value in ((-1, ""), (0, device)):
                    key = (0, order, dim, value, score)  # csat at order
                    counts.answers[key] = counts.answers.get(key, 0) + 1
        return counts

    onset = 60
    windows = {k * size: window(0.15 if k < onset or k >= onset + 4 else 0.6) for k in range(80)}
    sent: list[bytes] = []

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append(value)

    table: dict[str, bytes] = {}
    stage = DetectorStage(
        funnels=(FUNNEL,), table=table, metrics=Metrics.create(CollectorRegistry()), send_alert=send
    )
    alerts = []
    look = look_ms(size)
    for first in range(1, 81, 10):  # ten boundaries a call: the state goes through the table
        # Every look of the drop-off detector, as the merger calls it: the low-score alert
        # judges the boundaries among them only (once per window).
        looks = [k * size - j * look for k in range(first, first + 10) for j in (3, 2, 1, 0)]
        alerts += await stage.judge(FUNNEL, looks, windows)
    low = [a for a in alerts if a.kind == "low_score"]
    by_boundaries = DetectorStage(
        funnels=(FUNNEL,), table={}, metrics=Metrics.create(CollectorRegistry()), send_alert=send
    )
    at_boundaries = await by_boundaries.judge(FUNNEL, [k * size for k in range(1, 81)], windows)
    assert [(a.alert_id, a.state, a.window_end) for a in low] == [
        (a.alert_id, a.state, a.window_end) for a in at_boundaries if a.kind == "low_score"
    ]
    firing = [a for a in low if a.state == "firing"]
    assert firing, "the burst raised no low-score alert"
    assert all(a.window_start.timestamp() * 1000 >= onset * size for a in firing)  # none before
    assert {a.segment for a in firing} <= {"device=ios", None}
    assert "device=ios" in {a.segment for a in firing}
    assert {a.alert_id for a in low if a.state == "resolved"} == {a.alert_id for a in firing}
    ios = next(a for a in firing if a.segment == "device=ios")
    fired_after = ios.window_end.timestamp() * 1000 - onset * size
    assert fired_after == size  # the sharp burst: at the end of its first window
    assert (ios.funnel, ios.survey, ios.step, ios.severity) == ("shop", "csat", "order", "warning")
    assert ios.observed_rate > 0.4
    assert 0.1 < ios.expected_rate < 0.2
    assert "csat at order, device=ios" in ios.summary
    assert ios in [Alert.model_validate_json(value) for value in sent]
    assert "low scores, csat at order, device=ios" in slack_message(ios)["text"]
    labels = alertmanager_alert(ios, ios.window_end)["labels"]
    assert (labels["alertname"], labels["survey"], labels["segment"], labels["step"]) == (
        "StreamerSurveyLowScores",
        "csat",
        "device=ios",
        "order",
    )
