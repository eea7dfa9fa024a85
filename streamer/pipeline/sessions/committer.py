"""A task's checkpoint, the commit recipe of the sessions stage, in this order:

1. snapshot (:meth:`Committer.snapshot`): the task's changes since the last checkpoint
   encoded as delta records (``checkpoint_log``), the input offsets they reflect in the
   partition's meta record, and the acks of the events they reflect; taken while nothing is
   applied (synchronously, or in slices that let the event loop run, with the stage's apply
   lock held: the agent waits, nothing else does); then the task goes on;
2. outputs: the task's partials and abandonments published (the stage's ``publish``), their
   delivery confirmed;
3. state writes: the delta records, then the meta record (it says what the rest reflects),
   then the deletes of a compacted log, into the ``funnel-state`` table; a compaction of units
   on disk streams its records (parts of one delta, ``checkpoint_log.part_key``) from a frozen
   view of the store, a slice at a time with the producer flushed between slices, before its
   delta and meta: at 10 million units the whole record is about 2.5 GB;
4. producer flush: changelog and outputs on the broker;
5. ack: the snapshot's events acked, so Faust may commit past them.

Write-outs run in snapshot order under one lock, beside the processing of later messages (the
agent does not wait for the broker). A checkpoint the agent or the timer starts
(:meth:`Committer.start`) takes its snapshot as soon as the message being applied is done.
One that fails *seals* the stage (:attr:`Committer.sealed`: nothing more is checkpointed, not
even by a polite stop) and is raised by the next message, so the worker stops with nothing
acked that was not written.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Generator, MutableMapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from streamer.metrics import Metrics
from streamer.pipeline.sessions import checkpoint_log
from streamer.pipeline.sessions.checkpoint_log import (
    DeltaEncoder,
    compaction_parts,
    delta_key,
    manifest,
    meta_key,
    part_key,
)
from streamer.pipeline.sessions.runtime import TaskRuntime
from streamer.pipeline.sessions.unit_store import FrozenUnits

__all__ = ["Committer", "Snapshot"]

# A snapshot encodes this many sessions between two looks at the clock, and lets the event
# loop run once a slice ends this long after the last time it did: a partition's whole state
# (a compaction) took 0.2-0.6 s in one piece on a 200k-event backlog, every timer, heartbeat
# and fetch waiting behind it.
SNAPSHOT_SLICE_SESSIONS = 200
SNAPSHOT_SLICE_S = 0.01
# A streamed compaction flushes the producer once this much of it is written: what it holds
# in memory at a time (its records, the producer's buffer) stays about this size.
COMPACTION_FLUSH_BYTES = 8 * 2**20


@dataclass(frozen=True)
class StreamedCompaction:
    """A compaction of units on disk, written by the write-out: ``head`` (windows, deletions,
    lifecycle records) and every unit of ``units`` as parts of delta ``seq``, then the delta."""

    seq: int
    head: list[bytes]
    units: FrozenUnits


@dataclass(frozen=True)
class Snapshot:
    partition: int
    runtime: TaskRuntime
    writes: dict[str, bytes]  # table key -> value, the partition's meta last
    deletes: list[str]
    acks: list[Any]
    applied: int  # messages applied since the previous snapshot (read directly too)
    compaction: StreamedCompaction | None = None  # written before ``writes``


class Committer:
    """The recipe above for every task of one stage (``runtimes``, shared with the stage)."""

    def __init__(
        self,
        *,
        runtimes: dict[int, TaskRuntime],
        table: MutableMapping[str, bytes],
        funnel_names: list[str],
        fronts_of: Callable[[int], dict[str, int]],
        publish: Callable[[Collection[int]], Awaitable[None]],
        flush_producer: Callable[[], Awaitable[None]],
        partition_scope: Callable[[int], AbstractContextManager[None]],
        metrics: Metrics,
        interval_s: float,
        apply_lock: asyncio.Lock | None = None,
    ) -> None:
        self._runtimes = runtimes
        self.table = table
        self._funnel_names = funnel_names
        self._fronts_of = fronts_of
        self._publish = publish
        self.flush_producer = flush_producer
        self._partition_scope = partition_scope
        self._metrics = metrics
        self.interval_s = interval_s
        self._lock = asyncio.Lock()
        # Held by whatever changes the tasks (the stage's agent, stall repair, catch-up, the
        # timer's idle inputs): a snapshot in slices holds it too.
        self._apply_lock = apply_lock or asyncio.Lock()
        # Checkpoints started whose snapshot is not taken yet, by partition.
        self._requested: dict[int, asyncio.Future[None]] = {}
        self._snapshotting: set[asyncio.Future[None]] = set()  # holding the apply lock
        self._write_outs: set[asyncio.Future[None]] = set()
        self._failed_write_out: BaseException | None = None
        # Sealed: nothing more is applied or checkpointed. Set by the stage's close() (the
        # producer is going away) and by any failure of a write-out (write-outs chain their
        # deltas: after one is lost a later one would leave a hole), of a publish (outputs
        # drained from the tasks the broker may not have) or of applying a message (maybe
        # half applied). The next start resumes from the last checkpoint written.
        self.sealed = False

    def due(self, runtime: TaskRuntime) -> bool:
        return time.monotonic() - runtime.checkpointed_at >= self.interval_s

    def snapshot(self, partition: int) -> Snapshot | None:
        """One synchronous snapshot of task ``partition``: its changes (encoded now: the task
        goes on changing while they are written), the input offsets they reflect and the acks
        that go with them."""
        steps = self._snapshot_steps(partition)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                taken: Snapshot | None = done.value
                return taken

    async def _snapshot_in_slices(self, partition: int) -> Snapshot | None:
        """:meth:`snapshot`, letting the event loop run between slices. The caller holds the
        apply lock: nothing changes the task meanwhile."""
        steps = self._snapshot_steps(partition)
        ran_at = time.perf_counter()
        while True:
            try:
                next(steps)
            except StopIteration as done:
                taken: Snapshot | None = done.value
                return taken
            if time.perf_counter() - ran_at >= SNAPSHOT_SLICE_S:
                await asyncio.sleep(0)
                ran_at = time.perf_counter()

    def _snapshot_steps(self, partition: int) -> Generator[None, None, Snapshot | None]:
        """The snapshot, yielding after each slice of sessions encoded; returns it."""
        runtime = self._runtimes.get(partition)
        if runtime is None:
            return None  # revoked meanwhile
        if runtime.catch_up:
            return None  # its state is not whole yet
        due = runtime.compact_next or runtime.delta_bytes > max(
            runtime.full_bytes, checkpoint_log.MIN_COMPACTION_BYTES
        )
        full = due and not runtime.compacting  # (one streamed compaction at a time)
        runtime.compact_next = due and not full
        task = runtime.task
        store = runtime.store
        # A compaction of units on disk encodes here only the units changed since the last
        # commit; the others are streamed by the write-out from a frozen view of the store.
        streamed = full and store is not None
        changed = set(task.unsaved_session_ids) if store is not None else set()
        encode = task.encode_sessions if store is None else store.sessions.encode
        saved, session_ids = task.checkpoint_changes(full=full, every_session=not streamed)
        # The indexes as of these changes (a publish between two slices may drain windows).
        index = task.index_record() if store is not None else {}
        encoder = DeltaEncoder(saved, self._funnel_names)
        on_disk: dict[str, list[Any]] = {}  # the same states for the units' store, if any
        for start in range(0, len(session_ids), SNAPSHOT_SLICE_SESSIONS):
            if start:
                yield
            encoded = encode(session_ids[start : start + SNAPSHOT_SLICE_SESSIONS])
            if not streamed:
                encoder.add(encoded)
            if store is not None:
                on_disk.update((unit, state) for unit, state in encoded.items() if unit in changed)
        records = encoder.records()
        written = sum(len(record) for record in records)
        if full:
            old = range(runtime.log_first, runtime.log_next)
            deletes = [delta_key(partition, seq) for seq in old] + runtime.stale_keys
            if old:  # the parts of the delta it starts with (a streamed compaction)
                deletes += self._parts_of(partition, runtime.log_first)
            runtime.stale_keys = []
            runtime.log_first = runtime.log_next
            # Streamed: the log's size until its write-out counts what it wrote.
            runtime.full_bytes = runtime.full_bytes + runtime.delta_bytes if streamed else written
            runtime.delta_bytes = 0
        else:
            deletes = runtime.stale_keys
            runtime.stale_keys = []
            runtime.delta_bytes += written
        writes: dict[str, bytes] = {}
        compaction_seq = runtime.log_next
        if streamed:
            runtime.log_next += 1  # one delta, its parts streamed by the write-out
        else:
            for record in records:
                writes[delta_key(partition, runtime.log_next)] = record
                runtime.log_next += 1
        meta = {
            "generation": runtime.generation,
            "watermark": saved.watermark_ms,
            "offsets": dict(runtime.offsets),
            "fronts": self._fronts_of(partition),
            "source_offsets": dict(runtime.source_offsets),
            "log": [runtime.log_first, runtime.log_next],
            "funnels": self._funnel_names,  # the sessions' progress order
        }
        if task.forwards_units:  # the release sequence the forwarded events are numbered by
            meta["forwarded"] = saved.forwarded
        if store is not None:
            meta["owners"] = runtime.owners  # which owner wrote which part of the log
        writes[meta_key(partition)] = orjson.dumps(meta)  # last: it says what the rest reflects
        if store is not None:
            # The task has not changed since checkpoint_changes (the apply lock is held): the
            # store takes exactly what the log's records say, then lets the cache shrink.
            # Before the log's write-out: a SIGKILL in between leaves the store ahead of the
            # log, which the next start sees (``view_position``) and rebuilds from the log.
            store.commit(
                on_disk,
                saved.deleted_sessions,
                {
                    "log": meta["log"],
                    "generation": runtime.generation,
                    "funnels": self._funnel_names,
                    "index": index,
                    "log_bytes": runtime.full_bytes + runtime.delta_bytes,  # of the live range
                },
                pinned=task.unsaved_session_ids,
            )
        compaction = None
        if streamed:
            assert store is not None
            # Right after the commit: every unit as this checkpoint stores it, whatever later
            # checkpoints commit while the write-out streams them.
            compaction = StreamedCompaction(compaction_seq, records, store.freeze())
            runtime.compacting = True
        acks, runtime.unacked = runtime.unacked, []
        applied, runtime.unstored = runtime.unstored, 0
        runtime.storing += applied
        runtime.checkpointed_at = time.monotonic()
        return Snapshot(partition, runtime, writes, deletes, acks, applied, compaction)

    def _parts_of(self, partition: int, seq: int) -> list[str]:
        """The keys of delta ``seq``'s parts in the table (a streamed compaction's)."""
        keys: list[str] = []
        while (key := part_key(partition, seq, len(keys))) in self.table:
            keys.append(key)
        return keys

    async def _write_out(self, snapshot: Snapshot) -> None:
        """Publish every output of the snapshot (and maybe a little more), store its state,
        wait for the broker (outputs and changelog), then ack its input. In snapshot order."""
        try:
            async with self._lock:
                if self.sealed:
                    # The worker is stopping (Faust stops its producer under the changelog
                    # writes of a checkpoint begun then, and the buffer crashes the clean stop)
                    # or a write-out failed. Not written, not acked: the next start resumes
                    # from the last checkpoint, as after a SIGKILL.
                    return
                await self._write_out_now(snapshot)
        except BaseException:
            # Its delta is lost (also when cancelled while waiting its turn): a later write-out
            # would leave a hole in the partition's log, so none is written.
            self.sealed = True
            raise
        finally:
            snapshot.runtime.storing -= snapshot.applied
            if snapshot.compaction is not None:
                snapshot.compaction.units.close()
                snapshot.runtime.compacting = False

    async def _write_out_now(self, snapshot: Snapshot) -> None:
        started = time.perf_counter()
        partition = snapshot.partition
        await self._publish((partition,))
        if self._runtimes.get(partition) is not snapshot.runtime:
            return  # revoked while publishing: the next owner resumes from our last one
        if snapshot.compaction is not None and not await self._stream(snapshot):
            return  # revoked meanwhile: its parts are leftovers past the log
        table = self.table
        with self._partition_scope(partition):  # writes go to this partition's changelog
            # Deletes after the meta record: a write-out cut short anywhere leaves a meta
            # whose records all exist (stale ones are dropped after the next restore).
            for key, value in snapshot.writes.items():
                table[key] = value
            for key in snapshot.deletes:
                table.pop(key, None)
        await self.flush_producer()
        for ack in snapshot.acks:
            ack()
        self._metrics.checkpoints.inc()
        self._metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    async def _stream(self, snapshot: Snapshot) -> bool:
        """Write a streamed compaction's parts, then its delta (before the snapshot's meta):
        at most ``COMPACTION_FLUSH_BYTES`` of them unflushed at a time, the event loop let run
        after each. False: the partition was revoked meanwhile (nothing more written)."""
        compaction = snapshot.compaction
        assert compaction is not None
        partition, runtime = snapshot.partition, snapshot.runtime
        parts = written = unflushed = 0
        for record in compaction_parts(compaction.head, compaction.units.entries()):
            with self._partition_scope(partition):
                self.table[part_key(partition, compaction.seq, parts)] = record
            parts += 1
            written += len(record)
            unflushed += len(record)
            if unflushed >= COMPACTION_FLUSH_BYTES:
                await self.flush_producer()
                unflushed = 0
            else:
                await asyncio.sleep(0)
            if self._runtimes.get(partition) is not runtime:
                return False
        whole = manifest(parts)
        with self._partition_scope(partition):
            self.table[delta_key(partition, compaction.seq)] = whole
        runtime.full_bytes = written + len(whole)
        return True

    def start(self, partition: int) -> None:
        """Snapshot as soon as the message being applied is done (in slices, the apply lock
        held); write it out beside the processing of later messages (the agent does not wait
        for the broker). A write-out that fails is raised by the next message."""
        self.raise_failed()
        if self.sealed or partition in self._requested:
            return
        taking = asyncio.ensure_future(self._snapshot_then_write_out(partition))
        self._requested[partition] = taking
        taking.add_done_callback(self._write_out_done)  # a failure is raised the same way

    async def _snapshot_then_write_out(self, partition: int) -> None:
        try:
            async with self._apply_lock:
                if self.sealed:
                    return  # e.g. the stop's last checkpoint came first: it covers this one
                self._requested.pop(partition, None)
                taking = asyncio.current_task()
                assert taking is not None
                self._snapshotting.add(taking)
                try:
                    snapshot = await self._snapshot_in_slices(partition)
                except BaseException:
                    # Its changes left the task's dirty sets: the next snapshot would miss them.
                    self.sealed = True
                    raise
                finally:
                    self._snapshotting.discard(taking)
                if snapshot is not None:
                    # Created before the apply lock is free: write-outs keep snapshot order.
                    writer = asyncio.ensure_future(self._write_out(snapshot))
                    self._write_outs.add(writer)
                    writer.add_done_callback(self._write_out_done)
        finally:
            if self._requested.get(partition) is asyncio.current_task():
                del self._requested[partition]

    def _write_out_done(self, writer: asyncio.Future[None]) -> None:
        self._write_outs.discard(writer)
        if not writer.cancelled() and writer.exception() is not None:
            self._failed_write_out = writer.exception()  # (the write-out sealed the stage)

    def raise_failed(self) -> None:
        failed, self._failed_write_out = self._failed_write_out, None
        if failed is not None:
            raise failed  # nothing of it was acked: the worker stops, a restart resumes

    async def drain(self, *, holding_apply_lock: bool = False) -> None:
        """Wait for every checkpoint started and every write-out under way (before
        partitions are revoked, or the last checkpoint); one that failed is raised by the
        next message. A caller holding the apply lock does not wait for the snapshots that
        wait for it (they find the stage sealed after the stop's last checkpoint)."""
        while True:
            under_way = [*self._snapshotting, *self._write_outs]
            if not holding_apply_lock:
                under_way += self._requested.values()
            if not under_way:
                break
            await asyncio.gather(*under_way, return_exceptions=True)
        async with self._lock:
            pass  # and a checkpoint awaited by its caller (the stop's), not among them

    async def checkpoint(self, partition: int) -> None:
        """Store task ``partition``'s changes with the input offsets they reflect, publish
        every output, wait for the broker (changelog and outputs), then ack that input."""
        self.raise_failed()
        snapshot = self.snapshot(partition)
        if snapshot is not None:
            await self._write_out(snapshot)

    def checkpoint_due(self) -> None:
        """Start the checkpoint of every task whose input went quiet with input applied and
        not stored yet (the timer's part: a partition's last burst, or input read directly, is
        stored without waiting for more input). Snapshot now, written out beside the timer, as
        the agent's are: a timer that waited for the broker here missed its next ticks on a
        backlog."""
        now = time.monotonic()
        for partition, runtime in list(self._runtimes.items()):
            if runtime.unstored and now - runtime.checkpointed_at >= self.interval_s:
                self.start(partition)
