"""What the sessions stage keeps beside each task (a partition): input offsets, acks waiting for a
checkpoint, the state log's range, timings; and a task restored from its checkpoint log."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamer.formatting import watermark_text
from streamer.funnel.session import NEVER, CompiledFunnel
from streamer.funnel.task import Task
from streamer.funnel.windows import WindowCounts
from streamer.pipeline.sessions.checkpoint_log import Delta, meta_key, read_log
from streamer.pipeline.sessions.unit_store import UnitStore, view_position

__all__ = ["TaskRuntime", "restore_runtime"]

log = logging.getLogger(__name__)

# Owners a log's meta record remembers (a store written by an older one is rebuilt).
MAX_OWNERS = 32


@dataclass
class TaskRuntime:
    """A task plus what the adapter keeps for it: offsets reflected and events to ack."""

    task: Task
    # User funnels' unit tasks: the units on disk behind a cache (the task's sessions and
    # wakes), brought up to date by every checkpoint (docs/decisions/0009).
    store: UnitStore | None = None
    offsets: dict[str, int] = field(default_factory=dict)  # topic -> next offset to apply
    unacked: list[Any] = field(default_factory=list)  # Faust events awaiting the checkpoint
    # Messages applied since the last snapshot: the delivered ones (each with an ack above) and
    # those read directly (a hole: Faust never delivered them, so there is nothing to ack).
    unstored: int = 0
    storing: int = 0  # messages of write-outs under way: applied, not stored yet
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
    compacting: bool = False  # a streamed compaction's write-out is under way
    stale_keys: list[str] = field(default_factory=list)
    # Grows with every restore (new owner, restart): this owner's partials supersede those of
    # earlier owners of the partition, whatever their input offsets.
    generation: int = 0
    # Unit tasks: each owner's generation with the log position it restored from, newest
    # last, in the log's meta record (a local store's position is checked against it).
    owners: list[list[int]] = field(default_factory=list)
    # Funnels added since the checkpoint, whose open sessions are still to be rebuilt from
    # the input the checkpoint reflects (see ``streamer.pipeline.sessions.catch_up``).
    catch_up: tuple[int, ...] = ()
    # Records for the merger to send before this task's next partials
    # (see ``catch_up.start_announcements``).
    announce: list[dict[str, Any]] = field(default_factory=list)
    # Lifecycle funnels (unit tasks): when their figures were last published (None: not yet
    # by this owner) and what they were, by funnel (an unchanged one is not sent again).
    lifecycle_published_at: float | None = None
    lifecycle_sent: dict[str, str] = field(default_factory=dict)


def restore_runtime(
    table: Mapping[str, bytes],
    partition: int,
    funnels: tuple[CompiledFunnel, ...],
    *,
    retention_ms: int,
    topics: tuple[str, ...],
    forwards_units: bool = False,
    store: UnitStore | None = None,
) -> tuple[TaskRuntime, dict[str, Any]]:
    """Task ``partition`` as its checkpoint log in ``table`` left it, and the log's meta record
    (empty: no checkpoint yet). With ``store``, the task's units live there: if the log vouches
    for what it holds (:func:`view_position`), only the log's newer deltas are read and applied
    to it; else it is emptied and rebuilt from the whole log, a delta at a time, committed
    every ``REBUILD_CHUNK_UNITS`` units so that the cache lets go of them."""
    started = time.perf_counter()
    names = {f.name: i for i, f in enumerate(funnels)}
    meta_raw = table.get(meta_key(partition))
    log_meta: dict[str, Any] = orjson.loads(meta_raw) if meta_raw is not None else {}
    since: int | None = None
    loader: _StoreLoader | None = None
    if store is not None:
        since = view_position(store.meta, log_meta, list(names))
        if since is None:
            store.clear()
    task = Task(
        funnels,
        partition,
        retention_ms=retention_ms,
        forwards_units=forwards_units,
        sessions=None if store is None else store.sessions,
        wakes=None if store is None else store.wakes,
        lifecycle_users=None if store is None else store.lifecycle_users,
    )
    if store is not None and (
        since is not None
        or not log_meta  # nothing stored yet
        # (else the sessions' progress is realigned to changed funnels, or the log is of the
        # first edition: loaded into memory, as without a store)
        or (log_meta.get("funnels") == list(names) and "log" in log_meta)
    ):
        loader = _StoreLoader(task, store)
        index = store.meta["index"] if since is not None else _NO_INDEX
        task.resume(int(log_meta.get("watermark", NEVER)), index)
    runtime = TaskRuntime(task, store=store)
    # A kept store knows the bytes of the log it holds (they are not read again).
    held_bytes = 0 if since is None or store is None else int(store.meta.get("log_bytes", 0))
    stored = read_log(
        table, partition, names, since=since, each=None if loader is None else loader.apply
    )
    meta, first, next_seq = stored.meta, stored.first, stored.next_seq
    runtime.compact_next = stored.first_edition
    runtime.log_first, runtime.log_next = first, next_seq
    if stored.cut_short:
        # Deltas of a write-out cut short before its meta: new records must not reuse
        # their keys (the deletes would drop them), and the log must stay one range.
        runtime.log_next = max(next_seq, max(stored.cut_short) + 1)
        runtime.compact_next = True
    # The restored log counts as the full start: compaction once deltas outweigh it.
    runtime.full_bytes, runtime.delta_bytes = held_bytes + stored.log_bytes, 0
    runtime.stale_keys = stored.stale
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
    if loader is None:
        watermark = int(meta.get("watermark", NEVER))
        task.restore(watermark, stored.sessions.items(), stored.windows, stored_funnels)
        task.restore_lifecycle(stored.lifecycle, stored.lifecycle_users)
    runtime.offsets = {str(k): int(v) for k, v in meta.get("offsets", {}).items()}
    for topic in topics:
        # Nothing of this input applied yet: it starts at the log's start (the group
        # reads from the earliest offset). Said, not assumed: Faust may deliver from
        # further on (what it fetched before a rebalance is cleared from its buffers and
        # never handed over again), and the gap is then read directly like any other.
        runtime.offsets.setdefault(topic, 0)
    task.forwarded = int(meta.get("forwarded", 0))  # user funnels: see streamer.pipeline.units
    runtime.source_offsets = {str(k): int(v) for k, v in meta.get("source_offsets", {}).items()}
    # Wall-clock milliseconds only order the owners of a partition (never a funnel decision):
    # monotonic even if the previous owner died before its first checkpoint.
    runtime.generation = max(int(meta.get("generation", 0)) + 1, round(time.time() * 1000))
    if store is not None:
        # What the log says up to its meta, written by its last writer: a view of that.
        store.commit(
            task.encode_sessions(stored.sessions) if loader is None else loader.take_changed(),
            (),
            {
                "log": [first, next_seq],
                "generation": meta.get("generation", 0),
                "funnels": list(names),
                "index": task.index_record(),
                "log_bytes": runtime.full_bytes,
            },
        )
        runtime.owners = [
            *meta.get("owners", ())[-(MAX_OWNERS - 1) :],
            [runtime.generation, next_seq],
        ]
    log.info(
        "partition %d: restored %d sessions, %d open windows from %d records (%d bytes), "
        "watermark %s, offsets %s (%.2fs)%s",
        partition,
        len(task.sessions),
        len(task.windows),
        next_seq - first,
        stored.log_bytes,
        watermark_text(task.watermark_ms),
        meta.get("offsets") or "none (first start)",
        time.perf_counter() - started,
        ""
        if since is None
        else f"; units on disk kept, {0 if loader is None else loader.applied} "
        f"changed by the {next_seq - since} newer records",
    )
    return runtime, meta


# A rebuilt store is committed every so many units read from the log: the cache lets go.
REBUILD_CHUNK_UNITS = 20_000
_NO_INDEX: dict[str, Any] = {"windows": [], "open": [], "pending": []}


class _StoreLoader:
    """Applies the log's deltas to a task whose units are on disk (resumed from the store's
    indexes, or from nothing: a rebuild), committing the store every
    ``REBUILD_CHUNK_UNITS`` units with no meta of the log (a restore cut short rebuilds).
    The store takes each unit's state as the log holds it: encoding the decoded state again
    gives the same, and took about a quarter of a rebuild's time."""

    def __init__(self, task: Task, store: UnitStore) -> None:
        self._task = task
        self._store = store
        self._changed: dict[str, list[Any]] = {}  # unit -> its state as stored
        self.applied = 0

    def apply(self, delta: Delta) -> None:
        task, changed = self._task, self._changed
        for session_id in delta.deleted_sessions:
            task.replace_stored(session_id, None)
            changed.pop(session_id, None)
        for session_id, saved in delta.sessions.items():
            task.replace_stored(session_id, saved)
            changed[session_id] = saved
        self.applied += len(delta.deleted_sessions) + len(delta.sessions)
        for key in delta.deleted_windows:
            task.windows.pop(key, None)
        for key, counts in delta.windows.items():
            task.windows[key] = WindowCounts.from_json(counts)
        # Lifecycle records go to the store's own key space (written by the next commit).
        task.restore_lifecycle(delta.lifecycle, delta.lifecycle_users)
        if len(changed) >= REBUILD_CHUNK_UNITS:
            self._store.commit(self.take_changed(), (), {})

    def take_changed(self) -> dict[str, list[Any]]:
        changed, self._changed = self._changed, {}
        return changed
