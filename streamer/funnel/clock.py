"""Event time of the inputs: fronts, idleness, and each task's watermark. Pure.

A task (partition N of every input topic, as in Kafka Streams) has the watermark

    min(front of each of its input partitions that is not idle) - allowed lateness

where a partition's front is the newest event time read from it. So a backlog on any input, read
at any relative speed, holds the watermark back instead of turning the slower input late. An
input is idle only when the adapter says so (caught up with its log end and silent for the
idle timeout). A task whose inputs are all idle follows the other tasks' inputs (the minimum
over every active input the worker reads, as Flink does with idle splits); when every input is
idle, everything there is has been read and the watermark may reach the newest event time
read (minus the lateness), never further: a paused producer decides no session whose timeout
has not passed in event time.

On the re-key path every task reads events of every source partition, so its inputs are the
source partitions themselves (named ``topic/partition``), added as their fronts arrive in-band
(:meth:`add_inputs`); a task that knows no input yet holds its watermark.
"""

from __future__ import annotations

from collections.abc import Iterable

from streamer.funnel.session import NEVER

__all__ = ["InputClock"]

Input = tuple[str, int]  # (topic, partition)


class InputClock:
    def __init__(self, topics: Iterable[str], allowed_lateness_ms: int) -> None:
        self.topics = tuple(topics)
        self.lateness_ms = allowed_lateness_ms
        self.fronts: dict[Input, int] = {}
        self.idle: set[Input] = set()
        self.partitions: set[int] = set()

    def assign(self, partition: int, fronts: dict[str, int] | None = None) -> None:
        self.add_inputs(fronts or ())
        self.partitions.add(partition)
        for topic in self.topics:
            self.fronts[(topic, partition)] = (fronts or {}).get(topic, NEVER)
            self.idle.discard((topic, partition))

    def add_inputs(self, names: Iterable[str]) -> None:
        """More inputs for every task (unknown fronts hold their watermark until observed)."""
        new = [name for name in names if name not in self.topics]
        if not new:
            return
        self.topics = (*self.topics, *new)
        for name in new:
            for partition in self.partitions:
                self.fronts.setdefault((name, partition), NEVER)

    def revoke(self, partition: int) -> None:
        self.partitions.discard(partition)
        for topic in self.topics:
            self.fronts.pop((topic, partition), None)
            self.idle.discard((topic, partition))

    def observe(self, topic: str, partition: int, at_ms: int) -> bool:
        """Note an event read; True if it moved the input's front (only then can the task's
        watermark rise: an input leaving idleness can only lower it)."""
        key = (topic, partition)
        self.idle.discard(key)
        if at_ms > self.fronts.get(key, NEVER):
            self.fronts[key] = at_ms
            return True
        return False

    def set_idle(self, topic: str, partition: int, idle: bool) -> None:
        key = (topic, partition)
        if key not in self.fronts:
            return
        if idle:
            self.idle.add(key)
        else:
            self.idle.discard(key)

    def fronts_of(self, partition: int) -> dict[str, int]:
        return {topic: self.fronts.get((topic, partition), NEVER) for topic in self.topics}

    def watermark(self, partition: int) -> int | None:
        """The task's watermark now, or None when it must hold (the caller keeps the higher of
        this and what the task had: a watermark never goes back)."""
        active = [
            self.fronts[key]
            for topic in self.topics
            if (key := (topic, partition)) in self.fronts and key not in self.idle
        ]
        if not active:
            active = [front for key, front in self.fronts.items() if key not in self.idle]
        if not active:
            # Every input is caught up and quiet: all the data there is has been read, so
            # time may stand at the newest event read; it never runs ahead of the data.
            newest = max(self.fronts.values(), default=NEVER)
            return None if newest == NEVER else newest - self.lateness_ms
        low = min(active)
        return None if low == NEVER else low - self.lateness_ms

    def all_idle(self, partition: int) -> bool:
        return all((topic, partition) in self.idle for topic in self.topics)
