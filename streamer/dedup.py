"""Drop repeated ``event_id``s (producer retries) within a horizon. Pure: times are arguments.

The store maps ``event_id -> (receive time ms, partition)``; in the worker it is a changelogged
Faust table, so what was seen survives restarts. Each partition has its own clock (the newest
broker timestamp it has seen) and its own deadlines: a key is deleted ``horizon`` after it was
first seen, while an event of the same partition is processed, so the delete's changelog
record lands in the partition the key was written to. The deadlines live in memory and are
rebuilt from the store (:meth:`Deduplicator.reindex`) after every partition assignment.

Retries keep their Kafka key, so they reach the same partition. Messages without a key may be
spread over partitions; duplicates among them are still caught while those partitions are on
the same worker.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from streamer.funnel.expiry import ExpiryIndex

__all__ = ["Deduplicator"]


class Deduplicator:
    def __init__(self, store: MutableMapping[str, tuple[int, int]], horizon_ms: int) -> None:
        self._store = store
        self._horizon_ms = horizon_ms
        self._deadlines: ExpiryIndex[str] = ExpiryIndex()
        self._clock: dict[int, int] = {}

    @property
    def horizon_ms(self) -> int:
        return self._horizon_ms

    def is_duplicate(self, partition: int, event_id: str, received_ms: int) -> bool:
        """True when ``event_id`` was seen within the horizon; otherwise remember it."""
        clock = max(self._clock.get(partition, received_ms), received_ms)
        self._clock[partition] = clock
        self.expire(partition, clock)
        if event_id in self._store:
            return True
        self._store[event_id] = (received_ms, partition)
        self._deadlines.schedule(partition, event_id, received_ms + self._horizon_ms)
        return False

    def expire(self, partition: int, now_ms: int) -> int:
        """Delete the keys of ``partition`` first seen more than a horizon before ``now_ms``."""
        expired = 0
        for event_id in self._deadlines.pop_due(partition, now_ms):
            self._store.pop(event_id, None)
            expired += 1
        return expired

    def reindex(self) -> int:
        """Rebuild every deadline from the store (after a restart or a rebalance)."""
        self._deadlines = ExpiryIndex()
        count = 0
        for event_id, (received_ms, partition) in list(self._store.items()):
            self._deadlines.schedule(partition, event_id, received_ms + self._horizon_ms)
            count += 1
        return count

    def tracked(self) -> int:
        return len(self._deadlines)
