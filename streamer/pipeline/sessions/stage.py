"""The sessions stage itself: source messages -> events -> tasks -> partials and abandonments.

One hop: producers key clickstream and checkout by session id on co-partitioned topics, so
partition N of both is one *task* (:class:`streamer.funnel.task.Task`) processed in place.

Exactly-once effects with at-least-once Kafka: events are read without acks
(``stream.noack()``) and acked only once a checkpoint stored the state that reflects them (the
commit recipe: :mod:`streamer.pipeline.sessions.committer`). After a crash Faust re-delivers
from the committed offsets and the task skips every message below the offsets in its checkpoint
(:mod:`streamer.pipeline.input_order`); outputs carry deterministic ids or replace earlier ones.
Checkpoints come every ``checkpoint_interval_seconds`` from the agent, or from the 1 s timer for
a quiet partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streamer.decode import DecodeLimits, Rejection
from streamer.decoders import ContractDecoder, DecodedEvent, EventDecoder, Ignored, needed_fields
from streamer.events import ReasonCode
from streamer.formatting import watermark_text
from streamer.funnel.clock import InputClock
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import NEVER, CompiledFunnel, StoredEvent
from streamer.funnel.task import AbandonmentNotice, Offer, UnitEvent
from streamer.metrics import OUTCOMES, Metrics, UnplannedCounter
from streamer.pipeline.forwarded import decode_forwarded
from streamer.pipeline.input_order import STALL_REPAIR_S, InputPositions
from streamer.pipeline.messages import (
    REKEY_DECODED_HEADER,
    REKEY_FRONT,
    REKEY_KEY_HEADER,
    REKEY_KIND_HEADER,
    REKEY_SOURCE_HEADER,
    REKEY_TIMESTAMP_HEADER,
    UNIT_HEADER,
    PartitionSendFn,
    SendFn,
    SourceMessage,
    send_rejected,
)
from streamer.pipeline.sessions.catch_up import (
    CatchUpInput,
    rebuild_added_funnels,
    start_announcements,
)
from streamer.pipeline.sessions.committer import Committer
from streamer.pipeline.sessions.records import abandonment_record, lifecycle_record
from streamer.pipeline.sessions.runtime import TaskRuntime, restore_runtime
from streamer.pipeline.sessions.stepping import advance_at_once, advance_in_steps
from streamer.pipeline.sessions.unit_store import UnitStore
from streamer.pipeline.tables import Deliveries
from streamer.pipeline.units import UnitForwarder, unit_user

__all__ = ["FindOffset", "ReadRange", "SessionsStage"]

log = logging.getLogger(__name__)


# Reads ``topic[partition]`` offsets [start, end) outside the consumer group: returns the log
# start offset and the messages found.
ReadRange = Callable[[str, int, int, int], Awaitable[tuple[int, list[SourceMessage]]]]
# (topic, partition, broker time ms) -> the first offset written at or after it (else log end)
FindOffset = Callable[[str, int, int], Awaitable[int]]


async def _cannot_read(
    topic: str, partition: int, start: int, end: int
) -> tuple[int, list[SourceMessage]]:
    raise RuntimeError("this stage cannot read its input directly")


async def _cannot_find(topic: str, partition: int, at_ms: int) -> int:
    raise RuntimeError("this stage cannot look up offsets of its input")


def _any_partition(partition: int) -> AbstractContextManager[None]:
    return nullcontext()


class _CheckpointPositions:
    """Input positions kept in each task's checkpoint (``TaskRuntime.offsets``, stored in the
    partition's meta record with the state they reflect)."""

    def __init__(self, runtimes: dict[int, TaskRuntime]) -> None:
        self._runtimes = runtimes

    def get(self, topic: str, partition: int) -> int | None:
        runtime = self._runtimes.get(partition)
        return None if runtime is None else runtime.offsets.get(topic)

    def set(self, topic: str, partition: int, offset: int) -> None:
        self._runtimes[partition].offsets[topic] = offset


class SessionsStage:
    def __init__(
        self,
        *,
        funnels: tuple[FunnelDefinition, ...],
        topics: tuple[str, ...],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        limits: DecodeLimits,
        allowed_lateness_ms: int,
        retention_ms: int,
        checkpoint_interval_s: float,
        send_partial: PartitionSendFn,
        send_dead_letter: SendFn,
        send_abandonment: PartitionSendFn,
        flush_producer: Callable[[], Awaitable[None]],
        read_range: ReadRange = _cannot_read,
        find_offset: FindOffset = _cannot_find,
        partition_scope: Callable[[int], AbstractContextManager[None]] = _any_partition,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rekeyed_from: tuple[str, ...] = (),
        decoder: EventDecoder | None = None,
        units: UnitForwarder | None = None,
        reports_as: int = 0,
        units_on_disk: Path | None = None,
        unit_cache: int = 0,
    ) -> None:
        self.definitions = funnels
        self.funnels = tuple(CompiledFunnel(f) for f in funnels)
        self.topics = topics
        self._table = table
        self._metrics = metrics
        self._limits = limits
        self._lateness_ms = allowed_lateness_ms
        self._retention_ms = retention_ms
        self._interval = checkpoint_interval_s
        self._send_partial = send_partial
        self._send_dead_letter = send_dead_letter
        self._send_abandonment = send_abandonment
        self._read_range = read_range
        self._find_offset = find_offset
        self._clock = clock
        # The built-in contract unless the worker was given a tracking plan's decoder.
        self._decoder = decoder or ContractDecoder(limits, needed_fields(funnels))
        # Re-key path: ``topics`` is the re-keyed topic, events come from ``rekeyed_from`` and
        # the clock's inputs are their partitions, learnt from the in-band front markers.
        self.rekeyed_from = rekeyed_from
        # User funnels (streamer.pipeline.units): a session stage forwards what its tasks
        # release to the unit tasks (``units``); the unit stage's tasks report to the merger
        # as partitions ``reports_as + n``, apart from the session tasks' ``n``.
        self._units = units
        self._reports_as = reports_as
        # Unit tasks: each task's units in a store of its own under this folder, at most
        # ``unit_cache`` of them in memory (docs/decisions/0009-open-units-on-disk.md).
        self._units_on_disk = units_on_disk
        self._unit_cache = unit_cache
        self.inputs = InputClock(() if rekeyed_from else topics, allowed_lateness_ms)
        self.runtimes: dict[int, TaskRuntime] = {}
        self.assigned: set[int] | None = None  # None: not told yet (tests drive it directly)
        self._in_flight = Deliveries()
        self._publish_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        # Checkpoints (the commit recipe: streamer.pipeline.sessions.committer), and whether
        # the stage is sealed (``committer.sealed``: nothing more is applied or stored).
        self.committer = Committer(
            runtimes=self.runtimes,
            table=table,
            funnel_names=[funnel.name for funnel in funnels],
            fronts_of=self.inputs.fronts_of,
            publish=self.publish,
            flush_producer=flush_producer,
            partition_scope=partition_scope,
            metrics=metrics,
            interval_s=checkpoint_interval_s,
            apply_lock=self._apply_lock,
        )
        # Input positions (rules in streamer.pipeline.input_order): the next offset of each
        # input is in the task's checkpoint; holes Faust skipped are read and applied first.
        self._positions: InputPositions[SourceMessage] = InputPositions(
            who="sessions stage",
            store=_CheckpointPositions(self.runtimes),
            read_range=read_range,
            apply_hole=lambda message: self._apply_one(self.runtimes[message.partition], message),
            metrics=metrics,
        )
        self._counters = {
            (topic, outcome): metrics.events.labels(topic=topic, outcome=outcome)
            for topic in (*topics, *rekeyed_from)
            for outcome in OUTCOMES
        }
        self._bytes = {topic: metrics.event_bytes.labels(topic=topic) for topic in topics}
        self._replayed = {topic: metrics.replayed.labels(topic=topic) for topic in topics}
        self._tallies: dict[Any, float] = {}
        # Accepted events per (input, event type): one tally per event, spread over their
        # counters (the input's, the type's, its lifecycle stage's) when the metrics flush.
        self._accepted: dict[tuple[str, str], int] = {}
        # Per event type: its own counter and its lifecycle stage's (bound once, not per event).
        # The unit tasks count none: the session tasks counted each event when they read it.
        self._type_counters = (
            {}
            if reports_as
            else {
                event_type: [metrics.events_by_type.labels(event_type=event_type)]
                + (
                    [metrics.stage_events.labels(stage=stage)]
                    if (stage := self._decoder.stage_of(event_type)) is not None
                    else []
                )
                for event_type in self._decoder.event_names
            }
        )
        self._unplanned = UnplannedCounter(metrics)

    # --- assignment ----------------------------------------------------------------------
    @property
    def reports_as(self) -> int:
        """The partition number task 0 reports as (to the merger and in the gauges): 0 for
        the session tasks, ``topic_partitions`` for the unit tasks."""
        return self._reports_as

    def assign(self, partitions: set[int]) -> None:
        """A new assignment: forget every other task (its unacked input is re-read by the next
        owner, which resumes from the same checkpoint) and refuse messages of partitions not
        ours any more (Faust may still deliver some it fetched before the rebalance)."""
        self.assigned = set(partitions)
        for partition in set(self.runtimes) - self.assigned:
            self._release(partition)

    async def revoke(self, partitions: set[int]) -> None:
        """Partitions are being taken away: apply nothing more of them, let the write-outs
        under way finish (the next owner must find our last checkpoint whole), release them."""
        if self.assigned is not None:
            self.assigned -= partitions
        await self.drain_write_outs()
        for partition in partitions:
            self._release(partition)

    def _open_store(self, partition: int) -> UnitStore | None:
        """Task ``partition``'s units on disk, as an earlier owner on this disk left them (the
        restore keeps them if the checkpoint log vouches for them, else rebuilds them)."""
        if self._units_on_disk is None:
            return None
        path = self._units_on_disk / str(partition)
        log.info(
            "partition %d: units on disk in %s, at most %d in memory (STREAMER_UNIT_CACHE)",
            partition,
            path,
            self._unit_cache,
        )
        return UnitStore(path, cache_units=self._unit_cache)

    def _release(self, partition: int) -> None:
        runtime = self.runtimes.pop(partition, None)
        if runtime is not None:
            self.inputs.revoke(partition)
            if runtime.store is not None:
                runtime.store.close()
            log.info("partition %d: released", partition)

    def ensure(self, partition: int) -> None:
        """Restore task ``partition`` now (after an assignment, before its first message)."""
        self._runtime(partition)

    def _runtime(self, partition: int) -> TaskRuntime:
        runtime = self.runtimes.get(partition)
        if runtime is None:
            runtime = self._restore(partition)
            self.runtimes[partition] = runtime
        return runtime

    def _restore(self, partition: int) -> TaskRuntime:
        runtime, meta = restore_runtime(
            self._table,
            partition,
            self.funnels,
            retention_ms=self._retention_ms,
            topics=self.topics,
            forwards_units=self._units is not None,
            store=self._open_store(partition),
        )
        if runtime.catch_up and self._reports_as:
            # A unit task's input holds released events, not the source a catch-up reads:
            # user funnels added since its checkpoint start at its watermark.
            log.warning(
                "unit task %d: user funnel(s) %s added since the checkpoint start at its "
                "watermark %s, not caught up: a unit's sessions are on every input partition "
                "and nothing rebuilds them, so attempts begun before are not counted "
                "(docs/replay.md#adding-a-user-funnel)",
                partition,
                ", ".join(self.funnels[i].definition.name for i in runtime.catch_up),
                watermark_text(runtime.task.watermark_ms),
            )
            self._announce_start(runtime, partition, runtime.catch_up)
            runtime.catch_up = ()
        if self._units is not None and meta and "forwarded" not in meta:
            log.warning(
                "partition %d: forwards to the unit tasks from its watermark %s on (the first "
                "user funnel since the checkpoint): events it held at the checkpoint and its "
                "sessions under way have no user stored, so they count as anonymous until an "
                "event of the session carrying a user id is released "
                "(docs/replay.md#adding-a-user-funnel)",
                partition,
                watermark_text(runtime.task.watermark_ms),
            )
        if not meta:
            # No checkpoint (a first start, or a partition that never had input): its counts
            # of every funnel are whole from the start. Said to the merger, which waits for
            # every partition before it starts a funnel new to it (see ``_announce_start``).
            self._announce_start(runtime, partition, tuple(range(len(self.funnels))))
        self.inputs.assign(partition, {str(k): int(v) for k, v in meta.get("fronts", {}).items()})
        return runtime

    # --- per message ---------------------------------------------------------------------
    async def process(self, message: SourceMessage, ack: Callable[[], Any]) -> Offer | None:
        """Handle one source message. Nothing a producer sends can raise out of here; a
        failing produce does (the worker must stop rather than ack what it could not write)."""
        if self.committer.sealed:
            return None  # stopping: not applied, not acked, nothing sent (the next start reads it)
        if self.assigned is not None and message.partition not in self.assigned:
            # Fetched before a rebalance took the partition away: its new owner reads it
            # again from the committed offset. Not acked, not applied, nothing published.
            self._metrics.revoked_messages.inc()
            return None
        async with self._apply_lock:  # the timer's stall repair applies messages too
            try:
                runtime = self._runtime(message.partition)
                if runtime.catch_up:
                    await self._catch_up(runtime, message.partition)
                topic = message.topic
                if not await self._positions.admit(topic, message.partition, message):
                    ack()  # applied before the last checkpoint: re-delivered after a restart
                    self._tally(self._replayed[topic])
                    return None
                outcome = await self._apply_one(runtime, message)
                runtime.unacked.append(ack)
                if self.committer.due(runtime):
                    self.committer.start(message.partition)
                return outcome
            except Exception:  # (not a cancellation: Faust cancels agents on a rebalance)
                self.committer.sealed = True  # maybe half applied: see ``Committer.sealed``
                raise

    async def _apply_one(self, runtime: TaskRuntime, message: SourceMessage) -> Offer | None:
        topic = message.topic
        runtime.last_read[topic] = time.monotonic()
        self._tally(self._bytes[topic], len(message.value) if message.value is not None else 0)
        outcome: Offer | None = None
        try:
            if self.rekeyed_from:
                outcome = await self._apply_rekeyed(runtime, message)
            else:
                outcome = await self._apply(runtime, message, message.topic)
        except Exception as exc:  # a bug must not stop the worker or lose the message
            log.exception(
                "sessions stage failed on %s[%d]@%d", topic, message.partition, message.offset
            )
            await self._dead_letter(
                message, Rejection(ReasonCode.PROCESSING_ERROR, f"internal error: {exc!r}")
            )
        # Only now does a checkpoint count this message as applied (a checkpoint taken by the
        # timer meanwhile leaves it to the next one).
        runtime.offsets[topic] = message.offset + 1
        runtime.unstored += 1
        return outcome

    async def catch_up_added_funnels(self) -> None:
        """Run the catch-up of every task that still has one (the timer calls this: a
        partition with no new input must not wait for a message)."""
        for partition, runtime in sorted(self.runtimes.items()):
            if runtime.catch_up:
                async with self._apply_lock:
                    if self.runtimes.get(partition) is runtime and runtime.catch_up:
                        await self._catch_up(runtime, partition)

    async def _catch_up(self, runtime: TaskRuntime, partition: int) -> None:
        """Funnels added since the checkpoint: rebuild their open sessions and windows from
        the input the checkpoint reflects, as if they had always been here. A separate task
        with only those funnels reads each input from far enough back that every attempt
        still open, and every window not final yet, starts inside it (the conversion window,
        a window and its finality lag, before the watermark), up to the checkpoint's offsets,
        stops at the checkpoint's watermark, and hands its state over."""
        indexes, runtime.catch_up = runtime.catch_up, ()
        try:
            await self._catch_up_now(runtime, partition, indexes)
        except BaseException:  # e.g. the agent cancelled by a rebalance: the next one retries
            runtime.catch_up = indexes
            raise

    async def _catch_up_now(
        self, runtime: TaskRuntime, partition: int, indexes: tuple[int, ...]
    ) -> None:
        if self.rekeyed_from:
            log.warning(
                "partition %d: funnels added on the re-key path start from the next sessions "
                "(open sessions are rebuilt on the one-hop path only)",
                partition,
            )
        elif runtime.task.watermark_ms != NEVER:  # else nothing was released: they see it all
            await rebuild_added_funnels(
                runtime.task,
                indexes,
                CatchUpInput(
                    topics=self.topics,
                    offsets=runtime.offsets,
                    find_offset=self._find_offset,
                    read_range=self._read_range,
                    limits=self._limits,
                    clock=self._clock,
                    decoder=self._decoder,
                ),
                lateness_ms=self._lateness_ms,
                retention_ms=self._retention_ms,
            )
            runtime.compact_next = True
        self._announce_start(runtime, partition, indexes)

    def _announce_start(
        self, runtime: TaskRuntime, partition: int, indexes: tuple[int, ...]
    ) -> None:
        """Tell the merger from which window on this partition the added funnels' counts are
        whole (see :func:`start_announcements`)."""
        runtime.announce += start_announcements(
            self.definitions, indexes, partition, runtime.task.watermark_ms
        )

    async def repair_stalls(self, positions: dict[tuple[str, int], int]) -> None:
        """An input whose group consumer is past what this task applied, with nothing of it
        delivered for ``STALL_REPAIR_S``, is stalled: the offsets in between will never be
        delivered (see :mod:`streamer.pipeline.input_order`) and would hold the watermark
        back for good. They are read directly. (Read twice by chance, a message is skipped as
        already applied.)"""
        now = time.monotonic()
        for (topic, partition), position in sorted(positions.items()):
            runtime = self.runtimes.get(partition)
            if runtime is None or topic not in self.topics:
                continue
            applied = runtime.offsets.get(topic, 0)
            read_at = runtime.last_read.get(topic, runtime.created_at)
            if position <= applied or now - read_at < STALL_REPAIR_S:
                continue
            async with self._apply_lock:
                if self.runtimes.get(partition) is not runtime:
                    continue  # revoked meanwhile
                if await self._positions.repair(topic, partition, position):
                    runtime.last_read[topic] = time.monotonic()

    async def _apply_rekeyed(self, runtime: TaskRuntime, message: SourceMessage) -> Offer | None:
        """A message of the re-keyed topic: a source partition's front, or a forwarded event
        (applied once: a re-key stage restarted mid-way forwards some again)."""
        if message.header(REKEY_KIND_HEADER) == REKEY_FRONT:
            marker = orjson.loads(message.value or b"{}")
            source, partition = str(marker["source"]), message.partition
            self.inputs.add_inputs(str(name) for name in marker["sources"])
            self.inputs.observe(source, partition, int(marker["front"]))
            self.inputs.set_idle(source, partition, bool(marker["idle"]))
            watermark = self.inputs.watermark(partition)
            if watermark is not None and not advance_at_once(runtime.task, watermark):
                await advance_in_steps(runtime.task, watermark, self._holds(partition, runtime))
            return None
        origin = (message.header(REKEY_SOURCE_HEADER) or b"").decode()
        topic, source_partition, source_offset = origin.rsplit("/", 2)
        source = f"{topic}/{source_partition}"
        if int(source_offset) < runtime.source_offsets.get(source, 0):
            self._tally(self._replayed[message.topic])
            return None
        runtime.source_offsets[source] = int(source_offset) + 1
        unit = message.header(UNIT_HEADER)
        if unit is not None:
            return self._apply_unit_event(runtime, message, unit.decode())
        timestamp = message.header(REKEY_TIMESTAMP_HEADER)
        original = SourceMessage(
            topic=topic,
            partition=int(source_partition),
            offset=int(source_offset),
            timestamp_ms=int(timestamp) if timestamp else None,
            key=message.header(REKEY_KEY_HEADER),
            value=message.value,
        )
        decoded = message.header(REKEY_DECODED_HEADER)
        if decoded is not None:  # the re-key stage's decode (absent: an older version's)
            result = decode_forwarded(decoded, self._decoder.fingerprint)
            if isinstance(result, Rejection):
                await self._dead_letter(original, result)
                return None
            if result is not None:
                return await self._offer(runtime, original, result, None)
        return await self._apply(runtime, original, None)

    def _apply_unit_event(self, runtime: TaskRuntime, message: SourceMessage, unit: str) -> Offer:
        """A released event forwarded by a session task to its unit (user funnels): decoded
        and de-duplicated there already; never late, the unit tasks' fronts being the session
        tasks' watermarks (``streamer.pipeline.units``)."""
        event = StoredEvent.from_json(orjson.loads(message.value or b"[]"))
        outcome = runtime.task.offer(unit, event, unit_user(unit), message.topic)
        if outcome is Offer.LATE:
            self._metrics.late_events.inc()
            log.error("unit %s: event %s released late to its unit task", unit, event.event_id)
        else:
            self._tally(self._counters[(message.topic, outcome.value)])
        return outcome

    async def _apply(
        self, runtime: TaskRuntime, message: SourceMessage, clock_input: str | None
    ) -> Offer | None:
        """Decode, validate and offer one event; ``clock_input`` names the input whose front
        it moves (None on the re-key path, where fronts arrive in-band)."""
        result = self._decoder.decode(
            message.value,
            topic=message.topic,
            received_at=message.received_at(otherwise=self._clock()),
        )
        if isinstance(result, Ignored):
            self._tally(self._counters[(message.topic, "ignored")])
            self._unplanned.count(message.topic, result.name)
            return None
        if isinstance(result, Rejection):
            await self._dead_letter(message, result)
            return None
        return await self._offer(runtime, message, result, clock_input)

    async def _offer(
        self,
        runtime: TaskRuntime,
        message: SourceMessage,
        result: DecodedEvent,
        clock_input: str | None,
    ) -> Offer:
        """Offer one decoded event to its task (see :meth:`_apply`)."""
        event = result.event
        task = runtime.task
        outcome = task.offer(
            result.session_id, event, result.user_id, message.topic, result.inactivity_ms
        )
        if outcome is Offer.LATE:
            self._metrics.late_events.inc()
            lag_s = (task.watermark_ms - event.at_ms) / 1000
            await self._dead_letter(
                message,
                Rejection(
                    ReasonCode.LATE,
                    f"occurred_at is {lag_s:.3f}s behind the watermark "
                    f"{watermark_text(task.watermark_ms)} of partition {message.partition} "
                    f"(allowed lateness {self._lateness_ms / 1000:g}s)",
                    "occurred_at",
                ),
            )
            return outcome
        if outcome is Offer.ACCEPTED:
            accepted = self._accepted
            key = (message.topic, event.event_type)
            accepted[key] = accepted.get(key, 0) + 1
            if clock_input is not None and self.inputs.observe(
                clock_input, message.partition, event.at_ms
            ):
                watermark = self.inputs.watermark(message.partition)
                if watermark is not None and not advance_at_once(task, watermark):
                    held = self._holds(message.partition, runtime)
                    await advance_in_steps(task, watermark, held)
        else:
            self._tally(self._counters[(message.topic, outcome.value)])
        return outcome

    # --- time without input -----------------------------------------------------------------
    async def mark_idle(
        self, highwaters: dict[tuple[str, int], int], idle_timeout_s: float
    ) -> None:
        """Inputs caught up with their log end and silent for the idle timeout stop holding
        the watermark back; then tasks whose inputs are all idle follow the others, in steps
        with the apply lock held, unless something holds it already (a snapshot being taken
        in slices must not see its task change): then the next tick moves them."""
        now = time.monotonic()
        for partition, runtime in self.runtimes.items():
            if self.rekeyed_from:
                break  # the re-key stage says which source partitions are idle, in-band
            for topic in self.topics:
                end = highwaters.get((topic, partition))
                read_at = runtime.last_read.get(topic, runtime.created_at)
                caught_up = end is not None and runtime.offsets.get(topic, 0) >= end
                silent = now - read_at >= idle_timeout_s
                self.inputs.set_idle(topic, partition, caught_up and silent)
        if self._apply_lock.locked():
            return
        async with self._apply_lock:  # (taken at once: it was free and nothing ran since)
            for partition, runtime in list(self.runtimes.items()):
                if self.runtimes.get(partition) is not runtime:
                    continue  # released while another task moved
                watermark = self.inputs.watermark(partition)
                if watermark is not None and not runtime.catch_up:  # it stops at the checkpoint's
                    await advance_in_steps(runtime.task, watermark, self._holds(partition, runtime))

    def _holds(self, partition: int, runtime: TaskRuntime) -> Callable[[], bool]:
        """Whether ``runtime`` is still this stage's task of ``partition`` (not released)."""
        return lambda: self.runtimes.get(partition) is runtime

    # --- metrics -----------------------------------------------------------------------------
    def _tally(self, counter: Any, amount: float = 1) -> None:
        """Count per event in a plain dict; Prometheus counters (each with its own lock) are
        updated once per publish (at least every second)."""
        self._tallies[counter] = self._tallies.get(counter, 0) + amount

    def flush_metrics(self) -> None:
        tallies, self._tallies = self._tallies, {}
        for counter, amount in tallies.items():
            counter.inc(amount)
        accepted, self._accepted = self._accepted, {}
        for (topic, event_type), count in accepted.items():
            self._counters[(topic, "accepted")].inc(count)
            for counter in self._type_counters.get(event_type, ()):
                counter.inc(count)

    # --- output ------------------------------------------------------------------------------
    def publish_due(self, highwaters: dict[tuple[str, int], int]) -> list[int]:
        """The partitions the timer publishes now. One caught up with its input is watched
        live: every tick. One behind its log end (a backlog) publishes with its checkpoints,
        at most a checkpoint interval apart: a publish sends every window its events touched,
        whole, and on a backlog, where event time runs fast, that is every open window."""
        now = time.monotonic()
        return [
            partition
            for partition, runtime in self.runtimes.items()
            if now - runtime.published_at >= self._interval
            or all(
                runtime.offsets.get(topic, 0) >= highwaters.get((topic, partition), 0)
                for topic in self.topics
            )
        ]

    async def publish(self, partitions: Collection[int] | None = None) -> None:
        """Send what the tasks of ``partitions`` (default: every task) have to say (partials,
        progress, abandonments) and wait until the broker has it, with every send under way.
        Called by a partition's checkpoint and by the worker's timer."""
        self.flush_metrics()
        async with self._publish_lock:
            # Drained and encoded in one synchronous step: a progress record must carry the
            # watermark of the counts drained with it (the agent moves on while we send, and a
            # later watermark would let the merger finalise a window on stale counts).
            partials: list[bytes] = []
            notices: list[AbandonmentNotice] = []
            forwards: list[tuple[int, list[UnitEvent], int]] = []
            now = time.monotonic()
            for partition, runtime in sorted(self.runtimes.items()):
                if partitions is not None and partition not in partitions:
                    continue
                runtime.published_at = now
                reported = partition + self._reports_as
                partials.extend(
                    orjson.dumps({**record, "partition": reported}) for record in runtime.announce
                )
                runtime.announce = []
                out = runtime.task.drain()
                notices.extend(out.abandonments)
                watermark = runtime.task.watermark_ms
                if self._units is not None:  # the events released with these counts
                    forwards.append((partition, out.forwards, watermark))
                # (owner generation, input offsets, watermark) version the partial: the merger
                # keeps the newest, so a late copy from a previous owner cannot replace it.
                version = [runtime.generation, sum(runtime.offsets.values()), watermark]
                for partial in out.partials:
                    record = partial.to_json()
                    record["partition"] = reported
                    record["version"] = version
                    partials.append(orjson.dumps(record))
                partials.extend(self._lifecycle_records(runtime, reported, version, now))
                progress = {
                    "kind": "progress",
                    "partition": reported,
                    "watermark": watermark,
                    "generation": runtime.generation,
                }
                partials.append(orjson.dumps(progress))
            try:
                for partition, released, watermark in forwards:
                    await self._forward_to_units(partition, released, watermark)
                for notice in notices:
                    await self._publish_abandonment(notice)
                for value in partials:
                    self._in_flight.add(await self._send_partial(None, value, 0))
                await self._in_flight.confirm()  # raises if the broker refused: nothing acked
            except Exception:  # drained outputs the broker may not have: see ``Committer.sealed``
                self.committer.sealed = True
                raise

    def _lifecycle_records(
        self, runtime: TaskRuntime, reported: int, version: list[int], now: float
    ) -> list[bytes]:
        """A unit task's lifecycle figures, whole, once per checkpoint interval (each
        replaces the partition's previous record at the merger: streamer.pipeline.lifecycle),
        each funnel's only if it changed since this owner last sent it."""
        lifecycles = runtime.task.lifecycles
        published_at = runtime.lifecycle_published_at
        if not lifecycles or (published_at is not None and now - published_at < self._interval):
            return []
        runtime.lifecycle_published_at = now
        records = []
        for name, core in sorted(lifecycles.items()):
            if core.watermark_ms == NEVER:
                continue  # nothing released yet: no figures to stand for
            record = lifecycle_record(
                name, core, partition=reported, generation=runtime.generation, version=version
            )
            figures = record.model_dump_json(exclude={"version"})
            if runtime.lifecycle_sent.get(name) != figures:
                runtime.lifecycle_sent[name] = figures
                records.append(record.model_dump_json().encode())
        return records

    async def _forward_to_units(
        self, partition: int, released: list[UnitEvent], watermark_ms: int
    ) -> None:
        if self._units is not None:
            for sent in await self._units.forward(partition, released, watermark_ms):
                self._in_flight.add(sent)

    async def _publish_abandonment(self, notice: AbandonmentNotice) -> None:
        funnel = self.definitions[notice.funnel]
        record = abandonment_record(funnel, notice)
        self._in_flight.add(
            await self._send_abandonment(
                notice.session_id.encode(), record.model_dump_json().encode(), None
            )
        )
        retracted = record.kind == "retracted"
        counter = self._metrics.retractions if retracted else self._metrics.abandonments
        counter.labels(funnel=record.funnel, stage=record.stage).inc()
        if record.cart_value:
            value = self._metrics.retracted_value if retracted else self._metrics.abandoned_value
            value.labels(
                funnel=record.funnel, stage=record.stage, currency=record.currency or "unknown"
            ).inc(record.cart_value)

    async def checkpoint(self, partition: int) -> None:
        await self.committer.checkpoint(partition)

    def checkpoint_due(self) -> None:
        self.committer.checkpoint_due()

    def raise_failed_write_out(self) -> None:
        self.committer.raise_failed()

    async def drain_write_outs(self) -> None:
        await self.committer.drain()

    async def close(self, timeout_s: float = 10.0) -> None:
        """The worker stops politely: checkpoint every partition's last changes and ack them
        (so the next start goes on from here instead of re-reading since the last interval),
        then write nothing more. Called while the producer and the table still work."""
        if self.committer.sealed:
            log.warning(
                "stopping without a last checkpoint: a produce or state write failed; the next "
                "start resumes from the last checkpoint written"
            )
            return
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s), self._apply_lock:
                await self.committer.drain(holding_apply_lock=True)
                # Every partition with input applied since its last snapshot, acks or not
                # (input read directly has none).
                partitions = [p for p, r in self.runtimes.items() if r.unstored]
                for partition in partitions:
                    await self.checkpoint(partition)
                await self.publish()  # what the other tasks have (an idle input's progress)
        except Exception:  # the input is not acked: the next start re-reads it
            log.exception(
                "stopping: the last checkpoint failed; the next start resumes from the one before"
            )
        else:
            log.info(
                "stopping: last checkpoint of partition(s) %s written (%.2fs)",
                ",".join(map(str, sorted(partitions))) or "none (nothing new)",
                time.perf_counter() - started,
            )
        finally:
            self.committer.sealed = True

    async def _dead_letter(self, message: SourceMessage, rejection: Rejection) -> None:
        self._counters[(message.topic, "dead_lettered")].inc()
        self._in_flight.add(
            await send_rejected(
                message, rejection, self._clock(), self._send_dead_letter, self._metrics
            )
        )
