"""Open units on disk: one partition's sessions (or users) in a local RocksDB behind a bounded
in-memory cache, with the index of their wake times beside them (issue "Scale past memory";
docs/decisions/0009-open-units-on-disk.md).

A user funnel over 14 to 90 days keeps millions of units open for weeks. Memory holds the ones
in use (the cache); the disk holds all of them. The checkpoint log in Kafka stays the truth:
this store is a local view of it that each checkpoint updates in one atomic write batch,
together with the log position the batch reflects (:meth:`UnitStore.commit`). So the disk
never holds a state that no checkpoint stored, and a restart on the same disk replays only the
log's newer deltas instead of loading every unit.

Write-back: a unit changed since the last checkpoint stays in the cache (the task's dirty set
pins it) until the checkpoint that stores it; only stored units are evicted, least recently
used first. Between two checkpoints the cache may therefore exceed its bound by the units
touched in one interval, never by the units merely open.

Layout (raw bytes): ``s<unit id>`` -> ``[wake_ms, state]`` (the state as the checkpoint log
stores it, :meth:`SessionState.encodable`); ``w<wake time, 8 bytes big-endian, offset>
<unit id>`` -> empty, so the units due before a watermark are one ordered range scan;
``m`` -> the meta record: the log position the store reflects and the generation of the owner
that wrote the log up to there, the funnels, and the task's indexes at that position (windows,
open attempts, buffered events: :meth:`Task.index_record`), so that a restart need not read
every unit. :func:`view_position` says whether the checkpoint log vouches for the store.
``l<funnel>\x00<unit id>`` -> a lifecycle funnel's record of one user
(:class:`~streamer.funnel.lifecycle.UserRecord`): a key space of its own, because a record
outlives the unit's state, which is forgotten after the unit's retention
(docs/decisions/0009-open-units-on-disk.md, "Lifecycle records").
"""

from __future__ import annotations

import heapq
import shutil
from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator, Mapping, MutableMapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
from rocksdict import AccessType, Checkpoint, Options, Rdict, WriteBatch

from streamer.funnel.lifecycle import UserRecord
from streamer.funnel.session import NEVER
from streamer.funnel.task import SessionState

__all__ = [
    "CachedSessions",
    "FrozenUnits",
    "LifecycleUsers",
    "UnitStore",
    "WakeIndex",
    "view_position",
]

_STATE = b"s"
_WAKE = b"w"
_WAKE_END = b"x"  # after every wake key
_META = b"m"
_LIFECYCLE = b"l"
# Wake times are signed milliseconds; shifted so their big-endian bytes sort as numbers do.
_TIME_OFFSET = 2**63


def _state_key(unit_id: str) -> bytes:
    return _STATE + unit_id.encode()


def _wake_key(at_ms: int, unit_id: str) -> bytes:
    return _WAKE + (at_ms + _TIME_OFFSET).to_bytes(8, "big") + unit_id.encode()


def _parse_wake_key(key: bytes) -> tuple[int, str]:
    return int.from_bytes(key[1:9], "big") - _TIME_OFFSET, key[9:].decode()


def _keys_from(db: Rdict, start: bytes) -> Iterator[bytes]:
    """The store's keys from ``start`` in order, while they share its first byte (its kind)."""
    kind = start[:1]
    for key in db.keys(from_key=start):
        assert isinstance(key, bytes)  # raw mode: keys are bytes
        if not key.startswith(kind):
            return
        yield key


# A worker holds one store per unit task (partition): RocksDB's 64 MiB default memtable each
# would dominate the memory the cache is meant to bound.
_WRITE_BUFFER_BYTES = 16 * 2**20


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    return options


class CachedSessions(MutableMapping[str, SessionState]):
    """The task's ``sessions`` mapping over the disk: reads go through an LRU cache (a miss
    decodes the stored state), writes and deletions wait in memory for :meth:`UnitStore.commit`.
    """

    def __init__(self, db: Rdict, capacity: int, stored_count: int) -> None:
        self._db = db
        self.capacity = capacity
        self._cache: OrderedDict[str, SessionState] = OrderedDict()
        self._deleted: set[str] = set()  # stored, deleted since the last commit
        # The last id a read found on neither the cache nor the disk: a new unit is looked up
        # (``get``) and then set, and the set need not ask the disk again.
        self._absent: str | None = None
        self._count = stored_count
        self.misses = 0  # reads that found the unit on the disk (cold)
        self.disk_reads = 0  # every lookup that went to the disk, found or not

    # --- Mapping -------------------------------------------------------------------------
    def __getitem__(self, unit_id: str) -> SessionState:
        state = self._cache.get(unit_id)
        if state is not None:
            self._cache.move_to_end(unit_id)
            return state
        if unit_id in self._deleted:
            raise KeyError(unit_id)
        raw = self._stored(unit_id)
        if raw is None:
            self._absent = unit_id
            raise KeyError(unit_id)
        self.misses += 1
        wake_ms, saved = orjson.loads(raw)
        state = SessionState.from_json(unit_id, saved)
        state.wake_ms = wake_ms  # runtime only in the log; the wake index here needs it
        self._cache[unit_id] = state
        return state

    def __setitem__(self, unit_id: str, state: SessionState) -> None:
        if unit_id not in self._cache and (
            unit_id in self._deleted or unit_id == self._absent or self._stored(unit_id) is None
        ):
            self._count += 1
        if unit_id == self._absent:
            self._absent = None
        self._deleted.discard(unit_id)
        self._cache[unit_id] = state
        self._cache.move_to_end(unit_id)

    def __delitem__(self, unit_id: str) -> None:
        if self._cache.pop(unit_id, None) is None and (
            unit_id in self._deleted or self._stored(unit_id) is None
        ):
            raise KeyError(unit_id)
        self._deleted.add(unit_id)
        self._count -= 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        """Every unit id: the stored ones (in key order) then the new ones in the cache."""
        stored: set[str] = set()
        for key in _keys_from(self._db, _STATE):
            unit_id = key[1:].decode()
            stored.add(unit_id)
            if unit_id not in self._deleted:
                yield unit_id
        for unit_id in list(self._cache):
            if unit_id not in stored:
                yield unit_id

    def _stored(self, unit_id: str) -> bytes | None:
        """The unit's record on the disk (None: not stored)."""
        self.disk_reads += 1
        raw = self._db.get(_state_key(unit_id))
        assert raw is None or isinstance(raw, bytes)  # raw mode: values are bytes
        return raw

    # --- the cache -----------------------------------------------------------------------
    def encode(self, unit_ids: Iterable[str]) -> dict[str, list[Any]]:
        """The stored form of each unit (:meth:`SessionState.encodable`) without filling the
        cache (a compaction writes every unit to the log): a cached unit is encoded, one on
        the disk only is taken as stored there (only stored units leave the cache)."""
        encoded: dict[str, list[Any]] = {}
        for unit_id in unit_ids:
            state = self._cache.get(unit_id)
            if state is not None:
                encoded[unit_id] = state.encodable()
                continue
            raw = None if unit_id in self._deleted else self._stored(unit_id)
            if raw is None:
                raise KeyError(unit_id)
            encoded[unit_id] = orjson.loads(raw)[1]
        return encoded

    def take_deletions(self) -> set[str]:
        """The stored units deleted since the last commit, for its batch (then forgotten:
        the disk will not have them any more)."""
        deleted, self._deleted = self._deleted, set()
        return deleted

    @property
    def cached(self) -> int:
        return len(self._cache)

    def evict(self, pinned: Container[str]) -> int:
        """Drop the least recently used units beyond the capacity, except ``pinned`` ones
        (changed since the last commit: the disk does not have them yet). Returns how many."""
        cache = self._cache
        evicted = skipped = 0
        while len(cache) > self.capacity and skipped < len(cache):
            unit_id, state = cache.popitem(last=False)
            if unit_id in pinned:
                cache[unit_id] = state  # to the back: it is in use
                skipped += 1
            else:
                evicted += 1
        return evicted


class LifecycleUsers(MutableMapping[str, UserRecord]):
    """One lifecycle funnel's user records (the :class:`~streamer.funnel.lifecycle.Lifecycle`
    core's ``users``) over the disk, under ``l<funnel>\x00``. Records are never forgotten
    with their unit: a buyer's repeat orders and churn are read against them for months.

    Write-back as the units': a record set since the last commit waits in memory for
    :meth:`UnitStore.commit`; stored records are read through an LRU cache of ``capacity``.
    The core sets a record after every change, so a set is what marks it changed."""

    def __init__(self, db: Rdict, funnel: str, capacity: int) -> None:
        self._db = db
        self._prefix = _LIFECYCLE + funnel.encode() + b"\x00"
        self.capacity = capacity
        self._cache: OrderedDict[str, UserRecord] = OrderedDict()  # stored, unchanged
        self._changed: dict[str, UserRecord] = {}  # set since the last commit
        self._deleted: set[str] = set()  # deleted since the last commit

    def _key(self, unit_id: str) -> bytes:
        return self._prefix + unit_id.encode()

    def __getitem__(self, unit_id: str) -> UserRecord:
        record = self._changed.get(unit_id)
        if record is not None:
            return record
        record = self._cache.get(unit_id)
        if record is not None:
            self._cache.move_to_end(unit_id)
            return record
        raw = None if unit_id in self._deleted else self._db.get(self._key(unit_id))
        if raw is None:
            raise KeyError(unit_id)
        record = self._cache[unit_id] = UserRecord.from_json(orjson.loads(raw))
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return record

    def __setitem__(self, unit_id: str, record: UserRecord) -> None:
        self._cache.pop(unit_id, None)
        self._deleted.discard(unit_id)
        self._changed[unit_id] = record

    def __delitem__(self, unit_id: str) -> None:
        if unit_id not in self:
            raise KeyError(unit_id)
        self._cache.pop(unit_id, None)
        self._changed.pop(unit_id, None)
        self._deleted.add(unit_id)

    def __iter__(self) -> Iterator[str]:
        """Every user id: the stored ones (a scan of the disk: for tests and tools, not the
        event path), then the ones new since the last commit."""
        stored: set[str] = set()
        for key in self._db.keys(from_key=self._prefix):
            assert isinstance(key, bytes)  # raw mode: keys are bytes
            if not key.startswith(self._prefix):
                break
            unit_id = key[len(self._prefix) :].decode()
            stored.add(unit_id)
            if unit_id not in self._deleted:
                yield unit_id
        yield from (unit_id for unit_id in list(self._changed) if unit_id not in stored)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def changed(self) -> dict[str, list[Any]]:
        """The records set since the last commit, in their stored form."""
        return {unit_id: record.to_json() for unit_id, record in self._changed.items()}

    def write(self, batch: WriteBatch) -> None:
        """Put the changes since the last commit in ``batch``; they are then stored ones."""
        for unit_id, record in self._changed.items():
            batch.put(self._key(unit_id), orjson.dumps(record.to_json()))
            self._cache[unit_id] = record
        for unit_id in self._deleted:
            batch.delete(self._key(unit_id))
        self._changed = {}
        self._deleted = set()
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)


class WakeIndex:
    """When each unit next needs the clock (a step timeout, forgetting it), on disk; moves since
    the last commit wait in memory (and are written by :meth:`UnitStore.commit`). The task's
    :class:`~streamer.funnel.task.WakeQueue`."""

    def __init__(self, db: Rdict) -> None:
        self._db = db
        self._added: list[tuple[int, str]] = []  # a heap, since the last commit
        self._removed: set[tuple[int, str]] = set()  # stored entries taken out since
        self._loaded: list[tuple[int, str]] = []  # a heap: stored entries read, due
        # Where the last scan stopped: every stored entry before it is loaded or taken out,
        # until the next commit writes new ones. A watermark step with nothing stored due
        # then costs no scan, and a scan does not walk again what the last one took.
        self._scanned_to = _WAKE
        self.scans = 0  # range scans of the disk

    def move(self, unit_id: str, old_ms: int, new_ms: int) -> None:
        if old_ms == new_ms:
            return
        if old_ms != NEVER:
            self._removed.add((old_ms, unit_id))
        if new_ms != NEVER:
            self._removed.discard((new_ms, unit_id))
            heapq.heappush(self._added, (new_ms, unit_id))

    def pop_due(self, before_ms: int) -> tuple[int, str] | None:
        """The earliest entry before ``before_ms``, taken out of the index (None: nothing is
        due). An entry may be stale (the unit moved or left since it was written): the task
        checks the unit's ``wake_ms``, as with the in-memory heap's lazy deletion."""
        if not self._loaded:
            self._load(before_ms)
        loaded, added = self._loaded, self._added
        if loaded and loaded[0][0] < before_ms and (not added or loaded[0] <= added[0]):
            return heapq.heappop(loaded)
        if added and added[0][0] < before_ms:
            return heapq.heappop(added)
        return None

    def _load(self, before_ms: int, limit: int = 1024) -> None:
        """Read up to ``limit`` stored entries before ``before_ms`` (one ordered range scan
        from where the last one stopped)."""
        end = _wake_key(before_ms, "")
        if end <= self._scanned_to:
            return  # scanned already: nothing stored is due
        self.scans += 1
        removed = self._removed
        stopped_at = _WAKE_END  # the scan ran off the end of the wake keys
        for key in _keys_from(self._db, self._scanned_to):
            if key >= end or len(self._loaded) >= limit:
                stopped_at = key
                break
            entry = _parse_wake_key(key)
            if entry not in removed:
                removed.add(entry)  # taken out: deleted from the disk by the next commit
                self._loaded.append(entry)  # in key order: already a heap
        self._scanned_to = stopped_at

    def write(self, batch: WriteBatch) -> None:
        for at_ms, unit_id in self._added:
            batch.put(_wake_key(at_ms, unit_id), b"")
        for at_ms, unit_id in self._removed:
            batch.delete(_wake_key(at_ms, unit_id))
        self._added = []
        self._removed = set()
        self._scanned_to = _WAKE  # the batch may write entries anywhere


def view_position(
    view: Mapping[str, Any], log: Mapping[str, Any], funnels: list[str]
) -> int | None:
    """The log position from which a store with meta record ``view`` can be brought up to date
    by the newer deltas of the log whose meta record is ``log`` (None: rebuild the store).

    The store is committed before the log's write-out (the same snapshot, under the apply
    lock), so after a SIGKILL it may be ahead of the log: that is a state no checkpoint stored.
    It is trusted only if the log holds every record it reflects: either the log's last writer
    is the owner that wrote the store, at the same position, or the owner after it (``owners``:
    each owner's generation and the log position it restored from) restored from at least the
    store's position, and no compaction since dropped the deltas in between."""
    if not view or not log or view.get("funnels") != funnels or log.get("funnels") != funnels:
        return None
    position = int(view["log"][1])
    first, next_seq = (int(seq) for seq in log.get("log", (0, 0)))
    if not first <= position <= next_seq:
        return None  # ahead of the log, or behind a compaction
    generation = view.get("generation")
    if log.get("generation") == generation:
        return position if position == next_seq else None
    owners = [(int(g), int(at)) for g, at in log.get("owners", ())]
    for (owner, _), (_, successor_read) in pairwise(owners):
        if owner == generation:
            return position if successor_read >= position else None
    return None  # the log does not say who wrote after the store's owner


# Units read from a frozen view per batch of a compaction's stream (about a quarter of a log
# record: 1,000 units of 246 B).
FROZEN_BATCH_UNITS = 1_000


class FrozenUnits:
    """Every unit as one commit left them, while later commits go on: a RocksDB checkpoint of
    the store (its files hard-linked, so it costs a memtable flush, not a copy) opened read-only
    beside it. A compaction streams the log's full record from it after the task has moved on.
    (rocksdict 0.3's ``Rdict.snapshot()`` honours the snapshot for reads of one key but not
    for iteration, which sees later writes.)"""

    def __init__(self, db: Rdict, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)  # a SIGKILLed compaction's
        Checkpoint(db).create_checkpoint(str(path))
        self.path = path
        self._db: Rdict | None = Rdict(
            str(path), Options(raw_mode=True), access_type=AccessType.read_only()
        )

    def entries(self) -> Iterator[list[bytes]]:
        """Every unit as the checkpoint log stores it, ``<JSON id>:<JSON state>``, in batches
        of ``FROZEN_BATCH_UNITS`` (the state's bytes as stored: not decoded again)."""
        assert self._db is not None, "closed"
        batch: list[bytes] = []
        for key, value in self._db.items(from_key=_STATE):
            assert isinstance(key, bytes)  # raw mode: keys and values are bytes
            assert isinstance(value, bytes)
            if not key.startswith(_STATE):
                break
            # ``[wake_ms, state]`` (UnitStore.commit): the state is what follows the comma.
            state = value[value.index(b",") + 1 : -1]
            batch.append(orjson.dumps(key[1:].decode()) + b":" + state)
            if len(batch) >= FROZEN_BATCH_UNITS:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        """Closed and deleted (again: nothing)."""
        if self._db is not None:
            self._db.close()
            self._db = None
            shutil.rmtree(self.path, ignore_errors=True)


class UnitStore:
    """One partition's units on disk at ``path``: :attr:`sessions` (the task's mapping),
    :attr:`wakes`, and the meta record of the last commit."""

    def __init__(self, path: Path, *, cache_units: int) -> None:
        self.path = path
        self._cache_units = cache_units
        self._open()

    def _open(self) -> None:
        path = self.path
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), _options())
        raw_meta = self._db.get(_META)
        self.meta: dict[str, Any] = orjson.loads(raw_meta) if raw_meta is not None else {}
        self.sessions = CachedSessions(self._db, self._cache_units, int(self.meta.get("units", 0)))
        self.wakes = WakeIndex(self._db)
        self._lifecycles: dict[str, LifecycleUsers] = {}

    def lifecycle_users(self, funnel: str) -> LifecycleUsers:
        """The user records of lifecycle funnel ``funnel`` (one mapping per funnel, kept:
        :meth:`commit` writes its changes)."""
        found = self._lifecycles.get(funnel)
        if found is None:
            found = self._lifecycles[funnel] = LifecycleUsers(self._db, funnel, self._cache_units)
        return found

    def commit(
        self,
        states: Mapping[str, list[Any]],
        deleted: Iterable[str],
        meta: Mapping[str, Any],
        *,
        pinned: Container[str] = (),
    ) -> None:
        """Store one checkpoint: ``states`` (encodable, as :meth:`Task.checkpoint` gives them;
        each unit is in the cache, whose ``wake_ms`` is stored beside it), the ``deleted``
        units, the wake index's moves, the lifecycle records set since and ``meta`` (the log
        position this reflects), in one atomic write; then evict down to the cache's capacity,
        keeping ``pinned`` units."""
        batch = WriteBatch(raw_mode=True)
        cache = self.sessions
        for unit_id, saved in states.items():
            wake_ms = cache[unit_id].wake_ms
            batch.put(_state_key(unit_id), orjson.dumps([wake_ms, saved]))
        # Every unit the mapping deleted, whether or not the caller names it: a compaction's
        # checkpoint names none, and a unit left on disk would come back at the next read.
        for unit_id in cache.take_deletions().union(deleted):
            batch.delete(_state_key(unit_id))
        self.wakes.write(batch)
        for users in self._lifecycles.values():
            users.write(batch)
        self.meta = {**meta, "units": len(cache)}
        batch.put(_META, orjson.dumps(self.meta))
        self._db.write(batch)
        cache.evict(pinned)

    def freeze(self) -> FrozenUnits:
        """Every unit as the last commit left them, for as long as the caller needs them."""
        return FrozenUnits(self._db, self.path.with_name(self.path.name + ".frozen"))

    def disk_bytes(self) -> int:
        """Bytes of the store's files on disk."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def clear(self) -> None:
        """Delete everything stored (a store the log does not vouch for is rebuilt)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._open()

    def close(self) -> None:
        self._db.close()
