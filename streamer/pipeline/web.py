"""The worker's web pages: ``/metrics`` (Prometheus), ``/funnel`` (the current funnel),
``/healthz`` (the process serves) and ``/readyz`` (partitions assigned, input caught up,
broker reachable), the last two for Kubernetes probes (docs/operations.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamer.funnel.session import NEVER
from streamer.metrics import LiveSnapshot, Metrics
from streamer.pipeline.detector import DetectorStage
from streamer.pipeline.sessions import SessionsStage
from streamer.query import FunnelView, tail_windows
from streamer.settings import Settings

__all__ = [
    "BrokerProbe",
    "Healthz",
    "Readiness",
    "funnel_summary",
    "install",
    "live_snapshot",
    "readiness",
]

# How long one broker probe answers /readyz: probes every few seconds cost one connection each.
_BROKER_PROBE_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: dict[str, dict[str, Any]]


def readiness(snapshot: LiveSnapshot, broker: tuple[bool, str], max_lag: int) -> Readiness:
    """Ready = partitions assigned, every assigned partition at most ``max_lag`` messages
    behind its log end, and the broker answering (``broker``: reachable, why not)."""
    assigned = sum(snapshot.assigned.values())
    behind = {f"{t}/{p}": lag for (t, p), lag in snapshot.consumer_lag.items() if lag > max_lag}
    checks: dict[str, dict[str, Any]] = {
        "partitions_assigned": {"ok": assigned > 0, "partitions": assigned},
        "caught_up": {
            "ok": not behind,
            "max_lag_messages": max_lag,
            "behind": dict(sorted(behind.items())),
        },
        "broker": {"ok": broker[0], "detail": broker[1]},
    }
    return Readiness(all(check["ok"] for check in checks.values()), checks)


def live_snapshot(app: Any, stages: Sequence[SessionsStage]) -> LiveSnapshot:
    """The gauges read at a scrape: the tasks of the sessions stage and of the unit stage
    (user funnels: their open units, their partitions numbered after the session tasks' as
    the merger numbers them), the consumer's assignment and its lag per partition."""
    snapshot = LiveSnapshot()
    now_ms = time.time() * 1000
    now = time.monotonic()
    for stage in stages:
        for runtime in list(stage.runtimes.values()):
            task = runtime.task
            partition = stage.reports_as + task.partition
            snapshot.unacked[partition] = runtime.unstored + runtime.storing
            snapshot.checkpoint_age_seconds[partition] = now - runtime.checkpointed_at
            # The stage's own funnels: each stage counts only its own (session or user).
            for (funnel_index, stage_index), count in task.open_sessions.items():
                funnel = stage.funnels[funnel_index].definition
                key = (funnel.name, funnel.stages[stage_index].name)
                snapshot.open_sessions[key] = snapshot.open_sessions.get(key, 0) + count
            if task.watermark_ms > NEVER:
                snapshot.watermark_lag_seconds[partition] = (now_ms - task.watermark_ms) / 1000
    try:
        for tp in app.consumer.assignment():
            snapshot.assigned[tp.topic] = snapshot.assigned.get(tp.topic, 0) + 1
    except Exception:  # the consumer is not started yet
        pass
    monitor = app.monitor
    for tp, end in dict(getattr(monitor, "tp_end_offsets", {})).items():
        read = getattr(monitor, "tp_read_offsets", {}).get(tp)
        if read is not None:
            snapshot.consumer_lag[(tp.topic, tp.partition)] = max(0, int(end) - int(read) - 1)
    return snapshot


class BrokerProbe:
    """Whether a broker answers, asked at most once per ``_BROKER_PROBE_TTL_SECONDS``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._at = -1e9
        self._result: tuple[bool, str] = (False, "not probed yet")

    async def reachable(self) -> tuple[bool, str]:
        from streamer.errors import StreamerError
        from streamer.kafka_access import check_login

        if time.monotonic() - self._at > _BROKER_PROBE_TTL_SECONDS:
            try:
                ok = await check_login(self._settings, timeout=3.0)
                self._result = (True, "answers") if ok else (False, "no broker answers")
            except StreamerError as exc:
                self._result = (False, str(exc))
            self._at = time.monotonic()
        return self._result


def funnel_summary(view: FunnelView, detector: DetectorStage | None) -> dict[str, Any]:
    """``/funnel``: the newest windows per funnel, with the steps warming up and the silent
    inputs as this worker's detector knows them."""
    summary = view.summary()
    if detector is not None:
        for name, parts in summary.items():
            steps = detector.warming_up.get(name, {})
            parts["warming_up"] = [step for step, warming in steps.items() if warming]
            parts["silent_inputs"] = detector.silent_inputs.get(name, [])
    return summary


class Healthz(View):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok"})  # the process serves: liveness only


def install(
    app: Any,
    settings: Settings,
    registry: CollectorRegistry,
    metrics: Metrics,
    stages: Sequence[SessionsStage],
    detector: DetectorStage | None = None,
) -> None:
    """``stages``: the sessions stage, and the unit stage when user funnels are configured."""
    metrics.live.provider = lambda: live_snapshot(app, stages)

    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # CONTENT_TYPE_LATEST carries a charset, which aiohttp refuses in content_type=.
            return self.bytes(
                generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

    app.page("/metrics")(MetricsView)

    view = FunnelView()

    async def follow_windows() -> None:
        await tail_windows(settings, view, asyncio.Event())  # cancelled when the worker stops

    app.task(follow_windows)

    class FunnelPage(View):
        async def get(self, request: Request) -> Response:
            return self.json(funnel_summary(view, detector))

    app.page("/funnel")(FunnelPage)
    app.page("/healthz")(Healthz)

    broker = BrokerProbe(settings)

    class Readyz(View):
        async def get(self, request: Request) -> Response:
            state = readiness(
                live_snapshot(app, stages),
                await broker.reachable(),
                settings.ready_max_lag_messages,
            )
            return self.json(
                {"ready": state.ready, "checks": state.checks}, status=200 if state.ready else 503
            )

    app.page("/readyz")(Readyz)
