"""User funnels (``follows: user``) through the pipeline: the hop from the session tasks to the
unit tasks (docs/decisions/0008-user-funnels-pipeline.md).

Producers key by session, and a user's sessions may be on any partition. A session task
forwards every event it releases (watermark passed, event-time order) to ``units_topic``, keyed
by the unit the identity rules give it (:mod:`streamer.funnel.identity`), numbered by the
task's release sequence (:class:`streamer.funnel.task.UnitEvent`), and after them, a front
marker per unit partition: the session task's watermark (everything below it is forwarded).
The unit tasks, the same sessions stage keyed by unit on ``units_topic``, count the user
funnels; they run the re-key path's rules: fronts arrive in-band (``sessions/<partition>`` are
their inputs), and a forwarded event is applied once, skipped by its sequence when a restored
session task forwards it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.identity import ANONYMOUS_PREFIX
from streamer.funnel.task import UnitEvent
from streamer.pipeline.messages import (
    REKEY_FRONT,
    REKEY_KIND_HEADER,
    REKEY_SOURCE_HEADER,
    UNIT_HEADER,
)

__all__ = [
    "UNIT_SOURCE",
    "UnitForwarder",
    "session_funnels",
    "unit_retention_ms",
    "unit_user",
    "user_funnels",
]

# The inputs of a unit task, as the re-key path names source partitions: "sessions/<n>".
UNIT_SOURCE = "sessions"

Headers = list[tuple[str, bytes]]
# (key, value, partition or None: the key's, headers) -> the produce's future
HeaderSendFn = Callable[[bytes | None, bytes, int | None, Headers], Awaitable[Awaitable[Any]]]


def user_funnels(funnels: Sequence[FunnelDefinition]) -> tuple[FunnelDefinition, ...]:
    return tuple(funnel for funnel in funnels if funnel.follows == "user")


def session_funnels(funnels: Sequence[FunnelDefinition]) -> tuple[FunnelDefinition, ...]:
    return tuple(funnel for funnel in funnels if funnel.follows != "user")


def unit_retention_ms(session_retention_ms: int, funnels: Sequence[FunnelDefinition]) -> int:
    """How long a unit task keeps a unit at rest: at least the longest user funnel's conversion
    window, so its event ids (copies sent by two devices) and its first event (counted once as
    new) outlive a session's."""
    return max(
        session_retention_ms, *(funnel.conversion_window_ms for funnel in user_funnels(funnels))
    )


def unit_user(unit: str) -> str | None:
    """The user id of a unit (None: an anonymous one), for abandonment records."""
    return None if unit.startswith(ANONYMOUS_PREFIX) else unit


@dataclass(frozen=True)
class UnitForwarder:
    """The session side of the hop: sends a session task's released events and its front."""

    send: HeaderSendFn
    partitions: int  # of units_topic, and the number of session tasks (topic_partitions)

    async def forward(
        self, partition: int, forwards: Sequence[UnitEvent], watermark_ms: int
    ) -> list[Awaitable[Any]]:
        """Send session task ``partition``'s released events, then its watermark to every unit
        partition (after the events it covers: one producer, in order per partition); returns
        the produces' futures."""
        source = f"{UNIT_SOURCE}/{partition}"
        sent = []
        for forward in forwards:
            headers = [
                (REKEY_SOURCE_HEADER, f"{source}/{forward.sequence}".encode()),
                (UNIT_HEADER, forward.unit.encode()),
            ]
            value = orjson.dumps(forward.event.to_json())
            sent.append(await self.send(forward.unit.encode(), value, None, headers))
        marker = orjson.dumps(
            {
                "source": source,
                "front": watermark_ms,
                "idle": False,  # a session task's watermark moves whether its input is idle
                "sources": [f"{UNIT_SOURCE}/{p}" for p in range(self.partitions)],
            }
        )
        for out in range(self.partitions):
            sent.append(await self.send(None, marker, out, [(REKEY_KIND_HEADER, REKEY_FRONT)]))
        return sent
