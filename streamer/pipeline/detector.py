"""Detector stage: cohort windows as the merger holds them -> drop-off alerts (``funnel.alerts``).

Runs inside the windows stage's agent: at each look of the detector (``LOOKS_PER_WINDOW`` per
window of watermark) the merger calls :meth:`DetectorStage.judge` with every cohort window it
holds (merged from all partitions,
each reflecting at least that watermark), and the funnel's detector
(:class:`streamer.funnel.detect.FunnelDetector`) judges final cohorts on final numbers and
young ones at matched age. The detector's state lives in the ``detector`` table; each decision
is written as an :class:`Alert` before anything tries to deliver it, with a deterministic id, so
a replay of the same data gives the same alerts and a repeat after a restart is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from datetime import datetime
from typing import Any

import orjson

from streamer.events import Alert, AlertExplanation
from streamer.formatting import percent, utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.detect import AlertDecision, Decision, FunnelDetector, held_steps
from streamer.funnel.experiments import ExperimentGuard, GuardrailDecision, RatioDecision
from streamer.funnel.satisfaction import LowScoreDecision
from streamer.funnel.tracking import EVENT_TYPE_RESIDUAL, TrackingDecision, key_name
from streamer.funnel.windows import WindowCounts
from streamer.kafka_io import read_topic
from streamer.metrics import Metrics
from streamer.pipeline.guardrails import (
    experiment_alert_record,
    experiment_decisions,
    guard_key,
)
from streamer.pipeline.low_scores import (
    low_score_alert_record,
    low_score_decisions,
    low_scores_key,
)
from streamer.pipeline.messages import SendFn
from streamer.pipeline.tables import Deliveries, confirmed_table
from streamer.pipeline.topics import record_topic
from streamer.settings import Settings

__all__ = ["DetectorStage", "alert_record", "install", "read_seeds", "tracking_alert_record"]

log = logging.getLogger(__name__)

# Judging lets the event loop run this often: the boundaries of a backlog's windows, turned
# final together, were judged in one piece for 0.8 s (decision 0007).
JUDGE_SLICE_S = 0.01


def _drop_off_summary(step: str, decision: AlertDecision) -> str:
    """One paragraph for people: how far the step is off, on which basis, and where most of
    the excess is."""
    observed, expected = percent(decision.observed_rate), percent(decision.expected_rate)
    if decision.state == "resolved":
        return f"{step} is back to normal: no test of the step or its segments fires any more."
    where = ""
    if decision.explanations:
        where = (
            " Most of the excess: "
            + ", ".join(
                f"{e.dimension}={e.value} ({percent(e.observed_rate)} vs "
                f"{percent(e.expected_rate)}, {e.share_of_excess:.0%})"
                for e in decision.explanations
            )
            + "."
        )
    if decision.basis == "matched_age":
        return (
            f"{step}: {observed} of the sessions that reached it in the last minutes "
            f"have not converted yet, against {expected} usually by the same age "
            f"({decision.dropped} of {decision.decided}, {decision.excess_dropped:.0f} more "
            f"than usual). The step looks broken now, before its timeout decides them.{where}"
        )
    return (
        f"{step} drop-off is {observed} against {expected} expected: "
        f"{decision.dropped} of {decision.decided} decided sessions dropped, "
        f"{decision.excess_dropped:.0f} more than usual, carts worth "
        f"{decision.dropped_value:,.2f}.{where}"
    )


def alert_record(
    funnel: FunnelDefinition,
    step: str,
    decision: AlertDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    return Alert(
        event_id=f"{decision.alert_id}/{decision.state}/{decision.evaluated_at_ms}",
        alert_id=decision.alert_id,
        state=decision.state,
        severity="page" if decision.severity == "page" else "warning",
        basis=decision.basis,
        funnel=funnel.name,
        step=step,
        window_start=utc_datetime(decision.start_ms),
        window_end=utc_datetime(decision.end_ms),
        observed_rate=round(decision.observed_rate, 6),
        expected_rate=round(decision.expected_rate, 6),
        p_value=decision.p_value,
        decided=decision.decided,
        dropped=decision.dropped,
        excess_dropped=round(decision.excess_dropped, 2),
        dropped_value=round(decision.dropped_value, 2),
        explanations=[
            AlertExplanation(
                dimension=e.dimension,
                value=e.value,
                share_of_excess=round(e.share_of_excess, 4),
                observed_rate=round(e.observed_rate, 6),
                expected_rate=round(e.expected_rate, 6),
                decided=e.decided,
                dropped=e.dropped,
            )
            for e in decision.explanations
        ],
        summary=_drop_off_summary(step, decision),
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
    )


def _tracking_summary(decision: TrackingDecision, since: datetime, held: list[str]) -> str:
    """One paragraph for people: what went silent, ``since`` when, and the steps not judged
    meanwhile (``held``)."""
    what = f"topic {decision.name}" if decision.subject == "topic" else decision.name
    if decision.state == "resolved":
        return (
            f"Tracking is back: {what} events arrive again (silent since "
            f"{since:%H:%M} UTC). The steps it feeds are judged again; cohorts whose "
            "conversions were due while it was silent stay unjudged."
        )
    held_text = ", ".join(held) if held else "none of this funnel's steps"
    return (
        f"Tracking broke, not necessarily conversion: no {what} events since "
        f"{since:%H:%M} UTC, where about {decision.expected_events:.0f} were expected "
        f"at its usual share of the traffic that still flows. Check the producer of "
        f"these events. Meanwhile the conversion tests of {held_text} skip the "
        "sessions whose conversions were due in the silence (no drop-off page from it)."
    )


def tracking_alert_record(
    funnel: FunnelDefinition,
    decision: TrackingDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    """A data-quality alert: a topic or event type went silent while the rest flows."""
    held = held_steps(funnel, decision.event_types)
    since = utc_datetime(decision.silent_since_ms)
    residual = 1.0 if decision.subject == "topic" else EVENT_TYPE_RESIDUAL
    return Alert(
        event_id=f"{decision.alert_id}/{decision.state}/{decision.evaluated_at_ms}",
        alert_id=decision.alert_id,
        kind="data_quality",
        state=decision.state,
        severity="page" if funnel.alerting.data_quality_severity == "page" else "warning",
        funnel=funnel.name,
        step="tracking",
        window_start=since,
        window_end=utc_datetime(decision.evaluated_at_ms),
        observed_rate=0.0,
        expected_rate=0.0,
        p_value=math.exp(-decision.expected_events * residual),
        decided=0,
        dropped=0,
        excess_dropped=0.0,
        dropped_value=0.0,
        summary=_tracking_summary(decision, since, held),
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
        silent_topic=decision.name if decision.subject == "topic" else None,
        silent_event_types=list(decision.event_types),
        held_steps=held,
        expected_events=round(decision.expected_events, 1),
    )


class DetectorStage:
    def __init__(
        self,
        *,
        funnels: tuple[FunnelDefinition, ...],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        send_alert: SendFn,
        dashboard_url: str | None = None,
        runbook_url: str | None = None,
        read_seeds: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
        confirm_writes: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._funnels = {funnel.name: funnel for funnel in funnels}
        self._table = table
        self._confirm_writes = confirm_writes
        self._metrics = metrics
        self._send_alert = send_alert
        self._links = (dashboard_url, runbook_url)
        self._read_seeds = read_seeds
        self._seeds: Mapping[str, Any] | None = None  # read once, when first needed
        self.warming_up: dict[str, dict[str, bool]] = {
            funnel.name: FunnelDetector(funnel).warming_up() for funnel in funnels
        }
        for funnel in funnels:
            self._show_warm_up(funnel.name)
        # Per funnel: the inputs a data-quality alert says are silent now.
        self.silent_inputs: dict[str, list[dict[str, str]]] = {f.name: [] for f in funnels}

    async def confirm_sent(self) -> None:
        """Wait until the state and the alerts the last judgements wrote are on the broker
        (raises the broker's refusal): the windows stage acks its input only then."""
        if self._confirm_writes is not None:
            await self._confirm_writes()

    def _show_warm_up(self, funnel: str) -> None:
        for step, warming in self.warming_up[funnel].items():
            self._metrics.detector_warming_up.labels(funnel=funnel, step=step).set(int(warming))

    async def judge(
        self,
        funnel: FunnelDefinition,
        watermarks: Sequence[int],
        windows: Mapping[int, WindowCounts],
    ) -> list[Alert]:
        """Judge ``funnel`` as of each of ``watermarks`` (in order); send and return the
        alerts it decides. The detector's state is read and stored once per call, and is on
        the broker when this returns (raises :class:`OutputRefusedError` if refused)."""
        detector = FunnelDetector(funnel)
        key = f"funnel:{funnel.name}"
        raw = self._table.get(key)
        if raw is not None:
            detector.load_json(orjson.loads(raw))
        else:
            await self._start_warm(funnel, detector)
        decisions: list[Decision | GuardrailDecision | RatioDecision | LowScoreDecision] = []
        ran_at = time.perf_counter()
        for watermark in watermarks:
            decisions.extend(detector.evaluate(watermark, windows))
            if time.perf_counter() - ran_at >= JUDGE_SLICE_S:
                # (only the merger's agent changes ``windows``, and it is waiting for this)
                await asyncio.sleep(0)
                ran_at = time.perf_counter()
        guard = None
        boundaries = [w for w in watermarks if w % funnel.window_ms == 0]  # not early looks
        if funnel.experiments and boundaries:  # docs/experiments.md: same windows, own state
            guarded, guard = experiment_decisions(funnel, self._table, boundaries, windows)
            decisions += guarded
        low_scores = None
        if funnel.surveys and boundaries:  # docs/satisfaction.md: same windows, own state
            scored, low_scores = low_score_decisions(funnel, self._table, boundaries, windows)
            decisions += scored
        alerts = []
        for decision in decisions:
            alert = self._record(funnel, decision)
            if alert is None:
                continue
            await self._send_alert(alert.alert_id.encode(), alert.model_dump_json().encode())
            self._metrics.alerts.labels(
                funnel=funnel.name, step=alert.step, state=alert.state, severity=alert.severity
            ).inc()
            log.warning("alert %s %s: %s", alert.state, alert.alert_id, alert.summary)
            alerts.append(alert)
        # In this order, each on the broker before the next is written: the alerts, the
        # detector's state, then (the merger's) the boundaries judged. A worker killed
        # between two of them judges these boundaries again from the older state and sends
        # the same alerts again (same ids: the notifier delivers them once); a state written
        # before its alerts could lose them, a mark before the state would skip judgements.
        if alerts:
            await self.confirm_sent()
        self._table[key] = orjson.dumps(detector.to_json())
        if guard is not None:
            self._table[guard_key(funnel)] = orjson.dumps(guard.to_json())
        if low_scores is not None:
            self._table[low_scores_key(funnel)] = orjson.dumps(low_scores.to_json())
        await self.confirm_sent()
        self._show_state(funnel, detector)
        if guard is not None:
            self._show_arms(funnel, guard)
        return alerts

    def _record(
        self,
        funnel: FunnelDefinition,
        decision: AlertDecision
        | TrackingDecision
        | GuardrailDecision
        | RatioDecision
        | LowScoreDecision,
    ) -> Alert | None:
        """The alert a decision makes; None for a data-quality alert the funnel turned off
        (its gauge is set all the same)."""
        if isinstance(decision, GuardrailDecision | RatioDecision):
            return experiment_alert_record(funnel, decision, *self._links)
        if isinstance(decision, LowScoreDecision):
            return low_score_alert_record(funnel, decision, *self._links)
        if isinstance(decision, AlertDecision):
            step = decision.alert_id.split("/")[1]
            return alert_record(funnel, step, decision, *self._links)
        self._metrics.tracking_silent.labels(
            funnel=funnel.name, subject=decision.subject, name=decision.name
        ).set(int(decision.state == "firing"))
        if funnel.alerting.data_quality_severity == "off":
            log.warning("tracking %s %s (not sent: off)", decision.state, decision.alert_id)
            return None
        return tracking_alert_record(funnel, decision, *self._links)

    def _show_state(self, funnel: FunnelDefinition, detector: FunnelDetector) -> None:
        """What ``/funnel`` and the gauges show after a judgement: the inputs silent now and
        the steps still warming up (a step that warmed up is logged once)."""
        self.silent_inputs[funnel.name] = [
            {
                "subject": subject,
                "name": name,
                "since": utc_datetime(run.first_ms).isoformat(),
                "alert_id": run.alert_id or "",
            }
            for tracked, run in sorted(detector.tracking.runs.items())
            if run.reported
            for subject, name in [key_name(tracked)]
        ]
        was = self.warming_up.get(funnel.name)
        self.warming_up[funnel.name] = detector.warming_up()
        if was != self.warming_up[funnel.name]:
            for step, warming in self.warming_up[funnel.name].items():
                if was is not None and was.get(step) and not warming:
                    log.info("detector %s %s: warmed up, alerts enabled", funnel.name, step)
            self._show_warm_up(funnel.name)

    def _show_arms(self, funnel: FunnelDefinition, guard: ExperimentGuard) -> None:
        """Each variant's conversion per guarded step and its exposures, over the final
        cohorts the guard counted (docs/experiments.md)."""
        for experiment, variant, step, arm in guard.arms():
            self._metrics.experiment_conversion_ratio.labels(
                funnel=funnel.name, experiment=experiment, variant=variant, step=step
            ).set(arm.rate)
            self._metrics.experiment_decided.labels(
                funnel=funnel.name, experiment=experiment, variant=variant, step=step
            ).set(arm.entered)
        for experiment, variant, exposed in guard.exposures():
            self._metrics.experiment_exposures.labels(
                funnel=funnel.name, experiment=experiment, variant=variant
            ).set(exposed)

    async def _start_warm(self, funnel: FunnelDefinition, detector: FunnelDetector) -> None:
        """A funnel without detector state starts from the baselines `streamer backfill`
        computed from its history, if there are any that fit its steps."""
        if self._read_seeds is None:
            return
        if self._seeds is None:
            self._seeds = await self._read_seeds()
        seed = self._seeds.get(funnel.name)
        if seed is None:
            log.info("detector %s: no backfilled baselines, warming up from live data", funnel.name)
            return
        if seed.get("step_names") != funnel.step_names:
            log.warning(
                "detector %s: the backfilled baselines are for steps %s, the funnel has %s: "
                "warming up from live data instead (run streamer backfill again)",
                funnel.name,
                seed.get("step_names"),
                funnel.step_names,
            )
            return
        detector.load_json(seed["detector"])
        warm = [step for step, warming in detector.warming_up().items() if not warming]
        log.info(
            "detector %s: starting from the baselines backfilled over %s..%s (warm: %s)",
            funnel.name,
            *seed["range"],
            ", ".join(warm) or "no step",
        )


async def read_seeds(settings: Settings) -> dict[str, Any]:
    """The latest backfill record per funnel on the baselines topic."""
    seeds: dict[str, Any] = {}
    for _, value in await read_topic(settings, settings.baselines_topic):
        if not value:
            continue
        try:
            record = orjson.loads(value)
            seeds[str(record["funnel"])] = record
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning(
                "a record of %s is not a backfill baseline: ignored", settings.baselines_topic
            )
    return seeds


def install(
    app: Any, settings: Settings, metrics: Metrics, funnels: tuple[FunnelDefinition, ...]
) -> DetectorStage:
    """The detector's table and output topic; the windows stage calls :meth:`judge`."""
    alerts = record_topic(app, settings.alerts_topic, partitions=1)

    table = confirmed_table(app, "detector", partitions=1)
    sent_alerts = Deliveries()

    async def confirm_writes() -> None:
        await table.confirm_sent()
        await sent_alerts.confirm()

    return DetectorStage(
        funnels=funnels,
        table=table,
        confirm_writes=confirm_writes,
        metrics=metrics,
        send_alert=sent_alerts.sender(alerts),
        dashboard_url=settings.dashboard_url,
        runbook_url=settings.runbook_url,
        read_seeds=lambda: read_seeds(settings),
    )
