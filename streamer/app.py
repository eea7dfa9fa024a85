"""create_app(settings): the Faust app with its topics, agents and web pages wired together.

No module-global app: every worker, test and benchmark builds its own from settings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import faust
from faust.web import Request, Response, View
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

from streamer.dedup import Deduplicator
from streamer.errors import ConfigError
from streamer.funnel.definition import FunnelDefinition, FunnelDefinitionError, load_funnels
from streamer.metrics import LiveSnapshot, Metrics
from streamer.notify import Notifier, SlackNotifier
from streamer.pipeline.detector import DetectorStage
from streamer.pipeline.ingest import IngestStage, SourceMessage, limits_from
from streamer.pipeline.notifier import NotifierStage
from streamer.pipeline.sessions import SessionsStage, tick_record
from streamer.pipeline.windows import WindowMerger
from streamer.query import FunnelView, tail_windows
from streamer.settings import Settings

__all__ = [
    "DLQ_MAX_MESSAGE_BYTES",
    "StreamerApp",
    "create_app",
    "faust_broker_options",
    "load_configured_funnels",
    "topic_plan",
]

# A dead letter carries the original value base64-encoded (4/3 of its size) plus metadata, so
# the DLQ accepts larger messages than the broker's 1 MiB default for source topics.
DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamerApp:
    """The Faust app plus the objects tests and the CLI want to reach."""

    faust: faust.App
    settings: Settings
    metrics: Metrics
    ingest: IngestStage
    sessions: SessionsStage
    merger: WindowMerger
    detector: DetectorStage
    notifier: NotifierStage
    funnels: tuple[FunnelDefinition, ...]


def load_configured_funnels(settings: Settings) -> tuple[FunnelDefinition, ...]:
    try:
        funnels = load_funnels(settings.funnels)
    except FunnelDefinitionError as exc:
        raise ConfigError(f"funnel definition: {exc}") from None
    if not funnels:
        raise ConfigError(f"no funnel definitions found in {[str(p) for p in settings.funnels]}")
    return funnels


def topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic streamer reads or writes: name -> (partitions, topic config)."""
    per_session = settings.topic_partitions
    return {
        settings.clickstream_topic: (per_session, {}),
        settings.checkout_topic: (per_session, {}),
        settings.events_topic: (per_session, {}),
        settings.dlq_topic: (per_session, {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}),
        # A few records per window: one partition lets one merger see every partial in order.
        settings.partials_topic: (1, {}),
        settings.windows_topic: (1, {}),
        settings.abandonments_topic: (per_session, {}),
        settings.alerts_topic: (1, {}),
        settings.failed_alerts_topic: (1, {}),
    }


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
    }
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password is not None else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=None,
        )
    return options


def _source_message(raw: Any) -> SourceMessage:
    """A Faust message as the stages see it (Faust's timestamps are float seconds)."""
    return SourceMessage(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        timestamp_ms=round(raw.timestamp * 1000) if raw.timestamp else None,
        key=raw.key,
        value=raw.value,
    )


def create_app(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    notifier: Notifier | None = None,
) -> StreamerApp:
    # `_created` series double the scrape size and no dashboard of ours reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    active_registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    source_topics = (settings.clickstream_topic, settings.checkout_topic)
    funnels = load_configured_funnels(settings)
    metrics = Metrics.create(
        active_registry, source_topics=(*source_topics, settings.events_topic), funnels=funnels
    )

    app = faust.App(
        settings.app_id,
        **faust_broker_options(settings),
        store="rocksdb://" if settings.store == "rocksdb" else "memory://",
        datadir=str(settings.data_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        web_in_thread=False,
        producer_max_request_size=DLQ_MAX_MESSAGE_BYTES,
    )

    source = app.topic(
        *source_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    events_topic = app.topic(settings.events_topic, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(
        settings.dlq_topic,
        key_serializer="raw",
        value_serializer="raw",
        config={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)},
    )
    # event_id -> [first receive ms, partition]; changelogged, so retries are caught across
    # restarts. Its changelog has as many partitions as the source topics (Faust requires it).
    seen_events = app.Table("seen-event-ids", key_type=str, partitions=settings.topic_partitions)
    dedup = Deduplicator(seen_events, horizon_ms=round(settings.dedup_horizon_seconds * 1000))
    reindex_needed = True

    def _on_rebalance(sender: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal reindex_needed
        reindex_needed = True
        sessions.partitions_assigned()

    # mode's stubs describe receivers too narrowly for a plain callback.
    app.on_rebalance_complete.connect(_on_rebalance)  # type: ignore[arg-type]

    async def send_event(key: bytes | None, value: bytes) -> None:
        await events_topic.send(key=key, value=value)

    async def send_dead_letter(key: bytes | None, value: bytes) -> None:
        await dlq_topic.send(key=key, value=value)

    ingest = IngestStage(
        metrics=metrics,
        limits=limits_from(settings),
        dedup=dedup,
        send_event=send_event,
        send_dead_letter=send_dead_letter,
    )

    async def ingest_agent(stream: Any) -> None:
        nonlocal reindex_needed
        async for event in stream.events():
            if reindex_needed:  # first event after a (re)assignment: tables are recovered
                reindex_needed = False
                log.info("dedup: %d remembered event ids re-indexed", dedup.reindex())
            raw = event.message
            await ingest.process(_source_message(raw))

    app.agent(source, name="ingest")(ingest_agent)

    # --- sessions: funnel.events -> session table -> partials ----------------------------
    events_source = app.topic(
        settings.events_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    partials_topic = app.topic(
        settings.partials_topic, partitions=1, key_serializer="raw", value_serializer="raw"
    )
    windows_topic = app.topic(
        settings.windows_topic, partitions=1, key_serializer="raw", value_serializer="raw"
    )
    # Values are our own orjson bytes; value_type=bytes makes Faust store them as they are.
    session_table = app.Table(
        "sessions", key_type=str, value_type=bytes, partitions=settings.topic_partitions
    )

    async def send_partial(key: bytes | None, value: bytes) -> None:
        await partials_topic.send(key=key, value=value, partition=0)

    abandonments_topic = app.topic(
        settings.abandonments_topic, key_serializer="raw", value_serializer="raw"
    )

    async def send_abandonment(key: bytes | None, value: bytes) -> None:
        await abandonments_topic.send(key=key, value=value)

    sessions = SessionsStage(
        funnels=funnels,
        table=session_table,
        metrics=metrics,
        allowed_lateness_ms=round(settings.allowed_lateness_seconds * 1000),
        retention_ms=round(settings.session_retention_seconds * 1000),
        send_partial=send_partial,
        send_dead_letter=send_dead_letter,
        send_abandonment=send_abandonment,
    )

    async def sessions_agent(stream: Any) -> None:
        async for event in stream.events():
            raw = event.message
            await sessions.process(_source_message(raw))

    app.agent(events_source, name="sessions")(sessions_agent)

    # --- windows: partials of every partition -> final window stats ----------------------
    merge_table = app.Table("window-merge", key_type=str, value_type=bytes, partitions=1)

    async def send_window(key: bytes | None, value: bytes) -> None:
        await windows_topic.send(key=key, value=value)

    merger = WindowMerger(
        funnels=funnels,
        source_partitions=settings.topic_partitions,
        table=merge_table,
        metrics=metrics,
        send_window=send_window,
    )

    async def windows_agent(stream: Any) -> None:
        async for value in stream:
            try:
                await merger.process(value)
            except Exception:  # a bad record must not stop the merger (and lose the rest)
                metrics.merge_errors.inc()
                log.exception("window merger could not process a record; skipped")

    app.agent(partials_topic, name="windows")(windows_agent)

    # --- detector: final windows -> alerts (written before any delivery) -------------------
    alerts_topic = app.topic(
        settings.alerts_topic, partitions=1, key_serializer="raw", value_serializer="raw"
    )
    failed_topic = app.topic(
        settings.failed_alerts_topic, partitions=1, key_serializer="raw", value_serializer="raw"
    )

    async def send_alert(key: bytes | None, value: bytes) -> None:
        await alerts_topic.send(key=key, value=value)

    detector = DetectorStage(
        funnels=funnels,
        table=app.Table("detector", key_type=str, value_type=bytes, partitions=1),
        metrics=metrics,
        send_alert=send_alert,
        dashboard_url=settings.dashboard_url,
        runbook_url=settings.runbook_url,
    )

    async def detector_agent(stream: Any) -> None:
        async for value in stream:
            try:
                await detector.process(value)
            except Exception:  # a bad window must not stop alerting on the next ones
                metrics.merge_errors.inc()
                log.exception("detector could not process a window; skipped")

    app.agent(windows_topic, name="detector")(detector_agent)

    # --- notifier: alerts -> Slack, once each ----------------------------------------------
    async def send_failed(key: bytes | None, value: bytes) -> None:
        await failed_topic.send(key=key, value=value)

    notifier_stage = NotifierStage(
        notifier=notifier
        or SlackNotifier(
            webhook_url=settings.slack_webhook_url,
            page_webhook_url=settings.slack_page_webhook_url,
            timeout=settings.slack_timeout_seconds,
            max_attempts=settings.slack_max_attempts,
            min_interval=settings.slack_min_interval_seconds,
        ),
        table=app.Table("delivered-alerts", key_type=str, value_type=bytes, partitions=1),
        metrics=metrics,
        send_failed=send_failed,
    )

    async def notifier_agent(stream: Any) -> None:
        async for event in stream.events():
            try:
                await notifier_stage.process(event.message.value, event.message.timestamp)
            except Exception:  # an unreadable alert record: counted, logged, skipped
                metrics.alert_deliveries.labels(outcome="failed").inc()
                log.exception("notifier could not process an alert record; skipped")

    app.agent(alerts_topic, name="notifier")(notifier_agent)

    # --- ticker: idle partitions follow the wall clock at the live edge -------------------
    if settings.tick_interval_seconds > 0:
        behind_ms = round((settings.allowed_lateness_seconds + settings.tick_grace_seconds) * 1000)

        async def tick() -> None:
            watermark = round(time.time() * 1000) - behind_ms
            for partition in range(settings.topic_partitions):
                await events_source.send(value=tick_record(watermark), partition=partition)

        app.timer(settings.tick_interval_seconds, on_leader=True)(tick)

    def live_snapshot() -> LiveSnapshot:
        snapshot = LiveSnapshot()
        now_ms = time.time() * 1000
        for engine in list(sessions.engines.values()):
            for (funnel_index, stage_index), count in engine.open_sessions.items():
                funnel = funnels[funnel_index]
                key = (funnel.name, funnel.stages[stage_index].name)
                snapshot.open_sessions[key] = snapshot.open_sessions.get(key, 0) + count
            if engine.watermark_ms > -(2**61):
                snapshot.watermark_lag_seconds[engine.partition] = (
                    now_ms - engine.watermark_ms
                ) / 1000
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
                generate_latest(active_registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

    app.page("/metrics")(MetricsView)

    view = FunnelView()

    async def follow_windows() -> None:
        await tail_windows(settings, view, asyncio.Event())  # cancelled when the worker stops

    app.task(follow_windows)

    class FunnelPage(View):
        async def get(self, request: Request) -> Response:
            return self.json(view.summary())

    app.page("/funnel")(FunnelPage)
    return StreamerApp(
        faust=app,
        settings=settings,
        metrics=metrics,
        ingest=ingest,
        sessions=sessions,
        merger=merger,
        detector=detector,
        notifier=notifier_stage,
        funnels=funnels,
    )
