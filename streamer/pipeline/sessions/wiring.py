"""The sessions stage wired into a Faust app: source topics, outputs, the ``funnel-state``
table, the batching agent, rebalance callbacks and the 1 s timer that keeps time without input."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from streamer.decode import DecodeLimits
from streamer.decoders import ContractDecoder, EventDecoder, needed_fields
from streamer.funnel.definition import FunnelDefinition
from streamer.kafka_io import offset_at
from streamer.metrics import Metrics
from streamer.pipeline.batches import current_messages
from streamer.pipeline.input_order import source_reader
from streamer.pipeline.messages import (
    DLQ_MAX_MESSAGE_BYTES,
    PartitionSendFn,
)
from streamer.pipeline.sessions.stage import SessionsStage
from streamer.pipeline.tables import confirmed_table, in_partition, stopping_the_worker_on
from streamer.pipeline.timers import Beside, consumer_offsets, install_timer
from streamer.pipeline.topics import dead_letter_topic, record_topic, source_topic
from streamer.pipeline.units import (
    UNIT_SOURCE,
    Headers,
    UnitForwarder,
    session_funnels,
    unit_retention_ms,
    user_funnels,
)
from streamer.settings import Settings

__all__ = ["install", "install_units"]

log = logging.getLogger(__name__)


def install(
    app: Any,
    settings: Settings,
    metrics: Metrics,
    funnels: tuple[FunnelDefinition, ...],
    decoder: EventDecoder | None = None,
) -> SessionsStage:
    """Wire the sessions stage into ``app``: source topics, outputs, state table, agent,
    rebalance callbacks, and the timer that marks idle inputs and publishes without input
    (``decoder``: the worker's, the built-in contract's if None). It counts the session
    funnels; with user funnels, it also forwards what it releases to their unit tasks
    (:func:`install_units`)."""
    sources = (settings.clickstream_topic, settings.checkout_topic)
    topics: tuple[str, ...]
    rekeyed_from: tuple[str, ...]
    if settings.source_keyed_by_session:
        topics, rekeyed_from = sources, ()
        source = source_topic(app, *topics)
    else:  # the re-key stage (streamer.pipeline.rekey) forwards every event to one topic
        topics, rekeyed_from = (settings.rekeyed_topic,), sources
        source = source_topic(app, *topics, partitions=settings.topic_partitions)
    stage = _build_stage(
        app,
        settings,
        metrics,
        session_funnels(funnels),
        topics,
        rekeyed_from,
        # Every funnel's fields are kept: user funnels read them after the hop.
        decoder or ContractDecoder(DecodeLimits.of(settings), needed_fields(funnels)),
        units=_unit_forwarder(app, settings) if user_funnels(funnels) else None,
    )
    _install_stage(app, settings, stage, source, topics, metrics, "sessions")
    return stage


def install_units(
    app: Any, settings: Settings, metrics: Metrics, funnels: tuple[FunnelDefinition, ...]
) -> SessionsStage:
    """Wire the unit tasks of user funnels (``streamer.pipeline.units``): the same stage on
    ``units_topic``, keyed by unit, its fronts the session tasks' watermarks, its state in
    the ``unit-state`` table, reporting to the merger as partitions after the session
    tasks'."""
    topics = (settings.units_topic,)
    source = source_topic(app, *topics, partitions=settings.topic_partitions)
    stage = _build_stage(
        app,
        settings,
        metrics,
        user_funnels(funnels),
        topics,
        (UNIT_SOURCE,),
        None,
        table_name="unit-state",
        reports_as=settings.topic_partitions,
        units_on_disk=settings.data_dir / "units",
        retention_ms=unit_retention_ms(round(settings.session_retention_seconds * 1000), funnels),
    )
    _install_stage(app, settings, stage, source, topics, metrics, "units")
    return stage


def _unit_forwarder(app: Any, settings: Settings) -> UnitForwarder:
    units = record_topic(app, settings.units_topic, partitions=settings.topic_partitions)

    async def send(key: bytes | None, value: bytes, partition: int | None, headers: Headers) -> Any:
        return await units.send(key=key, value=value, partition=partition, headers=headers)

    return UnitForwarder(send=send, partitions=settings.topic_partitions)


def _install_stage(
    app: Any,
    settings: Settings,
    stage: SessionsStage,
    source: Any,
    topics: tuple[str, ...],
    metrics: Metrics,
    name: str,
) -> None:
    app.before_stop.append(stage.close)
    _install_agent(app, source, stage, metrics, name)
    _install_rebalance_callbacks(app, stage, topics)
    _install_timer(app, settings, stage, topics, name)


def _build_stage(
    app: Any,
    settings: Settings,
    metrics: Metrics,
    funnels: tuple[FunnelDefinition, ...],
    topics: tuple[str, ...],
    rekeyed_from: tuple[str, ...],
    decoder: EventDecoder | None,
    *,
    units: UnitForwarder | None = None,
    table_name: str = "funnel-state",
    reports_as: int = 0,
    retention_ms: int | None = None,
    units_on_disk: Path | None = None,
) -> SessionsStage:
    """The stage with its outputs, its state table and its direct reads of the input."""
    dlq = dead_letter_topic(app, settings)
    partials = record_topic(app, settings.partials_topic, partitions=1)
    abandonments = record_topic(app, settings.abandonments_topic)
    # Changelogged with as many partitions as the sources (Faust requires it); written only
    # while processing a message of the same partition (see SessionsStage.checkpoint).
    table = confirmed_table(
        app,
        table_name,
        partitions=settings.topic_partitions,
        # A session's own delta record can be larger than the broker's 1 MiB default.
        extra_topic_configs={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)},
    )

    def sender(topic: Any) -> PartitionSendFn:
        async def send(key: bytes | None, value: bytes, partition: int | None) -> Any:
            return await topic.send(key=key, value=value, partition=partition)

        return send

    async def send_dead_letter(key: bytes | None, value: bytes) -> Any:
        return await dlq.send(key=key, value=value)

    async def flush_producer() -> None:
        await app.producer.flush()
        await table.confirm_sent()

    def partition_scope(partition: int) -> AbstractContextManager[None]:
        # Faust routes a table write to the changelog partition (and RocksDB store) of the
        # event being processed; a checkpoint names its partition itself, so that it can
        # also run from the timer.
        return in_partition(topics[0], partition)

    async def find_input_offset(topic: str, partition: int, at_ms: int) -> int:
        return await offset_at(settings, topic, partition, at_ms)

    return SessionsStage(
        funnels=funnels,
        topics=topics,
        table=table,
        metrics=metrics,
        limits=DecodeLimits.of(settings),
        allowed_lateness_ms=round(settings.allowed_lateness_seconds * 1000),
        retention_ms=(
            round(settings.session_retention_seconds * 1000)
            if retention_ms is None
            else retention_ms
        ),
        checkpoint_interval_s=settings.checkpoint_interval_seconds,
        send_partial=sender(partials),
        send_dead_letter=send_dead_letter,
        send_abandonment=sender(abandonments),
        flush_producer=flush_producer,
        # A catch-up of added funnels reads hours of input: a generous bound.
        read_range=source_reader(settings, timeout_s=600.0),
        find_offset=find_input_offset,
        partition_scope=partition_scope,
        rekeyed_from=rekeyed_from,
        decoder=decoder,
        units=units,
        reports_as=reports_as,
        units_on_disk=units_on_disk,
        unit_cache=settings.unit_cache,
    )


def _install_agent(
    app: Any, source: Any, stage: SessionsStage, metrics: Metrics, name: str
) -> None:
    async def sessions_agent(stream: Any) -> None:
        # A produce or state write the broker refused stops the worker, having acked nothing
        # it could not write.
        async with stopping_the_worker_on(app, "sessions stage failed", Exception):
            # In batches (decision 0006): Faust's per-message hand-over costs about as much
            # as processing a message.
            async for message, ack in current_messages(app, stream, metrics):
                await stage.process(message, ack)

    app.agent(source, name=name)(sessions_agent)


def _install_rebalance_callbacks(app: Any, stage: SessionsStage, topics: tuple[str, ...]) -> None:
    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        stage.assign({tp.partition for tp in assigned if tp.topic in topics})

    app.on_partitions_assigned.connect(on_assigned)

    async def on_revoked(sender: Any, revoked: set[Any], **kwargs: Any) -> None:
        await stage.revoke({tp.partition for tp in revoked if tp.topic in topics})

    app.on_partitions_revoked.connect(on_revoked)


def _install_timer(
    app: Any, settings: Settings, stage: SessionsStage, topics: tuple[str, ...], name: str
) -> None:
    """Every second: time moves without input (idle inputs, stalls repaired, progress
    published, quiet partitions checkpointed)."""

    # What waits for the broker (the log end offsets: a request; the publish: behind every
    # changelog and output record of the agent on a backlog, ~2 s measured) runs beside the
    # ticks, one at a time: the tick itself never waits, so ticks come every second.
    keeping = Beside(f"{name}.keep_time")

    async def keep_time() -> None:
        stage.raise_failed_write_out()  # stops the worker even when no message comes to raise it
        keeping.raise_failed()
        if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
            return
        assigned = [tp for tp in app.consumer.assignment() if tp.topic in topics]
        for partition in sorted({tp.partition for tp in assigned} - set(stage.runtimes)):
            stage.ensure(partition)  # a partition with no input yet still reports progress
        if not keeping.busy:  # else a later tick does it
            keeping.start(lambda: _keep_time_beside(app, settings, stage, assigned))
        stage.checkpoint_due()

    install_timer(app, 1.0, keep_time, f"{name}.keep_time")


async def _keep_time_beside(
    app: Any, settings: Settings, stage: SessionsStage, assigned: list[Any]
) -> None:
    """The part of a tick that waits for the broker: added funnels caught up, stalls
    repaired, idle inputs marked, progress published."""
    await stage.catch_up_added_funnels()
    offsets = await consumer_offsets(app, assigned)
    if offsets is None:
        return
    highwaters, positions = offsets
    await stage.repair_stalls(positions)
    await stage.mark_idle(highwaters, settings.idle_timeout_seconds)
    await stage.publish(stage.publish_due(highwaters))
