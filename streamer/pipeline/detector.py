"""Detector stage: final cohort windows -> drop-off spike alerts (``funnel.alerts``).

Reads ``funnel.windows`` in window order, keeps every step's detector state in the ``detector``
table, and writes each decision as an :class:`Alert` before anything tries to deliver it. A
window seen before (re-published after a restore) is skipped, so a replay gives the same alerts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

from streamer.events import Alert, AlertExplanation, WindowStats
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.detect import AlertDecision, StepDetector, StepWindow
from streamer.metrics import Metrics
from streamer.settings import Settings

__all__ = ["DetectorStage", "alert_record", "install", "step_window"]

log = logging.getLogger(__name__)

SendFn = Callable[[bytes | None, bytes], Awaitable[Any]]


def step_window(stats: WindowStats, step_index: int) -> StepWindow:
    stage = stats.stages[step_index]
    return StepWindow(
        start_ms=round(stats.window_start.timestamp() * 1000),
        end_ms=round(stats.window_end.timestamp() * 1000),
        decided=stage.converted + stage.dropped,
        dropped=stage.dropped,
        dropped_value=stage.dropped_value,
        segments={
            (segment.dimension, segment.value): (
                segment.stages[step_index].converted + segment.stages[step_index].dropped,
                segment.stages[step_index].dropped,
            )
            for segment in stats.segments
            if segment.stages[step_index].converted + segment.stages[step_index].dropped
        },
    )


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def alert_record(
    funnel: FunnelDefinition,
    step: str,
    decision: AlertDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    window = decision.window
    if decision.state == "resolved":
        summary = (
            f"{step} drop-off is back to {_pct(window.rate)} (baseline "
            f"{_pct(decision.expected_rate)}, {window.decided} decided sessions)."
        )
    else:
        where = ""
        if decision.explanations:
            where = (
                " Most of the excess: "
                + ", ".join(
                    f"{e.dimension}={e.value} ({e.share_of_excess:.0%})"
                    for e in decision.explanations
                )
                + "."
            )
        summary = (
            f"{step} drop-off is {_pct(window.rate)} against {_pct(decision.expected_rate)} "
            f"expected: {window.dropped} of {window.decided} decided sessions dropped, "
            f"{decision.excess_dropped:.0f} more than usual, carts worth "
            f"{window.dropped_value:,.2f}.{where}"
        )
    return Alert(
        event_id=f"{decision.alert_id}/{decision.state}/{window.start_ms}",
        alert_id=decision.alert_id,
        state=decision.state,
        severity="page" if decision.severity == "page" else "warning",
        funnel=funnel.name,
        step=step,
        window_start=datetime.fromtimestamp(window.start_ms / 1000, tz=UTC),
        window_end=datetime.fromtimestamp(window.end_ms / 1000, tz=UTC),
        observed_rate=round(window.rate, 6),
        expected_rate=round(decision.expected_rate, 6),
        p_value=decision.p_value,
        decided=window.decided,
        dropped=window.dropped,
        excess_dropped=round(decision.excess_dropped, 2),
        dropped_value=round(window.dropped_value, 2),
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
        summary=summary,
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
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
    ) -> None:
        self._funnels = {funnel.name: funnel for funnel in funnels}
        self._table = table
        self._metrics = metrics
        self._send_alert = send_alert
        self._links = (dashboard_url, runbook_url)

    async def process(self, value: bytes) -> list[Alert]:
        stats = WindowStats.model_validate_json(value)
        funnel = self._funnels.get(stats.funnel)
        if funnel is None or not stats.final:
            return []  # revisions of a window still deciding are never judged
        start_ms = round(stats.window_start.timestamp() * 1000)
        last_key = f"last:{funnel.name}"
        last = self._table.get(last_key)
        if last is not None and int(orjson.loads(last)) >= start_ms:
            return []  # this window was judged already
        alerts = []
        for step_index, step in enumerate(funnel.step_names):
            detector = StepDetector(funnel, step_index)
            key = f"step:{funnel.name}:{step}"
            raw = self._table.get(key)
            if raw is not None:
                detector.load_json(orjson.loads(raw))
            decision = detector.observe(step_window(stats, step_index))
            self._table[key] = orjson.dumps(detector.to_json())
            if decision is None:
                continue
            alert = alert_record(funnel, step, decision, *self._links)
            await self._send_alert(alert.alert_id.encode(), alert.model_dump_json().encode())
            self._metrics.alerts.labels(
                funnel=funnel.name, step=step, state=alert.state, severity=alert.severity
            ).inc()
            log.warning("alert %s %s: %s", alert.state, alert.alert_id, alert.summary)
            alerts.append(alert)
        self._table[last_key] = orjson.dumps(start_ms)
        return alerts


def install(
    app: Any, settings: Settings, metrics: Metrics, funnels: tuple[FunnelDefinition, ...]
) -> DetectorStage:
    """Wire the detector: final records of ``funnel.windows`` -> ``funnel.alerts``."""
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    windows = app.topic(settings.windows_topic, partitions=1, **raw)
    alerts = app.topic(settings.alerts_topic, partitions=1, **raw)

    async def send_alert(key: bytes | None, value: bytes) -> None:
        await alerts.send(key=key, value=value)

    detector = DetectorStage(
        funnels=funnels,
        table=app.Table("detector", key_type=str, value_type=bytes, partitions=1),
        metrics=metrics,
        send_alert=send_alert,
        dashboard_url=settings.dashboard_url,
        runbook_url=settings.runbook_url,
    )

    async def detector_agent(stream: Any) -> None:
        # Acked only once judged: a window judged already is skipped when read again.
        async for event in stream.noack().events():
            try:
                await detector.process(event.value)
            except Exception:  # a bad window must not stop alerting on the next ones
                metrics.merge_errors.inc()
                log.exception("detector could not process a window; skipped")
            event.ack()

    app.agent(windows, name="detector")(detector_agent)
    return detector
