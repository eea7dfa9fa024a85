"""Per-partition deadlines for keyed state: which keys are due for expiry at a given time.

Faust tables cannot expire keys by themselves on event time, and a delete must be written
while processing an event *of the key's partition* (its changelog goes to that partition).
So each partition keeps a min-heap of ``(deadline, key)``; rescheduling a key leaves the old
entry in the heap and it is skipped when popped (lazy deletion). Pure: times are arguments.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["ExpiryIndex"]

K = TypeVar("K", bound=Hashable)


@dataclass
class _PartitionDeadlines(Generic[K]):
    heap: list[tuple[int, K]] = field(default_factory=list)
    deadline_of: dict[K, int] = field(default_factory=dict)


class ExpiryIndex(Generic[K]):
    def __init__(self) -> None:
        self._partitions: dict[int, _PartitionDeadlines[K]] = {}

    def schedule(self, partition: int, key: K, deadline: int) -> None:
        """Expire ``key`` once time reaches ``deadline`` (replaces an earlier deadline)."""
        slot = self._partitions.setdefault(partition, _PartitionDeadlines())
        if slot.deadline_of.get(key) == deadline:
            return
        slot.deadline_of[key] = deadline
        heapq.heappush(slot.heap, (deadline, key))

    def cancel(self, partition: int, key: K) -> None:
        slot = self._partitions.get(partition)
        if slot is not None:
            slot.deadline_of.pop(key, None)

    def next_deadline(self, partition: int) -> int | None:
        slot = self._partitions.get(partition)
        while slot is not None and slot.heap:
            deadline, key = slot.heap[0]
            if slot.deadline_of.get(key) == deadline:
                return deadline
            heapq.heappop(slot.heap)  # stale entry
        return None

    def pop_due(self, partition: int, now: int) -> Iterator[K]:
        """Yield and forget the keys of ``partition`` whose deadline is ``<= now``."""
        slot = self._partitions.get(partition)
        if slot is None:
            return
        while slot.heap and slot.heap[0][0] <= now:
            deadline, key = heapq.heappop(slot.heap)
            if slot.deadline_of.get(key) == deadline:
                del slot.deadline_of[key]
                yield key

    def drop_partition(self, partition: int) -> None:
        """Forget a partition (revoked from this worker)."""
        self._partitions.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(slot.deadline_of) for slot in self._partitions.values())

    def pending(self, partition: int) -> int:
        slot = self._partitions.get(partition)
        return len(slot.deadline_of) if slot else 0
