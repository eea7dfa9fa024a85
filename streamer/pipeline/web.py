"""The worker's web pages: ``/metrics`` (Prometheus) and ``/funnel`` (the current funnel)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import NEVER
from streamer.metrics import LiveSnapshot, Metrics
from streamer.pipeline.detector import DetectorStage
from streamer.pipeline.sessions import SessionsStage
from streamer.query import FunnelView, tail_windows
from streamer.settings import Settings

__all__ = ["install"]


def install(
    app: Any,
    settings: Settings,
    registry: CollectorRegistry,
    metrics: Metrics,
    funnels: tuple[FunnelDefinition, ...],
    sessions: SessionsStage,
    detector: DetectorStage | None = None,
) -> None:
    def live_snapshot() -> LiveSnapshot:
        snapshot = LiveSnapshot()
        now_ms = time.time() * 1000
        now = time.monotonic()
        for runtime in list(sessions.runtimes.values()):
            task = runtime.task
            snapshot.unacked[task.partition] = len(runtime.unacked) + runtime.storing
            snapshot.checkpoint_age_seconds[task.partition] = now - runtime.checkpointed_at
            for (funnel_index, stage_index), count in task.open_sessions.items():
                funnel = funnels[funnel_index]
                key = (funnel.name, funnel.stages[stage_index].name)
                snapshot.open_sessions[key] = snapshot.open_sessions.get(key, 0) + count
            if task.watermark_ms > NEVER:
                snapshot.watermark_lag_seconds[task.partition] = (now_ms - task.watermark_ms) / 1000
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

    metrics.live.provider = live_snapshot

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
            summary = view.summary()
            if detector is not None:  # as this worker's detector knows it
                for name, parts in summary.items():
                    steps = detector.warming_up.get(name, {})
                    parts["warming_up"] = [step for step, warming in steps.items() if warming]
                    parts["silent_inputs"] = detector.silent_inputs.get(name, [])
            return self.json(summary)

    app.page("/funnel")(FunnelPage)
