"""Experiment guardrails through a real worker on the real broker, default settings, the
funnel file adding only the experiment's declaration (docs/experiments.md).

Generated A/B traffic where the variant's payment -> order conversion is much lower raises one
guardrail alert, on that step, naming the experiment and the variant, delivered to Slack; the
same traffic with the variant converting as the control (A/A) raises none. The alert's counts
equal the same counts computed in SQL over the generated events (``tests/oracle/experiments.py``),
not by streamer's core."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streamer.app import topic_plan
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.range_replay import replay_range
from streamer.settings import Settings
from streamer.testing import WorkerProcess, metric, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.oracle.experiments import guardrail_counts
from tests.support.alert_pipeline import alerts_on_topic, routes, run_pipeline
from tests.support.experiment_shop import (
    CONTROL_ORDER_RATE,
    FUNNEL,
    HURT_ORDER_RATE,
    MINUTE,
    ORACLE_FUNNEL,
    START_MS,
    shop,
)


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("scenario", "variant_order_rate"), [("a_b", HURT_ORDER_RATE), ("a_a", CONTROL_ORDER_RATE)]
)
async def test_a_variant_that_hurts_a_step_raises_one_guardrail_alert(
    settings: Settings, tmp_path: Path, slack: FakeSlack, scenario: str, variant_order_rate: float
) -> None:
    funnel = tmp_path / "checkout.yaml"
    funnel.write_text(FUNNEL)
    config = settings.model_copy(update={"funnels": (funnel,), **routes(slack)})
    await ensure_topic_plan(config, topic_plan(config))
    events = shop(7, variant_order_rate)
    last_ms = max(e["occurred_at"] for e in events)
    # Closing events once every window is final (its step timeout and the lateness past).
    closing = datetime.fromtimestamp((last_ms + 8 * MINUTE) / 1000, tz=UTC)
    assert closing < datetime.now(UTC)
    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        await run_pipeline(config, events, worker, min_finals=20, closing=closing)
        published = alerts_on_topic(await read_topic(config, config.alerts_topic))
        assert await read_topic(config, config.dlq_topic) == []  # every event counted
        experiments = [a for a in published if a.kind in ("guardrail", "sample_ratio")]
        # The per-variant gauges: every cohort counted by now, equal to SQL over all of it.
        values = scrape_metrics(worker.metrics_url)
        whole = guardrail_counts(
            events, **ORACLE_FUNNEL, from_ms=START_MS, to_ms=round(closing.timestamp() * 1000)
        )
        for variant, (decided, converted) in whole.items():
            arm = {"funnel": "checkout", "experiment": "checkout_page", "variant": variant}
            step = {**arm, "step": "payment->order"}
            assert metric(values, "streamer_experiment_decided_attempts", **step) == decided
            assert metric(values, "streamer_experiment_conversion_ratio", **step) == (
                pytest.approx(converted / decided)
            )
            # Every exposed attempt is decided by the end (none excluded, none open).
            assert metric(values, "streamer_experiment_exposures", **arm) == decided
        # `streamer replay` of the worker's whole history, read-only from the same topics,
        # runs the guard as the worker does: the same alerts, the same bytes when run again.
        start = datetime.fromtimestamp(START_MS / 1000, tz=UTC)
        report = await replay_range(config, (load_funnel(funnel),), start, closing, run_info=False)
        again = await replay_range(config, (load_funnel(funnel),), start, closing, run_info=False)
        assert report.model_dump_json() == again.model_dump_json()
        assert report.events.in_range == len(events)
        [replayed] = report.funnels
        assert sorted(a.model_dump_json() for a in replayed.alerts) == sorted(
            a.model_dump_json() for a in published
        )
        if scenario == "a_a":
            assert experiments == [], [a.summary for a in experiments]
            return
        assert [(a.kind, a.state, a.step) for a in experiments] == [
            ("guardrail", "firing", "payment->order")
        ], [a.summary for a in experiments]
        [alert] = experiments
        assert (alert.experiment, alert.variant, alert.control) == (
            "checkout_page",
            "new_page",
            "control",
        )
        deadline = time.monotonic() + 60
        while not any("checkout_page" in str(m["blocks"]) for m in slack.accepted):
            worker.assert_running()
            assert time.monotonic() < deadline, slack.statuses()
            await asyncio.sleep(0.3)
    # The counts it published, against SQL over the generated events for the same windows.
    expected = guardrail_counts(
        events,
        **ORACLE_FUNNEL,
        from_ms=round(alert.window_start.timestamp() * 1000),
        to_ms=round(alert.window_end.timestamp() * 1000),
    )
    assert {arm: tuple(counts) for arm, counts in alert.arms.items()} == expected
    decided, converted = expected["new_page"]
    assert alert.decided == decided
    assert alert.dropped == decided - converted
    control_decided, control_converted = expected["control"]
    assert alert.observed_rate == pytest.approx(converted / decided, abs=1e-6)
    assert alert.expected_rate == pytest.approx(control_converted / control_decided, abs=1e-6)
    low, high = alert.difference[1:]
    assert low < high < 0
    assert low < alert.observed_rate - alert.expected_rate < high
