"""The checkpoint log of one partition, as pure code over a mapping (the ``funnel-state``
table; no Faust here).

Per partition the table holds a *log*: delta records (``d:<p>:<seq>``, each at most
``DELTA_CHUNK_BYTES`` of changed sessions and windows, one or a few per checkpoint) and a meta
record (``t:<p>``, written last) naming the live range of deltas with the input offsets they
reflect. Once the deltas written since the last full record outweigh it (and at least
``MIN_COMPACTION_BYTES``), the next checkpoint writes every session and window again as the new
start of the log and deletes the older deltas (compaction, amortized under 1x).

A compaction of units on disk (user funnels: millions of units) is streamed: its records are
*parts* of one delta, ``d:<p>:<seq>:<part>``, written a slice at a time, then the delta itself,
``{"parts": n}`` (a *manifest*), then the meta naming it. Until that meta is written the parts
are leftovers beyond the log, as the deltas of any write-out cut short are.

:func:`read_log` reads it back, with the first edition's layout (one key per session and window)
and the deltas of a write-out cut short before its meta.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamer.funnel.task import Checkpoint

__all__ = [
    "DELTA_CHUNK_BYTES",
    "MIN_COMPACTION_BYTES",
    "Delta",
    "DeltaEncoder",
    "StoredLog",
    "delta_key",
    "encode_delta",
    "manifest",
    "meta_key",
    "part_key",
    "read_log",
]

# A checkpoint's delta records stay well under the broker's 1 MiB message limit; the log is
# compacted once the deltas written since its full start outweigh it (and this much at least).
DELTA_CHUNK_BYTES = 256 * 1024
MIN_COMPACTION_BYTES = 4 * 1024 * 1024


def meta_key(partition: int) -> str:
    return f"t:{partition}"


def delta_key(partition: int, seq: int) -> str:
    return f"d:{partition}:{seq:012d}"  # zero-padded: keys sort in log order


def part_key(partition: int, seq: int, part: int) -> str:
    """Part ``part`` of delta ``seq`` (a streamed compaction's records): read before it."""
    return f"{delta_key(partition, seq)}:{part:06d}"


def manifest(parts: int) -> bytes:
    """The delta that ``parts`` parts make up (it holds nothing else)."""
    return b'{"s":{},' + _EMPTY_HEAD + b',"parts":' + str(parts).encode() + b"}"


def _key_seq(key: str) -> int:
    """The sequence number of a delta's key or of one of its parts' keys."""
    return int(key.split(":")[2])


def _owned(key: str, partition: int, live: set[str]) -> bool:
    """A key of ``partition`` that its log does not name: a delta (or part) left over from a
    write-out cut short, or a record of the first edition's one-key-per-session layout."""
    if key in live or key == meta_key(partition):
        return False
    kind, _, rest = key.partition(":")
    return kind in ("d", "s", "w") and rest.startswith(f"{partition}:")


def _window_id(window: str, names: dict[str, int]) -> tuple[int, int] | None:
    funnel_name, start = window.rsplit(":", 1)
    index = names.get(funnel_name)
    return None if index is None else (index, int(start))


_EMPTY_HEAD = b'"ds":[],"w":{},"dw":[]'  # a delta record's head when nothing was deleted


def encode_delta(saved: Checkpoint, names: list[str]) -> list[bytes]:
    """``saved`` as delta records of at most about ``DELTA_CHUNK_BYTES`` each (a session
    larger than that gets a record of its own): ``{"s": {session id: state}, "ds": [deleted
    session ids], "w": {"funnel:start": counts}, "dw": [deleted windows]}``; deletions and
    windows travel in the first record. Nothing changed: no record."""
    encoder = DeltaEncoder(saved, names)
    encoder.add(saved.sessions)
    return encoder.records()


class DeltaEncoder:
    """:func:`encode_delta` with the sessions added a slice at a time (the same records)."""

    def __init__(self, saved: Checkpoint, names: list[str]) -> None:
        """``saved``'s deletions and windows (its sessions come through :meth:`add`)."""
        self._head = orjson.dumps(
            {
                "ds": sorted(saved.deleted_sessions),
                "w": {
                    f"{names[f]}:{start}": counts for (f, start), counts in saved.windows.items()
                },
                "dw": sorted(f"{names[f]}:{start}" for f, start in saved.deleted_windows),
            }
        )[1:-1]
        if saved.lifecycle:  # lifecycle funnels' figures: small, whole in every checkpoint
            self._head += b',"l":' + orjson.dumps(saved.lifecycle)
        self._chunks: list[list[bytes]] = [[]]
        self._size = len(self._head)
        self._head_sent = False  # in a record taken out already (take_done)
        # Lifecycle user records: records of their own after the sessions' (a compaction
        # writes every user), each about DELTA_CHUNK_BYTES at most, ``{"lu": {funnel:
        # {user: record}}}`` beside an empty head.
        self._users: list[dict[bytes, list[bytes]]] = []  # per record: funnel -> entries
        self._users_size = 0
        for name, records in saved.lifecycle_users.items():
            self.add_lifecycle_users(name, records)

    def add(self, sessions: Mapping[str, list[Any]]) -> None:
        self.add_entries(
            orjson.dumps(session_id) + b":" + orjson.dumps(state)
            for session_id, state in sessions.items()
        )

    def add_entries(self, entries: Iterable[bytes]) -> None:
        """Sessions already encoded, ``<JSON id>:<JSON state>`` each."""
        chunks = self._chunks
        for entry in entries:
            if chunks[-1] and self._size + len(entry) > DELTA_CHUNK_BYTES:
                chunks.append([])
                self._size = 0
            chunks[-1].append(entry)
            self._size += len(entry) + 1

    def add_lifecycle_users(self, funnel: str, records: Mapping[str, list[Any]]) -> None:
        key = orjson.dumps(funnel)
        for unit, record in records.items():
            entry = orjson.dumps(unit) + b":" + orjson.dumps(record)
            if not self._users or self._users_size + len(entry) > DELTA_CHUNK_BYTES:
                self._users.append({})
                self._users_size = 0
            self._users[-1].setdefault(key, []).append(entry)
            self._users_size += len(entry) + 1

    def take_done(self) -> list[bytes]:
        """The session records filled already (all but the one being filled), taken out: a
        caller streaming many sessions holds one record's worth of them at a time. Their
        concatenation with :meth:`records` is what :meth:`records` alone would give."""
        done, self._chunks = self._chunks[:-1], self._chunks[-1:]
        records = self._sessions_records(done)
        self._head_sent = self._head_sent or bool(done)
        return records

    def _sessions_records(self, chunks: list[list[bytes]]) -> list[bytes]:
        """Records of these sessions: the first ever carries the head."""
        return [
            b'{"s":{'
            + b",".join(chunk)
            + b"},"
            + (self._head if i == 0 and not self._head_sent else _EMPTY_HEAD)
            + b"}"
            for i, chunk in enumerate(chunks)
        ]

    def records(self) -> list[bytes]:
        users = [
            b'{"s":{},'
            + _EMPTY_HEAD
            + b',"lu":{'
            + b",".join(
                funnel + b":{" + b",".join(entries) + b"}" for funnel, entries in chunk.items()
            )
            + b"}}"
            for chunk in self._users
        ]
        if not self._chunks[0] and (self._head_sent or self._head == _EMPTY_HEAD):
            return users
        return self._sessions_records(self._chunks) + users


def compaction_parts(head: list[bytes], entries: Iterable[list[bytes]]) -> Iterator[bytes]:
    """The parts of a streamed compaction: ``head`` (the records of everything but the
    sessions), then the sessions of ``entries`` (batches of ``<JSON id>:<JSON state>``) as
    records of at most about ``DELTA_CHUNK_BYTES``, each yielded once filled."""
    yield from head
    encoder = DeltaEncoder(Checkpoint(), [])
    for batch in entries:
        encoder.add_entries(batch)
        yield from encoder.take_done()
    yield from encoder.records()


@dataclass
class Delta:
    """One delta record, parsed: sessions stored and deleted, windows stored and deleted,
    lifecycle funnels' figures and user records (absent in records written before them)."""

    sessions: dict[str, list[Any]]
    deleted_sessions: list[str]
    windows: dict[tuple[int, int], dict[str, Any]]
    deleted_windows: list[tuple[int, int]]
    lifecycle: dict[str, dict[str, Any]] = field(default_factory=dict)
    lifecycle_users: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    parts: int = 0  # records read before this one (a streamed compaction's manifest)

    @classmethod
    def parse(cls, raw: bytes, names: dict[str, int]) -> Delta:
        """A window of a funnel not in ``names`` (funnel name -> index) is left out."""
        record = orjson.loads(raw)
        windows = {}
        for window, counts in record["w"].items():
            if (window_key := _window_id(window, names)) is not None:
                windows[window_key] = counts
        deleted = [key for w in record["dw"] if (key := _window_id(w, names)) is not None]
        return cls(
            record["s"],
            record["ds"],
            windows,
            deleted,
            record.get("l", {}),
            record.get("lu", {}),
            record.get("parts", 0),
        )


@dataclass
class StoredLog:
    """What a partition's log holds: its meta record, the sessions and windows it reflects,
    the live range of deltas and the keys of the partition it does not name."""

    meta: dict[str, Any]
    sessions: dict[str, list[Any]] = field(default_factory=dict)
    windows: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    first: int = 0  # the live range of delta sequence numbers [first, next_seq)
    next_seq: int = 0
    log_bytes: int = 0
    stale: list[str] = field(default_factory=list)  # keys to delete at the next write-out
    first_edition: bool = False  # stored one key per session and window: write a full log
    cut_short: list[int] = field(default_factory=list)  # deltas of a write-out cut short
    lifecycle: dict[str, dict[str, Any]] = field(default_factory=dict)  # the latest figures
    lifecycle_users: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def add(self, delta: Delta) -> None:
        """Replay one delta: deletions, then updates."""
        self.lifecycle.update(delta.lifecycle)
        for funnel, records in delta.lifecycle_users.items():
            self.lifecycle_users.setdefault(funnel, {}).update(records)
        for session_id in delta.deleted_sessions:
            self.sessions.pop(session_id, None)
        self.sessions.update(delta.sessions)
        for window_key in delta.deleted_windows:
            self.windows.pop(window_key, None)
        self.windows.update(delta.windows)


def read_log(
    table: Mapping[str, bytes],
    partition: int,
    names: dict[str, int],
    since: int | None = None,
    each: Callable[[Delta], None] | None = None,
) -> StoredLog:
    """The log of ``partition`` in ``table``, replayed: deltas in order (deletions, then
    updates); a window of a funnel not in ``names`` (funnel name -> index) is left out.

    ``each``: given each delta in order instead of the result's sessions and windows (a store
    on disk takes them, so that they are never all in memory). ``since``: a local view holds
    the log up to that sequence number. Only the deltas from there on are read (``log_bytes``
    counts those alone); the table's keys are not scanned (that reads the whole log): the
    deltas of a write-out cut short are found after the live range, where they are, and
    older leftovers wait for a restore that reads everything."""
    meta_raw = table.get(meta_key(partition))
    log = StoredLog(orjson.loads(meta_raw) if meta_raw is not None else {})
    log.first, log.next_seq = (int(seq) for seq in log.meta.get("log", (0, 0)))
    live = {delta_key(partition, seq) for seq in range(max(log.first, since or 0), log.next_seq)}
    apply = each or log.add
    live_parts: set[str] = set()
    for key in sorted(live):
        delta = Delta.parse(_record(table, partition, key, log), names)
        for part in range(delta.parts):  # a streamed compaction: its parts, then itself
            part_at = part_key(partition, _key_seq(key), part)
            live_parts.add(part_at)
            apply(Delta.parse(_record(table, partition, part_at, log), names))
        apply(delta)
    if since is None:
        live |= live_parts
        log.stale = [key for key in list(table.keys()) if _owned(key, partition, live)]
    else:
        after = log.next_seq
        while (found := _written_at(table, partition, after)) is not None:
            log.stale += found
            after += 1
    if log.meta and "log" not in log.meta:
        # Stored by the first edition (one key per session and window): loaded, written
        # again as a log by the first checkpoint, then deleted.
        for key in log.stale:
            kind, _, rest = key.split(":", 2)
            if kind == "s":
                log.sessions[rest] = orjson.loads(table[key])
            elif kind == "w" and (window_key := _window_id(rest, names)) is not None:
                log.windows[window_key] = orjson.loads(table[key])
        log.first_edition = True
    log.cut_short = sorted({_key_seq(key) for key in log.stale if key.startswith("d:")})
    return log


def _record(table: Mapping[str, bytes], partition: int, key: str, log: StoredLog) -> bytes:
    raw = table.get(key)
    if raw is None:
        raise RuntimeError(f"partition {partition}: checkpoint record {key} is missing")
    log.log_bytes += len(raw)
    return raw


def _written_at(table: Mapping[str, bytes], partition: int, seq: int) -> list[str] | None:
    """The keys of delta ``seq`` and of its parts in ``table`` (None: neither): past the live
    range, a write-out cut short (a streamed compaction's parts come before its delta)."""
    found = [delta_key(partition, seq)] if delta_key(partition, seq) in table else []
    part = 0
    while part_key(partition, seq, part) in table:
        found.append(part_key(partition, seq, part))
        part += 1
    return found or None
