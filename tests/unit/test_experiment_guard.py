"""Experiment guardrails fed by cohort windows (streamer/funnel/experiments.py
``ExperimentGuard``) and their declaration in a funnel file (docs/experiments.md): final
cohorts only, each alert raised once, the state's round trip, the sample-ratio check, and the
variant taken at the exposure (first exposure wins) by the streaming core."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streamer.events import CHECKOUT_EVENT_TYPES, ReplayReport
from streamer.funnel.definition import FunnelDefinition, FunnelDefinitionError, load_funnel
from streamer.funnel.experiments import (
    MIN_ENTERED,
    ExperimentGuard,
    GuardrailDecision,
    RatioDecision,
)
from streamer.funnel.session import CompiledFunnel, Progress, apply_instant
from streamer.funnel.windows import StepCounts, WindowCounts, fold_segments
from streamer.notify.routes import alertmanager_alert
from streamer.notify.slack import slack_message
from streamer.pipeline.guardrails import guardrail_alert_record, sample_ratio_alert_record
from streamer.range_replay import RangeReplay
from tests.oracle.experiments import guardrail_counts
from tests.support.core_run import run_core, stored
from tests.support.experiment_shop import (
    CONTROL_ORDER_RATE,
    FUNNEL,
    HURT_ORDER_RATE,
    MINUTE,
    ORACLE_FUNNEL,
    START_MS,
    shop,
)

MIN = 60_000
RATES = (0.6, 0.9)  # payment->... : cart->payment, payment->order


def _funnel(**experiment: Any) -> FunnelDefinition:
    declared = {
        "name": "checkout_page",
        "exposure": "cart",
        "variants": {"control": 0.5, "new_page": 0.5},
        "control": "control",
        **experiment,
    }
    return FunnelDefinition.model_validate({
        "name": "shop",
        "conversion_window": "30m",
        "window": "1m",
        "step_timeout": "10m",
        "stages": [
            {"name": "cart", "event_type": "add_to_cart"},
            {"name": "payment", "event_type": "payment_submitted"},
            {"name": "order", "event_type": "order_placed"},
        ],
        "experiments": [declared],
    })  # fmt: skip


def _window(
    rng: random.Random, per_arm: dict[str, int], rates: dict[str, tuple[float, ...]]
) -> WindowCounts:
    """One decided window: each arm's attempts pass each step with its rate."""
    counts = WindowCounts.empty(3)
    for variant, entering in per_arm.items():
        steps = [StepCounts() for _ in range(3)]
        for stage, rate in enumerate((*rates[variant], None)):
            steps[stage].entered = entering
            if rate is None:
                break
            passed = sum(rng.random() < rate for _ in range(entering))
            steps[stage].converted, steps[stage].dropped = passed, entering - passed
            entering = passed
        counts.segments[(0, variant)] = steps
        for mine, theirs in zip(counts.stages, steps, strict=True):
            mine.add(theirs)
    return counts


def _run(
    funnel: FunnelDefinition,
    rates: dict[str, tuple[float, ...]],
    *,
    windows: int = 240,
    per_arm: dict[str, int] | None = None,
    seed: int = 1,
    restore_every: int = 0,
) -> list[tuple[int, GuardrailDecision | RatioDecision]]:
    """Windows of a minute, each judged once its step timeout passed (as the merger hands
    them: those not final yet and those that became final since the last call)."""
    rng = random.Random(seed)
    data = {
        w * MIN: _window(rng, per_arm or {"control": 20, "new_page": 20}, rates)
        for w in range(windows)
    }
    guard = ExperimentGuard(funnel)
    decided: list[tuple[int, GuardrailDecision | RatioDecision]] = []
    lag = funnel.finality_lag_ms
    for minute in range(1, windows + 12):
        watermark = minute * MIN
        held = {s: c for s, c in data.items() if s + MIN + lag >= watermark - MIN}
        decided += [(watermark, d) for d in guard.evaluate(watermark, held)]
        if restore_every and minute % restore_every == 0:
            state = guard.to_json()
            guard = ExperimentGuard(funnel)
            guard.load_json(state)
    return decided


def test_a_variant_that_hurts_one_step_is_named_once_on_that_step() -> None:
    funnel = _funnel()
    decided = _run(funnel, {"control": RATES, "new_page": (0.6, 0.75)})
    guardrails = [d for _, d in decided if isinstance(d, GuardrailDecision)]
    assert [(d.variant, d.step) for d in guardrails] == [("new_page", "payment->order")]
    alert = guardrails[0]
    assert alert.alert_id == "shop/checkout_page/new_page/payment->order"
    assert alert.comparison.high < 0
    assert alert.comparison.p_value <= alert.alpha
    assert alert.alpha == pytest.approx(0.05 / 2)  # two steps guarded, one variant
    assert min(alert.control.entered, alert.treated.entered) >= MIN_ENTERED
    assert alert.comparison.difference == pytest.approx(alert.treated.rate - alert.control.rate)


def test_a_and_a_traffic_raises_nothing() -> None:
    for seed in range(5):
        assert _run(_funnel(), {"control": RATES, "new_page": RATES}, seed=seed) == []


def test_only_final_cohorts_are_counted() -> None:
    """A window's step is counted once the watermark passed its end plus the step's timeout
    (every attempt decided), and only once."""
    funnel = _funnel()
    rng = random.Random(3)
    window = _window(rng, {"control": 10, "new_page": 10}, {"control": RATES, "new_page": RATES})
    guard = ExperimentGuard(funnel)
    timeout = funnel.step_timeout_ms(0)
    guard.evaluate(MIN + timeout - 1, {0: window})
    assert guard.states["checkout_page"].arms == {}
    guard.evaluate(MIN + timeout, {0: window})
    guard.evaluate(MIN + timeout + MIN, {0: window})
    arms = guard.states["checkout_page"].arms
    for variant in ("control", "new_page"):
        stage = window.segments[(0, variant)]
        assert arms[variant][0] == [10, stage[0].converted]
        assert arms[variant][1] == [stage[1].entered, stage[1].converted]
    assert guard.states["checkout_page"].exposures == {"control": 10, "new_page": 10}


def test_a_restore_at_every_minute_changes_nothing() -> None:
    rates = {"control": RATES, "new_page": (0.6, 0.75)}
    once = _run(_funnel(), rates)
    restored = _run(_funnel(), rates, restore_every=1)
    assert [(w, d.alert_id) for w, d in restored] == [(w, d.alert_id) for w, d in once]


def test_a_skewed_split_raises_one_sample_ratio_alert() -> None:
    rates = {"control": RATES, "new_page": RATES}
    decided = _run(_funnel(), rates, per_arm={"control": 24, "new_page": 16})
    ratio = [d for _, d in decided if isinstance(d, RatioDecision)]
    assert len(ratio) == 1
    assert ratio[0].alert_id == "shop/checkout_page/sample_ratio"
    assert ratio[0].check.mismatch
    guardrails = [d for _, d in decided if isinstance(d, GuardrailDecision)]
    assert all(d.ratio_mismatch for d in guardrails)


def test_guarded_steps_are_the_declared_ones() -> None:
    funnel = _funnel(steps=["cart->payment"])
    decided = _run(funnel, {"control": RATES, "new_page": (0.6, 0.75)})
    assert decided == []  # payment->order is hurt but not guarded


def test_the_variant_is_the_first_exposure_of_the_attempt() -> None:
    """Through the streaming core: the experiment's breakdown carries the variant of the
    events that entered the exposure stage; a later exposure to another variant in the same
    attempt changes nothing, and steps before the exposure have none (unknown)."""
    funnel = _funnel(exposure="payment")

    def event(at: int, kind: str, variant: str | None, n: int) -> dict[str, Any]:
        context = {"experiments": {"checkout_page": variant}} if variant else {}
        return {"event_id": f"e{n}", "session_id": "s1", "at_ms": at, "event_type": kind,
                "properties": {}, "context": context}  # fmt: skip

    events = [
        event(1_000, "add_to_cart", "new_page", 1),
        event(2_000, "payment_submitted", "control", 2),
        event(3_000, "payment_submitted", "new_page", 3),
        event(4_000, "order_placed", "new_page", 4),
    ]
    result = run_core([funnel], events, watermark_ms=3_600_000)
    values = {(stage, value) for (_, _, stage, _, value) in result.segments}
    assert values == {("cart", "unknown"), ("payment", "control"), ("order", "control")}


def test_a_user_keeps_the_variant_of_its_first_exposure_until_it_is_forgotten() -> None:
    """A user funnel (docs/experiments.md, "Per unit in user funnels"): a later attempt of
    the user, exposed to another variant on another device, counts in the first exposure's
    arm; the memory is checkpointed with the unit's state; after a silence longer than the
    retention the user is exposed anew. A session funnel counts each attempt's own variant."""
    retention_ms = 3 * 3_600_000

    def event(at: int, kind: str, variant: str, device: str) -> dict[str, Any]:
        return {"event_id": f"e{at}", "session_id": device, "user_id": "u1", "at_ms": at,
                "event_type": kind, "properties": {},
                "context": {"experiments": {"checkout_page": variant}}}  # fmt: skip

    events = [
        event(0, "add_to_cart", "control", "phone"),  # the first attempt drops at payment
        event(2 * MIN, "payment_submitted", "control", "phone"),
        event(60 * MIN, "add_to_cart", "new_page", "laptop"),  # a second attempt, on a laptop
        event(61 * MIN, "payment_submitted", "new_page", "laptop"),
        event(62 * MIN, "order_placed", "new_page", "laptop"),
        event(5 * 60 * MIN, "add_to_cart", "new_page", "phone"),  # 4 h of silence: forgotten
        event(5 * 60 * MIN + 1, "payment_submitted", "new_page", "phone"),
    ]
    by_user = _funnel(exposure="payment").model_copy(update={"follows": "user"})
    by_session = _funnel(exposure="payment")
    for funnel, expected in (
        (by_user, ["control", "control", "new_page"]),
        (by_session, ["control", "new_page", "new_page"]),
    ):
        result = run_core([funnel], events, 24 * 60 * MIN, retention_ms=retention_ms)
        arms = sorted(
            (start, value)
            for (_, start, stage, _, value), counts in result.segments.items()
            if stage == "payment"
            for _ in range(counts["entered"])
        )
        assert [value for _, value in arms] == expected, funnel.follows
    # The stored state keeps the first exposure.
    memory = _exposed_memory(by_user, events[:2], retention_ms)
    assert memory == ("control",)


def _exposed_memory(
    funnel: FunnelDefinition, events: list[dict[str, Any]], retention_ms: int
) -> tuple[str | None, ...]:
    """The unit's first exposures after ``events`` (one instant each), through a checkpoint."""
    compiled, progress = CompiledFunnel(funnel), Progress()
    for event in events:
        apply_instant(compiled, progress, event["at_ms"], [stored(event)], [], retention_ms)
    restored = Progress.from_json(progress.to_json())
    assert restored.memory is not None
    assert restored.memory.variants is not None
    return tuple(v for v in restored.memory.variants if v is not None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("    control: contrl\n", "experiments.0.control: 'contrl' is not a variant"),
        ("    exposure: order\n", "experiments.0.exposure: 'order' is not a stage with a step"),
        ("    variants: {control: 0.5, b: 0.4}\n", "experiments.0.variants: shares must"),
        ("    steps: [cart->payment]\n", "experiments.0.steps.0: 'cart->payment' is not a step"),
        ("    alpha: 0.7\n", "experiments.0.alpha"),
    ],
)
def test_a_bad_declaration_names_the_file_line_and_field(
    tmp_path: Path, change: str, message: str
) -> None:
    lines = [
        "name: shop\n",
        "conversion_window: 30m\n",
        "stages:\n",
        "  - {name: cart, event_type: add_to_cart}\n",
        "  - {name: payment, event_type: payment_submitted}\n",
        "  - {name: order, event_type: order_placed}\n",
        "experiments:\n",
        "  - name: checkout_page\n",
        "    exposure: payment\n",
        "    variants: {control: 0.5, b: 0.5}\n",
        "    control: control\n",
    ]
    key = change.split(":")[0]
    lines = [line for line in lines if line.split(":")[0] != key] + [change]
    path = tmp_path / "shop.yaml"
    path.write_text("".join(lines))
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnel(path)
    assert f"{path}:" in str(caught.value)
    assert message in str(caught.value)


def test_an_experiment_named_as_a_segment_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(
        "name: shop\nconversion_window: 30m\nstages: [{name: cart, event_type: a}, "
        "{name: order, event_type: b}]\nsegments: {checkout_page: {source: property.x}}\n"
        "experiments:\n  - {name: checkout_page, exposure: cart, control: a, "
        "variants: {a: 0.5, b: 0.5}}\n"
    )
    with pytest.raises(FunnelDefinitionError, match=r"experiments\.0\.name: a segment is named"):
        load_funnel(path)


def test_the_alert_names_experiment_variant_and_step_on_every_route() -> None:
    """The record, Slack's message (the variant's name inert: a declared name is operator
    text, escaped as such) and Alertmanager's labels."""
    funnel = _funnel(variants={"control": 0.5, "<!channel>": 0.5})
    decided = _run(funnel, {"control": RATES, "<!channel>": (0.6, 0.75)},
                   per_arm={"control": 20, "<!channel>": 20})  # fmt: skip
    [(_, decision)] = decided
    assert isinstance(decision, GuardrailDecision)
    alert = guardrail_alert_record(funnel, decision, None, None)
    assert (alert.kind, alert.state, alert.step) == ("guardrail", "firing", "payment->order")
    assert alert.arms == {
        "control": [decision.control.entered, decision.control.converted],
        "<!channel>": [decision.treated.entered, decision.treated.converted],
    }
    assert alert.difference[1] < alert.difference[0] < alert.difference[2] < 0
    message = slack_message(alert)
    # Slack parses the fallback text and mrkdwn (a header is plain_text, shown as written).
    parsed = [message["text"], *_mrkdwn_texts(message["blocks"])]
    assert not [text for text in parsed if "<!channel>" in text]
    assert "&lt;!channel&gt;" in message["text"]
    labels = alertmanager_alert(alert, datetime.now(UTC))["labels"]
    assert labels["alertname"] == "StreamerExperimentGuardrail"
    assert (labels["experiment"], labels["step"]) == ("checkout_page", "payment->order")
    assert "<" not in labels["variant"]


def _mrkdwn_texts(node: Any) -> list[str]:
    if isinstance(node, list):
        return [text for item in node for text in _mrkdwn_texts(item)]
    if not isinstance(node, dict):
        return []
    own = [node["text"]] if node.get("type") == "mrkdwn" else []
    return own + [text for value in node.values() for text in _mrkdwn_texts(value)]


def test_the_sample_ratio_alert_gives_the_exposures() -> None:
    funnel = _funnel()
    decided = _run(funnel, {"control": RATES, "new_page": RATES},
                   per_arm={"control": 24, "new_page": 16})  # fmt: skip
    [decision] = [d for _, d in decided if isinstance(d, RatioDecision)]
    alert = sample_ratio_alert_record(funnel, decision, None, None)
    assert alert.exposures == decision.exposures
    assert sum(alert.exposures.values()) == alert.decided
    assert alert.intended_split == {"control": 0.5, "new_page": 0.5}
    assert alertmanager_alert(alert, datetime.now(UTC))["labels"]["alertname"] == (
        "StreamerExperimentSampleRatio"
    )
    assert "sample-ratio mismatch" in slack_message(alert)["blocks"][0]["text"]["text"]


def test_the_merger_s_folding_keeps_every_variant() -> None:
    """Stages before the exposure carry ``unknown``, which outranks the variants there; the
    breakdown's cap leaves room for it and ``other``, so no variant folds away."""
    funnel = _funnel(exposure="payment")
    counts = _window(random.Random(4), {"control": 20, "new_page": 20}, {
        "control": RATES, "new_page": RATES,
    })  # fmt: skip
    counts.segments[(0, "unknown")] = [StepCounts(entered=100), StepCounts(), StepCounts()]
    counts.segments[(0, "other")] = [StepCounts(), StepCounts(entered=30), StepCounts()]
    folded = fold_segments(counts, [s.cap for s in funnel.segments])
    assert folded.segments.keys() == counts.segments.keys()


def _replayed(events: list[dict[str, Any]], seed: int) -> ReplayReport:
    """The e2e test's traffic through the replay engine (`streamer replay`, `report` and
    `backfill` run it): each topic's events in order on two partitions by session, the
    partitions interleaved at random, to one step timeout and the lateness past the end."""
    funnel = FunnelDefinition.model_validate(yaml.safe_load(FUNNEL))
    end_ms = max(e["occurred_at"] for e in events) + 8 * MINUTE
    engine = RangeReplay(
        (funnel,),
        start=datetime.fromtimestamp(START_MS / 1000, UTC),
        end=datetime.fromtimestamp(end_ms / 1000, UTC),
        inputs=[f"{t}/{p}" for t in ("clickstream", "checkout") for p in (0, 1)],
        allowed_lateness_ms=120_000,
        retention_ms=3_600_000,
        partitions=2,
    )
    pending: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        topic = "checkout" if event["event_type"] in CHECKOUT_EVENT_TYPES else "clickstream"
        pending.setdefault(f"{topic}/{int(event['session_id'][1:]) % 2}", []).append(event)
    rng = random.Random(seed)
    received = datetime.now(UTC)
    while pending:
        name = rng.choice(sorted(pending))
        engine.offer(name, name.split("/")[0], orjson.dumps(pending[name].pop(0)), received)
        if not pending[name]:
            del pending[name]
            engine.finish(name)
        engine.advance()
    return engine.report()


@pytest.mark.parametrize(
    ("scenario", "variant_order_rate"), [("a_b", HURT_ORDER_RATE), ("a_a", CONTROL_ORDER_RATE)]
)
def test_a_replay_runs_the_guard_as_the_worker(scenario: str, variant_order_rate: float) -> None:
    """What tests/e2e/test_experiment_guardrails.py checks of the live worker, through the
    replay engine: one guardrail alert on the hurt step, its arms equal to SQL over the
    events; none on A/A; the same bytes under another interleaving of the partitions."""
    events = shop(7, variant_order_rate)
    report = _replayed(events, seed=1)
    assert report.model_dump_json() == _replayed(events, seed=2).model_dump_json()
    assert (report.events.rejected, report.events.late) == (0, 0)
    [replayed] = report.funnels
    experiments = [a for a in replayed.alerts if a.kind in ("guardrail", "sample_ratio")]
    if scenario == "a_a":
        assert experiments == [], [a.summary for a in experiments]
        return
    [alert] = experiments
    assert (alert.kind, alert.state, alert.step, alert.variant) == (
        "guardrail", "firing", "payment->order", "new_page",
    )  # fmt: skip
    expected = guardrail_counts(
        events,
        **ORACLE_FUNNEL,
        from_ms=round(alert.window_start.timestamp() * 1000),
        to_ms=round(alert.window_end.timestamp() * 1000),
    )
    assert {arm: tuple(counts) for arm, counts in alert.arms.items()} == expected
