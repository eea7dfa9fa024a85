"""create_app(settings): the Faust app with its topics, agents and web pages wired together.

No module-global app: every worker, test and benchmark builds its own from settings.
"""

from __future__ import annotations

import logging
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
from streamer.metrics import Metrics
from streamer.pipeline.ingest import IngestStage, SourceMessage, limits_from
from streamer.settings import Settings

__all__ = ["DLQ_MAX_MESSAGE_BYTES", "StreamerApp", "create_app", "faust_broker_options"]

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


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> StreamerApp:
    # `_created` series double the scrape size and no dashboard of ours reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    active_registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    source_topics = (settings.clickstream_topic, settings.checkout_topic)
    metrics = Metrics.create(active_registry, source_topics=source_topics)

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

    source = app.topic(*source_topics, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")  # fmt: skip
    events_topic = app.topic(settings.events_topic, key_serializer="raw",
                             value_serializer="raw")  # fmt: skip
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
            await ingest.process(
                SourceMessage(
                    topic=raw.topic,
                    partition=raw.partition,
                    offset=raw.offset,
                    timestamp_ms=round(raw.timestamp * 1000) if raw.timestamp else None,
                    key=raw.key,
                    value=raw.value,
                )
            )

    app.agent(source, name="ingest")(ingest_agent)

    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # CONTENT_TYPE_LATEST carries a charset, which aiohttp refuses in content_type=.
            return self.bytes(
                generate_latest(active_registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

    app.page("/metrics")(MetricsView)
    return StreamerApp(faust=app, settings=settings, metrics=metrics, ingest=ingest)
