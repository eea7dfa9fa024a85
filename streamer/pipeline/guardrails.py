"""Experiment guardrails in the windows stage: the detector stage hands every judgement's
cohort windows to :class:`streamer.funnel.experiments.ExperimentGuard` too, and this module
turns its decisions into alert records (``kind`` guardrail and sample_ratio,
docs/experiments.md). The guard's state lives in the detector's table under its own key."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import orjson

from streamer.events import Alert
from streamer.formatting import percent, utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.experiments import ExperimentGuard, GuardrailDecision, RatioDecision
from streamer.funnel.windows import WindowCounts

__all__ = [
    "experiment_alert_record",
    "experiment_decisions",
    "guardrail_alert_record",
    "sample_ratio_alert_record",
]


def experiment_decisions(
    funnel: FunnelDefinition,
    table: Mapping[str, bytes],
    watermarks: Sequence[int],
    windows: Mapping[int, WindowCounts],
) -> tuple[list[GuardrailDecision | RatioDecision], ExperimentGuard]:
    """The guard's decisions at each of ``watermarks`` (from its stored state), and the guard
    after them (the caller stores its ``to_json`` under ``guard_key`` after the alerts, as
    the detector's state)."""
    guard = ExperimentGuard(funnel)
    raw = table.get(guard_key(funnel))
    if raw is not None:
        guard.load_json(orjson.loads(raw))
    decisions = [d for w in watermarks for d in guard.evaluate(w, windows)]
    return decisions, guard


def guard_key(funnel: FunnelDefinition) -> str:
    return f"experiments:{funnel.name}"


def experiment_alert_record(
    funnel: FunnelDefinition,
    decision: GuardrailDecision | RatioDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    """The alert a guard's decision makes: the worker's and a replay's (the same record)."""
    if isinstance(decision, GuardrailDecision):
        return guardrail_alert_record(funnel, decision, dashboard_url, runbook_url)
    return sample_ratio_alert_record(funnel, decision, dashboard_url, runbook_url)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 6) for v in values]


def guardrail_alert_record(
    funnel: FunnelDefinition,
    decision: GuardrailDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    comparison = decision.comparison
    relative = comparison.relative
    effect = (
        f"{relative[0]:+.1%} relative (interval {relative[1]:+.1%} to {relative[2]:+.1%})"
        if relative
        else "the control has not converted yet"
    )
    caution = (
        " The experiment's sample-ratio check fired: its assignment is suspect, so is this."
        if decision.ratio_mismatch
        else ""
    )
    summary = (
        f"Experiment {decision.experiment.name}: variant {decision.variant} converts worse "
        f"than {decision.experiment.control} at {decision.step}: "
        f"{percent(comparison.variant_rate)} of {decision.treated.entered} against "
        f"{percent(comparison.control_rate)} of {decision.control.entered} decided attempts, "
        f"{comparison.difference * 100:+.1f} points (always-valid interval "
        f"{comparison.low * 100:+.1f} to {comparison.high * 100:+.1f} at alpha "
        f"{decision.alpha:.3g}), {effect}.{caution}"
    )
    return Alert(
        event_id=f"{decision.alert_id}/firing/{decision.evaluated_at_ms}",
        alert_id=decision.alert_id,
        kind="guardrail",
        state="firing",
        severity=decision.experiment.severity,
        funnel=funnel.name,
        step=decision.step,
        window_start=utc_datetime(decision.start_ms),
        window_end=utc_datetime(decision.end_ms),
        observed_rate=round(comparison.variant_rate, 6),
        expected_rate=round(comparison.control_rate, 6),
        p_value=comparison.p_value,
        decided=decision.treated.entered,
        dropped=decision.treated.entered - decision.treated.converted,
        excess_dropped=round(-comparison.difference * decision.treated.entered, 2),
        dropped_value=0.0,
        summary=summary,
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
        experiment=decision.experiment.name,
        variant=decision.variant,
        control=decision.experiment.control,
        arms={
            decision.experiment.control: [decision.control.entered, decision.control.converted],
            decision.variant: [decision.treated.entered, decision.treated.converted],
        },
        difference=_rounded((comparison.difference, comparison.low, comparison.high)),
        relative_difference=_rounded(relative) if relative else [],
        alpha=decision.alpha,
    )


def sample_ratio_alert_record(
    funnel: FunnelDefinition,
    decision: RatioDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    split = decision.experiment.variants
    total = sum(decision.exposures.values())
    shares = ", ".join(
        f"{variant} {count} ({count / total:.1%}, intended {split[variant]:.1%})"
        for variant, count in decision.exposures.items()
    )
    summary = (
        f"Experiment {decision.experiment.name}: exposures do not follow the intended split "
        f"({shares}; Bayes factor {decision.check.log_bayes_factor:.1f} in log, above "
        f"1/alpha at alpha {decision.experiment.alpha:.3g}). Assignment or tracking is broken: "
        "no guardrail of this experiment is to be believed until it is explained."
    )
    return Alert(
        event_id=f"{decision.alert_id}/firing/{decision.evaluated_at_ms}",
        alert_id=decision.alert_id,
        kind="sample_ratio",
        state="firing",
        severity=decision.experiment.severity,
        funnel=funnel.name,
        step=decision.experiment.exposure,
        window_start=utc_datetime(decision.start_ms),
        window_end=utc_datetime(decision.end_ms),
        observed_rate=0.0,
        expected_rate=0.0,
        p_value=math.exp(-max(0.0, decision.check.log_bayes_factor)),
        decided=total,
        dropped=0,
        excess_dropped=0.0,
        dropped_value=0.0,
        summary=summary,
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
        experiment=decision.experiment.name,
        alpha=decision.experiment.alpha,
        exposures=dict(decision.exposures),
        intended_split=dict(split),
    )
