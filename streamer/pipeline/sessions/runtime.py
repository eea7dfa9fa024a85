"""What the sessions stage keeps beside each task (a partition): input offsets, acks waiting for a
checkpoint, the state log's range, timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from streamer.funnel.task import Task

__all__ = ["TaskRuntime"]


@dataclass
class TaskRuntime:
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
    # the input the checkpoint reflects (see ``streamer.pipeline.sessions.catch_up``).
    catch_up: tuple[int, ...] = ()
    # Records for the merger to send before this task's next partials
    # (see ``catch_up.start_announcements``).
    announce: list[dict[str, Any]] = field(default_factory=list)
