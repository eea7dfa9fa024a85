"""create_app(settings): the Faust app, composed of stages that wire themselves.

No module-global app: every worker, test and benchmark builds its own from settings. Each
stage module (``streamer/pipeline/``) declares its own topics, tables and agents in an
``install`` function; this module only chooses the Faust settings and puts them together.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry, disable_created_metrics

from streamer import faust_consumer
from streamer.decode import DecodeLimits
from streamer.decoders import (
    EventDecoder,
    catalogue_of,
    event_decoder,
    needed_fields,
    tracking_plan,
)
from streamer.errors import ConfigError, PlanError
from streamer.funnel.catalogue import EventCatalogue
from streamer.funnel.definition import FunnelDefinition, FunnelDefinitionError, load_funnels
from streamer.kafka_access import AccessNeeds
from streamer.kafka_io import client_options
from streamer.metrics import Metrics
from streamer.notify import Notifier, SlackNotifier
from streamer.notify.routes import AlertmanagerNotifier, FanOutNotifier, WebhookNotifier
from streamer.pipeline import detector, merger, notifier, rekey, sessions, web
from streamer.pipeline.messages import DLQ_MAX_MESSAGE_BYTES
from streamer.pipeline.timers import install_frozen_sweep, install_loop_lag_monitor
from streamer.pipeline.units import user_funnels
from streamer.settings import Settings

__all__ = [
    "DLQ_MAX_MESSAGE_BYTES",
    "StreamerApp",
    "create_app",
    "faust_broker_options",
    "internal_topics",
    "load_configured_funnels",
    "topic_plan",
    "worker_access",
    "worker_events",
]


log = logging.getLogger(__name__)


# aiokafka keeps one batch per partition and one request in flight per broker: a send to a
# partition whose batch is full waits for that request. At Faust's 16 KiB (~40 events) the
# re-key stage waited on nearly every send on a backlog.
PRODUCER_BATCH_BYTES = 1024 * 1024
CRASH_STOP_DEADLINE_S = 20.0  # after a crash, exit 1 at the latest this long into the stop
REKEY_POSITIONS_SEGMENT_MS = 10 * 60 * 1000


def _exit_after_crash_stop_hung() -> None:
    log.error(
        "the stop after a crash did not finish in %.0f s: exiting with code 1 now",
        CRASH_STOP_DEADLINE_S,
    )
    logging.shutdown()
    os._exit(1)


class _FaustApp(faust_consumer.App):
    """faust.App on streamer's consumer (``streamer.faust_consumer.App``) plus one hook,
    ``before_stop``: what must run as a polite stop begins.
    Faust's own ``on_stop`` first stops the consumer and the tables, then the producer; a
    stage's last checkpoint needs all three, so it runs before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_stop: list[Callable[[], Awaitable[None]]] = []

    async def on_stop(self) -> None:
        if self.crashed:  # the producer may be gone already: the hooks do not run
            log.warning(
                "stopping after a crash (%r): no last checkpoint; the next start resumes "
                "from the last one written",
                self.crash_reason,
            )
            # Faust's stop after a crash can hang (seen once in CI: its consumer's stop never
            # returned), and a worker that never exits is never restarted by its supervisor.
            # Nothing is written after a crash, so ending the process loses nothing.
            deadline = threading.Timer(CRASH_STOP_DEADLINE_S, _exit_after_crash_stop_hung)
            deadline.daemon = True
            deadline.start()
        else:
            for hook in self.before_stop:
                try:
                    await hook()
                except Exception:  # one stage's failure must not keep the others from stopping
                    log.exception("stopping: %r failed", hook)
        await super().on_stop()


@dataclass(frozen=True)
class StreamerApp:
    """The Faust app plus the objects tests and the CLI want to reach."""

    faust: faust.App
    settings: Settings
    metrics: Metrics
    sessions: sessions.SessionsStage
    merger: merger.WindowMerger
    detector: detector.DetectorStage
    notifier: notifier.NotifierStage
    funnels: tuple[FunnelDefinition, ...]


def load_configured_funnels(
    settings: Settings, catalogue: EventCatalogue | None = None
) -> tuple[FunnelDefinition, ...]:
    """The configured funnel files, checked against the events there are (``catalogue``: the
    tracking plan's or the built-in contract's, from :func:`worker_events`)."""
    try:
        funnels = load_funnels(settings.funnels, known_events=catalogue)
    except FunnelDefinitionError as exc:
        raise ConfigError(f"funnel definition: {exc}") from None
    if not funnels:
        raise ConfigError(f"no funnel definitions found in {[str(p) for p in settings.funnels]}")
    return funnels


def worker_events(settings: Settings) -> tuple[tuple[FunnelDefinition, ...], EventDecoder]:
    """The funnels and the decoder a worker runs with, both checked before it connects to
    Kafka: the tracking plan compiles, and every funnel names only events, properties and
    context fields it declares, with filters of the declared types."""
    try:
        plan = tracking_plan(settings)
    except PlanError as exc:
        raise ConfigError(f"tracking plan: {exc}") from None
    funnels = load_configured_funnels(settings, catalogue_of(plan))
    if plan is not None:
        log.info("tracking plan: %s", plan.loaded.summary())
    return funnels, event_decoder(plan, DecodeLimits.of(settings), needed_fields(funnels))


def topic_plan(
    settings: Settings, funnels: tuple[FunnelDefinition, ...] = ()
) -> dict[str, tuple[int, dict[str, str]]]:
    """Every topic streamer reads or writes: name -> (partitions, topic config); ``funnels``:
    the worker's (user funnels need their units topic)."""
    per_session = settings.topic_partitions
    return {
        settings.clickstream_topic: (per_session, {}),
        settings.checkout_topic: (per_session, {}),
        settings.dlq_topic: (per_session, {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}),
        # A few records per window: one partition lets one merger see every partial in order.
        settings.partials_topic: (1, {}),
        settings.windows_topic: (1, {}),
        settings.abandonments_topic: (per_session, {}),
        settings.alerts_topic: (1, {}),
        settings.failed_alerts_topic: (1, {}),
        settings.baselines_topic: (1, {"cleanup.policy": "compact"}),
        **({} if settings.source_keyed_by_session else _rekey_topics(settings)),
        **({settings.units_topic: (per_session, {})} if user_funnels(funnels) else {}),
    }


def _rekey_topics(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    return {
        settings.rekeyed_topic: (settings.topic_partitions, {}),
        # A record per source partition and second: compacted, its active segment rolled
        # often, so that reading it at an assignment stays short.
        settings.rekey_positions_topic: (
            1,
            {"cleanup.policy": "compact", "segment.ms": str(REKEY_POSITIONS_SEGMENT_MS)},
        ),
    }


def internal_topics(app: StreamerApp) -> tuple[str, ...]:
    """The topics of the worker's own, all named ``{app_id}-...``: one changelog per table,
    the leader assignor's topic, and on the re-key path its record of positions."""
    changelogs = sorted(
        table.changelog_topic.get_topic_name() for table in app.faust.tables.values()
    )
    settings = app.settings
    positions = () if settings.source_keyed_by_session else (settings.rekey_positions_topic,)
    return (*changelogs, f"{settings.app_id}-__assignor-__leader", *positions)


def worker_access(app: StreamerApp) -> AccessNeeds:
    """The ACLs a worker needs (the README's "Secure Kafka" table says the same): the topics it
    reads and writes, Faust's internal topics, its consumer group. No transactional id: the
    worker runs at-least-once with idempotent outputs."""
    settings = app.settings
    sources = (settings.clickstream_topic, settings.checkout_topic)
    rekeyed: tuple[str, ...] = (
        () if settings.source_keyed_by_session else (settings.rekeyed_topic,)
    ) + ((settings.units_topic,) if user_funnels(app.funnels) else ())
    internal = internal_topics(app)
    return AccessNeeds(
        # windows: the /funnel page tails it (streamer.query.tail_windows).
        read=(*sources, *rekeyed, settings.partials_topic, settings.windows_topic,
              settings.alerts_topic, settings.baselines_topic, *internal),
        write=(*rekeyed, settings.dlq_topic, settings.partials_topic, settings.windows_topic,
               settings.abandonments_topic, settings.alerts_topic, settings.failed_alerts_topic,
               *internal),
        create=internal,
        groups=(settings.app_id,),
    )  # fmt: skip


def slack_notifier(settings: Settings) -> SlackNotifier:
    """The Slack notifier the settings describe (webhooks, timeout, retries, pace)."""
    return SlackNotifier(
        webhook_url=settings.slack_webhook_url,
        page_webhook_url=settings.slack_page_webhook_url,
        timeout=settings.slack_timeout_seconds,
        max_attempts=settings.slack_max_attempts,
        min_interval=settings.slack_min_interval_seconds,
    )


def alert_notifier(settings: Settings) -> FanOutNotifier:
    """Every alert route the settings configure: Slack (always: it says "no route" when it has
    no webhook), Alertmanager's API, a plain webhook."""
    routes: list[tuple[str, Notifier]] = [("slack", slack_notifier(settings))]
    if settings.alertmanager_url is not None:
        routes.append(
            (
                "alertmanager",
                AlertmanagerNotifier(settings.alertmanager_url, settings.slack_timeout_seconds),
            )
        )
    if settings.alert_webhook_url is not None:
        routes.append(
            ("webhook", WebhookNotifier(settings.alert_webhook_url, settings.slack_timeout_seconds))
        )
    return FanOutNotifier(routes)


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Faust's broker and credentials, derived from the options every aiokafka client of
    streamer uses (``kafka_io.client_options``), so that the worker connects as they do."""
    client = client_options(settings)
    options: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in settings.bootstrap_servers.split(",")],
    }
    context = client.get("ssl_context")
    if "sasl_mechanism" in client:
        # Faust picks SASL_SSL when given a context, SASL_PLAINTEXT without one.
        options["broker_credentials"] = faust.SASLCredentials(
            username=client["sasl_plain_username"],
            password=client.get("sasl_plain_password"),
            mechanism=client["sasl_mechanism"],
            ssl_context=context,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def create_app(
    settings: Settings,
    registry: CollectorRegistry | None = None,
    notifier_override: Notifier | None = None,
) -> StreamerApp:
    # `_created` series double the scrape size and no dashboard of ours reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
    active_registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    funnels, decoder = worker_events(settings)
    metrics = Metrics.create(
        active_registry,
        source_topics=(settings.clickstream_topic, settings.checkout_topic),
        funnels=funnels,
        event_names=sorted(decoder.event_names),
    )
    app = _FaustApp(
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
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        # Static membership: a restarted worker gets its partitions back without waiting
        # for the group to notice it left.
        consumer_group_instance_id=settings.group_instance_id,
        broker_session_timeout=settings.group_session_timeout_seconds,
        broker_heartbeat_interval=min(3.0, settings.group_session_timeout_seconds / 3),
        # The sessions stage acks its input only after a checkpoint; a rebalance must not
        # wait for those acks (the next owner resumes from the checkpoint instead).
        stream_wait_empty=False,
        stream_buffer_maxsize=settings.stream_buffer_messages,
    )
    if not settings.source_keyed_by_session:
        rekey.install(app, settings, metrics, decoder)
    stage = sessions.install(app, settings, metrics, funnels, decoder)
    stages = [stage]
    if user_funnels(funnels):
        stages.append(sessions.install_units(app, settings, metrics, funnels))
    judge = detector.install(app, settings, metrics, funnels)
    window_merger = merger.install(app, settings, metrics, funnels, detector=judge)
    delivery = notifier.install(
        app,
        settings,
        metrics,
        notifier_override or alert_notifier(settings),
    )
    web.install(app, settings, active_registry, metrics, stages, judge)
    install_loop_lag_monitor(app, metrics.event_loop_lag)
    install_frozen_sweep(app)
    return StreamerApp(
        faust=app,
        settings=settings,
        metrics=metrics,
        sessions=stage,
        merger=window_merger,
        detector=judge,
        notifier=delivery,
        funnels=funnels,
    )
