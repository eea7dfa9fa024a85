"""The sessions stage itself: source messages -> events -> tasks -> partials and abandonments.

One hop: producers key clickstream and checkout by session id on co-partitioned topics, so
partition N of both is one *task* (:class:`streamer.funnel.task.Task`) processed in place.

Exactly-once effects with at-least-once Kafka: events are read without acks
(``stream.noack()``), and a *checkpoint* of a task is this recipe, in this order:

1. snapshot (synchronous, ``_snapshot``): the task's changes since the last checkpoint encoded
   as delta records (``checkpoint_log``), the input offsets they reflect in the partition's
   meta record, and the acks of the events they reflect; the task goes on meanwhile;
2. outputs (``_write_out_now`` -> ``publish``): the task's partials and abandonments sent,
   their delivery confirmed (``Deliveries``);
3. state writes: the delta records, then the meta record (it says what the rest reflects),
   then the deletes of a compacted log, into the ``funnel-state`` table;
4. producer flush: changelog and outputs on the broker (``flush_producer``);
5. ack: the snapshot's events acked, so Faust may commit past them.

Write-outs run in snapshot order under one lock; one that fails *seals* the stage (nothing
more is checkpointed, not even by a polite stop) and is raised by the next message, so the
worker stops with nothing acked that was not written. After a crash Faust re-delivers from the
committed offsets and the task skips every message below the offsets in its checkpoint;
outputs carry deterministic ids or replace earlier ones. Checkpoints come every
``checkpoint_interval_seconds`` from the agent, or from the 1 s timer for a quiet partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.events import EVENT_MODELS, ReasonCode
from streamer.funnel.clock import InputClock
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import NEVER, CompiledFunnel
from streamer.funnel.stages import lifecycle_stage
from streamer.funnel.task import AbandonmentNotice, Offer, Task
from streamer.funnel.windows import window_start
from streamer.metrics import Metrics
from streamer.pipeline.input_order import STALL_REPAIR_S, InputPositions
from streamer.pipeline.messages import (
    REKEY_FRONT,
    REKEY_KEY_HEADER,
    REKEY_KIND_HEADER,
    REKEY_SOURCE_HEADER,
    REKEY_TIMESTAMP_HEADER,
    PartitionSendFn,
    SendFn,
    SourceMessage,
    send_rejected,
)
from streamer.pipeline.sessions import checkpoint_log
from streamer.pipeline.sessions.checkpoint_log import delta_key, encode_delta, meta_key, read_log
from streamer.pipeline.sessions.projection import needed_fields, stored_event
from streamer.pipeline.sessions.records import abandonment_record
from streamer.pipeline.tables import Deliveries

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


@dataclass
class _Runtime:
    """A task plus what the adapter keeps for it: offsets reflected and events to ack."""

    task: Task
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> next offset to apply
    unacked: list[Any] = field(default_factory=list)  # Faust events awaiting the checkpoint
    storing: int = 0  # events of write-outs under way: applied, not stored yet
    checkpointed_at: float = field(default_factory=time.monotonic)
    published_at: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.monotonic)
    last_read: dict[str, float] = field(default_factory=dict)  # topic -> monotonic time
    # Re-key path: "topic/partition" of a source -> its next offset to apply.
    source_offsets: dict[str, int] = field(default_factory=dict)
    # The partition's log of delta records: live range [log_first, log_next), size of its
    # full start, bytes of deltas since, and stale keys for the next write-out to drop.
    log_first: int = 0
    log_next: int = 0
    full_bytes: int = 0
    delta_bytes: int = 0
    compact_next: bool = False
    stale_keys: list[str] = field(default_factory=list)
    # Grows with every restore (new owner, restart): this owner's partials supersede those of
    # earlier owners of the partition, whatever their input offsets.
    generation: int = 0
    # Funnels added since the checkpoint, whose open sessions are still to be rebuilt from
    # the input the checkpoint reflects (see ``SessionsStage._catch_up``).
    catch_up: tuple[int, ...] = ()
    # Records for the merger to send before this task's next partials (see ``_catch_up``).
    announce: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class _Snapshot:
    partition: int
    runtime: _Runtime
    writes: dict[str, bytes]  # table key -> value, the partition's meta last
    deletes: list[str]
    acks: list[Any]


class _CheckpointPositions:
    """Input positions kept in each task's checkpoint (``_Runtime.offsets``, stored in the
    partition's meta record with the state they reflect)."""

    def __init__(self, runtimes: dict[int, _Runtime]) -> None:
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
        self._flush_producer = flush_producer
        self._read_range = read_range
        self._find_offset = find_offset
        self._partition_scope = partition_scope
        self._clock = clock
        self._keep = needed_fields(funnels)
        # Re-key path: ``topics`` is the re-keyed topic, events come from ``rekeyed_from`` and
        # the clock's inputs are their partitions, learnt from the in-band front markers.
        self.rekeyed_from = rekeyed_from
        self.inputs = InputClock(() if rekeyed_from else topics, allowed_lateness_ms)
        self.runtimes: dict[int, _Runtime] = {}
        self.assigned: set[int] | None = None  # None: not told yet (tests drive it directly)
        self._in_flight = Deliveries()
        self._publish_lock = asyncio.Lock()
        self._checkpoint_lock = asyncio.Lock()
        self._apply_lock = asyncio.Lock()
        self._write_outs: set[asyncio.Future[None]] = set()
        self._failed_write_out: BaseException | None = None
        # Sealed: nothing more is applied or checkpointed. Set by close() (the producer is
        # going away) and by any failure of a write-out (write-outs chain their deltas: after
        # one is lost a later one would leave a hole), of a publish (outputs drained from the
        # tasks the broker may not have) or of applying a message (maybe half applied). The
        # next start resumes from the last checkpoint written.
        self._sealed = False
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
            for outcome in ("accepted", "dead_lettered", "duplicate")
        }
        self._bytes = {topic: metrics.event_bytes.labels(topic=topic) for topic in topics}
        self._replayed = {topic: metrics.replayed.labels(topic=topic) for topic in topics}
        self._tallies: dict[Any, float] = {}
        # Accepted events per (input, event type): one tally per event, spread over their
        # counters (the input's, the type's, its lifecycle stage's) when the metrics flush.
        self._accepted: dict[tuple[str, str], int] = {}
        # Per event type: its own counter and its lifecycle stage's (bound once, not per event).
        self._type_counters = {
            event_type: [metrics.events_by_type.labels(event_type=event_type)]
            + (
                [metrics.stage_events.labels(stage=stage.value)]
                if (stage := lifecycle_stage(event_type)) is not None
                else []
            )
            for event_type in EVENT_MODELS
        }

    # --- assignment ----------------------------------------------------------------------
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

    def _release(self, partition: int) -> None:
        if self.runtimes.pop(partition, None) is not None:
            self.inputs.revoke(partition)
            log.info("partition %d: released", partition)

    def ensure(self, partition: int) -> None:
        """Restore task ``partition`` now (after an assignment, before its first message)."""
        self._runtime(partition)

    def _runtime(self, partition: int) -> _Runtime:
        runtime = self.runtimes.get(partition)
        if runtime is None:
            runtime = self._restore(partition)
            self.runtimes[partition] = runtime
        return runtime

    def _restore(self, partition: int) -> _Runtime:
        started = time.perf_counter()
        task = Task(self.funnels, partition, retention_ms=self._retention_ms)
        runtime = _Runtime(task)
        names = {f.name: i for i, f in enumerate(self.funnels)}
        stored = read_log(self._table, partition, names)
        meta, sessions, windows = stored.meta, stored.sessions, stored.windows
        first, next_seq, log_bytes = stored.first, stored.next_seq, stored.log_bytes
        stale, cut_short = stored.stale, stored.cut_short
        runtime.compact_next = stored.first_edition
        runtime.log_first, runtime.log_next = first, next_seq
        if cut_short:
            # Deltas of a write-out cut short before its meta: new records must not reuse
            # their keys (the deletes would drop them), and the log must stay one range.
            runtime.log_next = max(next_seq, max(cut_short) + 1)
            runtime.compact_next = True
        # The restored log counts as the full start: compaction once deltas outweigh it.
        runtime.full_bytes, runtime.delta_bytes = log_bytes, 0
        runtime.stale_keys = stale
        stored_funnels = meta.get("funnels")  # absent before funnels were recorded
        if stored_funnels is not None and stored_funnels != list(names):
            # Sessions stored their progress per funnel in the old order: realigned by name
            # and all written again (the deltas still hold the old layout).
            log.warning(
                "partition %d: the funnels changed since the checkpoint (%s -> %s): added "
                "funnels catch up from the input the checkpoint reflects; removed funnels' "
                "progress is dropped",
                partition,
                ", ".join(stored_funnels),
                ", ".join(names),
            )
            runtime.compact_next = True
            runtime.catch_up = tuple(
                index for name, index in names.items() if name not in stored_funnels
            )
        if not meta:
            # No checkpoint (a first start, or a partition that never had input): its counts
            # of every funnel are whole from the start. Said to the merger, which waits for
            # every partition before it starts a funnel new to it (see ``_announce_start``).
            self._announce_start(runtime, partition, tuple(range(len(self.funnels))))
        task.restore(int(meta.get("watermark", NEVER)), sessions.items(), windows, stored_funnels)
        runtime.offsets = {str(k): int(v) for k, v in meta.get("offsets", {}).items()}
        for topic in self.topics:
            # Nothing of this input applied yet: it starts at the log's start (the group
            # reads from the earliest offset). Said, not assumed: Faust may deliver from
            # further on (what it fetched before a rebalance is cleared from its buffers and
            # never handed over again), and the gap is then read directly like any other.
            runtime.offsets.setdefault(topic, 0)
        runtime.source_offsets = {str(k): int(v) for k, v in meta.get("source_offsets", {}).items()}
        # Wall-clock milliseconds only order the owners of a partition (never a funnel decision):
        # monotonic even if the previous owner died before its first checkpoint.
        runtime.generation = max(int(meta.get("generation", 0)) + 1, round(time.time() * 1000))
        self.inputs.assign(partition, {str(k): int(v) for k, v in meta.get("fronts", {}).items()})
        log.info(
            "partition %d: restored %d sessions, %d open windows from %d records (%d bytes), "
            "watermark %s, offsets %s (%.2fs)",
            partition,
            len(sessions),
            len(windows),
            next_seq - first,
            log_bytes,
            _fmt_ms(task.watermark_ms),
            meta.get("offsets") or "none (first start)",
            time.perf_counter() - started,
        )
        return runtime

    # --- per message ---------------------------------------------------------------------
    async def process(self, message: SourceMessage, ack: Callable[[], Any]) -> Offer | None:
        """Handle one source message. Nothing a producer sends can raise out of here; a
        failing produce does (the worker must stop rather than ack what it could not write)."""
        if self._sealed:
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
                if time.monotonic() - runtime.checkpointed_at >= self._interval:
                    self._start_write_out(message.partition)
                return outcome
            except Exception:  # (not a cancellation: Faust cancels agents on a rebalance)
                self._sealed = True  # maybe half applied: see ``_sealed``
                raise

    async def _apply_one(self, runtime: _Runtime, message: SourceMessage) -> Offer | None:
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
        return outcome

    async def catch_up_added_funnels(self) -> None:
        """Run the catch-up of every task that still has one (the timer calls this: a
        partition with no new input must not wait for a message)."""
        for partition, runtime in sorted(self.runtimes.items()):
            if runtime.catch_up:
                async with self._apply_lock:
                    if self.runtimes.get(partition) is runtime and runtime.catch_up:
                        await self._catch_up(runtime, partition)

    async def _catch_up(self, runtime: _Runtime, partition: int) -> None:
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
        self, runtime: _Runtime, partition: int, indexes: tuple[int, ...]
    ) -> None:
        task = runtime.task
        if self.rekeyed_from:
            log.warning(
                "partition %d: funnels added on the re-key path start from the next sessions "
                "(open sessions are rebuilt on the one-hop path only)",
                partition,
            )
            self._announce_start(runtime, partition, indexes)
            return
        if task.watermark_ms == NEVER:
            # Nothing was released yet: the added funnels see everything from now on.
            self._announce_start(runtime, partition, indexes)
            return
        funnels = tuple(self.funnels[i] for i in indexes)
        lookback = max(
            f.definition.conversion_window_ms + f.definition.window_ms
            + f.definition.finality_lag_ms
            for f in funnels
        )  # fmt: skip
        from_ms = task.watermark_ms - lookback - self._lateness_ms
        skew_ms = round(self._limits.max_future_skew.total_seconds() * 1000)
        started = time.perf_counter()
        history = Task(funnels, partition, retention_ms=self._retention_ms)
        read = 0
        for topic in self.topics:
            end = runtime.offsets.get(topic, 0)
            start = min(end, await self._find_offset(topic, partition, from_ms - skew_ms))
            _, messages = (
                await self._read_range(topic, partition, start, end) if end > start else (0, [])
            )
            for message in messages:
                result = decode_event(
                    message.value,
                    received_at=message.received_at(otherwise=self._clock()),
                    limits=self._limits,
                )
                if isinstance(result, Rejection):
                    continue  # dead-lettered when it was first read
                event = stored_event(result, self._keep)
                history.offer(result.session_id, event, result.user_id, topic)
                read += 1
        history.advance(task.watermark_ms)
        task.adopt(history, indexes)
        runtime.compact_next = True
        self._announce_start(runtime, partition, indexes)
        log.info(
            "partition %d: added funnel(s) %s caught up from %d events read back to %s: "
            "%d open sessions (%.2fs)",
            partition,
            ", ".join(f.name for f in funnels),
            read,
            _fmt_ms(from_ms),
            sum(
                1
                for state in task.sessions.values()
                if any(state.progress[i].attempt is not None for i in indexes)
            ),
            time.perf_counter() - started,
        )

    def _announce_start(self, runtime: _Runtime, partition: int, indexes: tuple[int, ...]) -> None:
        """Tell the merger from which window on this partition's counts of each added funnel
        are whole: the windows already final here at the hand-over were never counted here,
        and a window another partition still held open then would be merged without them. The
        merger starts the funnel at the latest of these over every partition."""
        watermark = runtime.task.watermark_ms
        for index in indexes:
            funnel = self.definitions[index]
            open_from = watermark - funnel.window_ms - funnel.finality_lag_ms + 1
            runtime.announce.append(
                {
                    "kind": "start",
                    "partition": partition,
                    "funnel": funnel.name,
                    "from": window_start(open_from, funnel.window_ms) + funnel.window_ms
                    if watermark != NEVER
                    else NEVER,
                }
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

    async def _apply_rekeyed(self, runtime: _Runtime, message: SourceMessage) -> Offer | None:
        """A message of the re-keyed topic: a source partition's front, or a forwarded event
        (applied once: a re-key stage restarted mid-way forwards some again)."""
        if message.header(REKEY_KIND_HEADER) == REKEY_FRONT:
            marker = orjson.loads(message.value or b"{}")
            source, partition = str(marker["source"]), message.partition
            self.inputs.add_inputs(str(name) for name in marker["sources"])
            self.inputs.observe(source, partition, int(marker["front"]))
            self.inputs.set_idle(source, partition, bool(marker["idle"]))
            watermark = self.inputs.watermark(partition)
            if watermark is not None:
                runtime.task.advance(watermark)
            return None
        origin = (message.header(REKEY_SOURCE_HEADER) or b"").decode()
        topic, source_partition, source_offset = origin.rsplit("/", 2)
        source = f"{topic}/{source_partition}"
        if int(source_offset) < runtime.source_offsets.get(source, 0):
            self._tally(self._replayed[message.topic])
            return None
        runtime.source_offsets[source] = int(source_offset) + 1
        timestamp = message.header(REKEY_TIMESTAMP_HEADER)
        original = SourceMessage(
            topic=topic,
            partition=int(source_partition),
            offset=int(source_offset),
            timestamp_ms=int(timestamp) if timestamp else None,
            key=message.header(REKEY_KEY_HEADER),
            value=message.value,
        )
        return await self._apply(runtime, original, None)

    async def _apply(
        self, runtime: _Runtime, message: SourceMessage, clock_input: str | None
    ) -> Offer | None:
        """Decode, validate and offer one event; ``clock_input`` names the input whose front
        it moves (None on the re-key path, where fronts arrive in-band)."""
        result = decode_event(
            message.value,
            received_at=message.received_at(otherwise=self._clock()),
            limits=self._limits,
        )
        if isinstance(result, Rejection):
            await self._dead_letter(message, result)
            return None
        event = stored_event(result, self._keep)
        task = runtime.task
        outcome = task.offer(result.session_id, event, result.user_id, message.topic)
        if outcome is Offer.LATE:
            self._metrics.late_events.inc()
            lag_s = (task.watermark_ms - event.at_ms) / 1000
            await self._dead_letter(
                message,
                Rejection(
                    ReasonCode.LATE,
                    f"occurred_at is {lag_s:.3f}s behind the watermark "
                    f"{_fmt_ms(task.watermark_ms)} of partition {message.partition} "
                    f"(allowed lateness {self._lateness_ms / 1000:g}s)",
                    "occurred_at",
                ),
            )
            return outcome
        if outcome is Offer.ACCEPTED:
            accepted = self._accepted
            key = (message.topic, result.event_type)
            accepted[key] = accepted.get(key, 0) + 1
            if clock_input is not None and self.inputs.observe(
                clock_input, message.partition, event.at_ms
            ):
                watermark = self.inputs.watermark(message.partition)
                if watermark is not None:
                    task.advance(watermark)
        else:
            self._tally(self._counters[(message.topic, outcome.value)])
        return outcome

    # --- time without input -----------------------------------------------------------------
    def mark_idle(self, highwaters: dict[tuple[str, int], int], idle_timeout_s: float) -> None:
        """Inputs caught up with their log end and silent for the idle timeout stop holding
        the watermark back; then tasks whose inputs are all idle follow the others."""
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
        for partition, runtime in self.runtimes.items():
            watermark = self.inputs.watermark(partition)
            if watermark is not None and not runtime.catch_up:  # it stops at the checkpoint's
                runtime.task.advance(watermark)

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
            for counter in self._type_counters[event_type]:
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
            now = time.monotonic()
            for partition, runtime in sorted(self.runtimes.items()):
                if partitions is not None and partition not in partitions:
                    continue
                runtime.published_at = now
                partials.extend(orjson.dumps(record) for record in runtime.announce)
                runtime.announce = []
                out = runtime.task.drain()
                notices.extend(out.abandonments)
                watermark = runtime.task.watermark_ms
                # (owner generation, input offsets, watermark) version the partial: the merger
                # keeps the newest, so a late copy from a previous owner cannot replace it.
                version = [runtime.generation, sum(runtime.offsets.values()), watermark]
                for partial in out.partials:
                    record = partial.to_json()
                    record["version"] = version
                    partials.append(orjson.dumps(record))
                progress = {
                    "kind": "progress",
                    "partition": partition,
                    "watermark": watermark,
                    "generation": runtime.generation,
                }
                partials.append(orjson.dumps(progress))
            try:
                for notice in notices:
                    await self._publish_abandonment(notice)
                for value in partials:
                    self._in_flight.add(await self._send_partial(None, value, 0))
                await self._in_flight.confirm()  # raises if the broker refused: nothing acked
            except Exception:  # drained outputs the broker may not have: see ``_sealed``
                self._sealed = True
                raise

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

    def _snapshot(self, partition: int) -> _Snapshot | None:
        """One synchronous snapshot of task ``partition``: its changes (encoded now: the task
        goes on changing while they are written), the input offsets they reflect and the acks
        that go with them."""
        runtime = self.runtimes.get(partition)
        if runtime is None:
            return None  # revoked meanwhile
        if runtime.catch_up:
            return None  # its state is not whole yet
        full = runtime.compact_next or runtime.delta_bytes > max(
            runtime.full_bytes, checkpoint_log.MIN_COMPACTION_BYTES
        )
        runtime.compact_next = False
        saved = runtime.task.checkpoint(full=full)
        records = encode_delta(saved, [funnel.name for funnel in self.funnels])
        written = sum(len(record) for record in records)
        if full:
            old = range(runtime.log_first, runtime.log_next)
            deletes = [delta_key(partition, seq) for seq in old] + runtime.stale_keys
            runtime.stale_keys = []
            runtime.log_first = runtime.log_next
            runtime.full_bytes, runtime.delta_bytes = written, 0
        else:
            deletes = runtime.stale_keys
            runtime.stale_keys = []
            runtime.delta_bytes += written
        writes: dict[str, bytes] = {}
        for record in records:
            writes[delta_key(partition, runtime.log_next)] = record
            runtime.log_next += 1
        meta = {
            "generation": runtime.generation,
            "watermark": saved.watermark_ms,
            "offsets": dict(runtime.offsets),
            "fronts": self.inputs.fronts_of(partition),
            "source_offsets": dict(runtime.source_offsets),
            "log": [runtime.log_first, runtime.log_next],
            "funnels": [funnel.name for funnel in self.funnels],  # the sessions' progress order
        }
        writes[meta_key(partition)] = orjson.dumps(meta)  # last: it says what the rest reflects
        acks, runtime.unacked = runtime.unacked, []
        runtime.storing += len(acks)
        runtime.checkpointed_at = time.monotonic()
        return _Snapshot(partition, runtime, writes, deletes, acks)

    async def _write_out(self, snapshot: _Snapshot) -> None:
        """Publish every output of the snapshot (and maybe a little more), store its state,
        wait for the broker (outputs and changelog), then ack its input. In snapshot order."""
        try:
            async with self._checkpoint_lock:
                if self._sealed:
                    # The worker is stopping (Faust stops its producer under the changelog
                    # writes of a checkpoint begun then, and the buffer crashes the clean stop)
                    # or a write-out failed. Not written, not acked: the next start resumes
                    # from the last checkpoint, as after a SIGKILL.
                    return
                await self._write_out_now(snapshot)
        except BaseException:
            # Its delta is lost (also when cancelled while waiting its turn): a later write-out
            # would leave a hole in the partition's log, so none is written.
            self._sealed = True
            raise
        finally:
            snapshot.runtime.storing -= len(snapshot.acks)

    async def _write_out_now(self, snapshot: _Snapshot) -> None:
        started = time.perf_counter()
        partition = snapshot.partition
        await self.publish((partition,))
        if self.runtimes.get(partition) is not snapshot.runtime:
            return  # revoked while publishing: the next owner resumes from our last one
        table = self._table
        with self._partition_scope(partition):  # writes go to this partition's changelog
            # Deletes after the meta record: a write-out cut short anywhere leaves a meta
            # whose records all exist (stale ones are dropped after the next restore).
            for key, value in snapshot.writes.items():
                table[key] = value
            for key in snapshot.deletes:
                table.pop(key, None)
        await self._flush_producer()
        for ack in snapshot.acks:
            ack()
        self._metrics.checkpoints.inc()
        self._metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    def _start_write_out(self, partition: int) -> None:
        """Snapshot now; write it out beside the processing of later messages (the agent does
        not wait for the broker). A write-out that fails is raised by the next message."""
        self.raise_failed_write_out()
        if self._sealed:
            return
        snapshot = self._snapshot(partition)
        if snapshot is None:
            return
        writer = asyncio.ensure_future(self._write_out(snapshot))
        self._write_outs.add(writer)
        writer.add_done_callback(self._write_out_done)

    def _write_out_done(self, writer: asyncio.Future[None]) -> None:
        self._write_outs.discard(writer)
        if not writer.cancelled() and writer.exception() is not None:
            self._failed_write_out = writer.exception()  # (the write-out sealed the stage)

    def raise_failed_write_out(self) -> None:
        failed, self._failed_write_out = self._failed_write_out, None
        if failed is not None:
            raise failed  # nothing of it was acked: the worker stops, a restart resumes

    async def drain_write_outs(self) -> None:
        """Wait for every write-out under way (before partitions are revoked, or the last
        checkpoint); one that failed is raised by the next message."""
        while self._write_outs:
            await asyncio.gather(*list(self._write_outs), return_exceptions=True)
        async with self._checkpoint_lock:
            pass  # and the timer's own, which is not among the tracked ones

    async def checkpoint(self, partition: int) -> None:
        """Store task ``partition``'s changes with the input offsets they reflect, publish
        every output, wait for the broker (changelog and outputs), then ack that input."""
        self.raise_failed_write_out()
        snapshot = self._snapshot(partition)
        if snapshot is not None:
            await self._write_out(snapshot)

    async def close(self, timeout_s: float = 10.0) -> None:
        """The worker stops politely: checkpoint every partition's last changes and ack them
        (so the next start goes on from here instead of re-reading since the last interval),
        then write nothing more. Called while the producer and the table still work."""
        if self._sealed:
            log.warning(
                "stopping without a last checkpoint: a produce or state write failed; the next "
                "start resumes from the last checkpoint written"
            )
            return
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s), self._apply_lock:
                await self.drain_write_outs()
                partitions = [p for p, r in self.runtimes.items() if r.unacked]
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
            self._sealed = True

    async def checkpoint_due(self) -> None:
        """Checkpoint every task whose input went quiet with events not acked yet (the
        timer's part: a partition's last burst is stored without waiting for more input)."""
        now = time.monotonic()
        for partition, runtime in list(self.runtimes.items()):
            if runtime.unacked and now - runtime.checkpointed_at >= self._interval:
                await self.checkpoint(partition)

    async def _dead_letter(self, message: SourceMessage, rejection: Rejection) -> None:
        self._counters[(message.topic, "dead_lettered")].inc()
        self._in_flight.add(
            await send_rejected(
                message, rejection, self._clock(), self._send_dead_letter, self._metrics
            )
        )


def _fmt_ms(ms: int) -> str:
    if ms <= NEVER:
        return "none yet"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
