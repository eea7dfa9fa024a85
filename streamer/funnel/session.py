"""A session's events and what they mean for a funnel. Pure: times are arguments (epoch ms).

A session keeps its events sorted by ``(at_ms, event_id)``; :func:`evaluate` turns them, with
the partition's watermark, into *contributions*: stage entries, step conversions and step
drop-offs, each at an event time and with the session's segment values as known then. Because
the result is a function of the *set* of events and the watermark, any arrival order gives the
same numbers.

Rules (ordered funnel, one attempt at a time):
- An attempt starts at the session's first event matching stage 1.
- Stage k+1 is reached by the first event matching it after stage k was reached, if it comes
  no later than the attempt start + conversion window and no later than the session's last
  activity (any event) + stage k's timeout (both ends inclusive).
- Otherwise the step k -> k+1 is *dropped* at that deadline, decided only once the watermark
  has passed it; until then the session is *open* at stage k.
- After an attempt completes or drops, the next event matching stage 1 starts a new attempt.
- Segment values are first touch: the first non-empty value among the attempt's funnel events
  (events matching any stage) up to the contribution's time.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from streamer.funnel.definition import FunnelDefinition

__all__ = [
    "VALUE_FIELDS",
    "Contribution",
    "Evaluation",
    "Kind",
    "SessionState",
    "StoredEvent",
    "evaluate",
]


@dataclass(frozen=True, slots=True, order=True)
class StoredEvent:
    """What a session keeps of one event: enough to match stages and read segments."""

    at_ms: int
    event_id: str
    event_type: str = field(compare=False)
    # Flattened properties and context fields the funnels read (``context.device``...).
    fields: Mapping[str, Any] = field(compare=False, default_factory=dict)

    def to_json(self) -> list[Any]:
        return [self.at_ms, self.event_id, self.event_type, dict(self.fields)]

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> StoredEvent:
        return cls(int(raw[0]), str(raw[1]), str(raw[2]), dict(raw[3]))


class Kind(IntEnum):
    ENTERED = 0  # the session reached stage ``index``
    CONVERTED = 1  # step ``index`` -> ``index + 1`` converted
    DROPPED = 2  # step ``index`` -> ``index + 1`` timed out


@dataclass(frozen=True, slots=True)
class Contribution:
    kind: Kind
    index: int
    at_ms: int
    segments: tuple[str | None, ...]
    time_to_convert_ms: int = 0
    attempt_ms: int = 0  # when the attempt began (identifies it within the session)
    value: float = 0.0  # drops: the cart value at the time (latest cart_value / amount)
    last_activity_ms: int = 0  # drops: the session's last event before the deadline


@dataclass(frozen=True, slots=True)
class Retraction:
    """An abandoned attempt whose session placed an order afterwards."""

    stage: int
    attempt_ms: int
    order_ms: int
    drop: Contribution


@dataclass(frozen=True, slots=True)
class Evaluation:
    contributions: tuple[Contribution, ...]
    open_stage: int | None  # stage index of the undecided attempt, if any
    next_deadline_ms: int | None  # when the open attempt's step drops (if nothing comes)
    retractions: tuple[Retraction, ...] = ()


@dataclass
class SessionState:
    """All a worker keeps of one session (a value of the sessions table)."""

    session_id: str
    partition: int
    events: list[StoredEvent] = field(default_factory=list)

    def has(self, event_id: str) -> bool:
        return any(stored.event_id == event_id for stored in self.events)

    def add(self, event: StoredEvent) -> None:
        bisect.insort(self.events, event)

    @property
    def last_ms(self) -> int:
        return self.events[-1].at_ms if self.events else 0

    def to_json(self) -> dict[str, Any]:
        return {"s": self.session_id, "p": self.partition, "e": [e.to_json() for e in self.events]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SessionState:
        return cls(str(raw["s"]), int(raw["p"]), [StoredEvent.from_json(e) for e in raw["e"]])


def _segments_of(funnel: FunnelDefinition, event: StoredEvent) -> tuple[str | None, ...]:
    context = {k[len("context.") :]: v for k, v in event.fields.items() if k.startswith("context.")}
    experiments = {
        k[len("experiment.") :]: v for k, v in event.fields.items() if k.startswith("experiment.")
    }
    context["experiments"] = experiments
    return tuple(segment.value_of(context, event.fields) for segment in funnel.segments)


def _matches(funnel: FunnelDefinition, stage: int, event: StoredEvent) -> bool:
    return funnel.stages[stage].matches(event.event_type, event.fields)


# Where a session's cart value is read from, in order (the adapter keeps these fields).
VALUE_FIELDS = ("cart_value", "amount", "value")


def _cart_value(event: StoredEvent, current: float) -> float:
    for name in VALUE_FIELDS:
        value = event.fields.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return current


def _retractions(
    funnel: FunnelDefinition, events: Sequence[StoredEvent], drops: list[Contribution]
) -> tuple[Retraction, ...]:
    """Abandonments followed by an order of the same session (a recovered cart)."""
    last_stage = len(funnel.stages) - 1
    abandoning = funnel.abandonment_stage_indexes
    out = []
    for drop in drops:
        if drop.index not in abandoning:
            continue
        order = next(
            (e for e in events if e.at_ms > drop.at_ms and _matches(funnel, last_stage, e)), None
        )
        if order is not None:
            out.append(Retraction(drop.index, drop.attempt_ms, order.at_ms, drop))
    return tuple(out)


def evaluate(
    funnel: FunnelDefinition, events: Sequence[StoredEvent], watermark_ms: int
) -> Evaluation:
    """Contributions of a session's sorted ``events`` to ``funnel`` as of ``watermark_ms``."""
    last_stage = len(funnel.stages) - 1
    out: list[Contribution] = []
    drops: list[Contribution] = []
    position = 0
    count = len(events)
    while position < count:
        start = next((i for i in range(position, count) if _matches(funnel, 0, events[i])), None)
        if start is None:
            break
        first = events[start]
        attempt_start = first.at_ms
        window_end = attempt_start + funnel.conversion_window_ms
        segments = list(_segments_of(funnel, first))
        stage = 0
        reached_at = attempt_start
        last_activity = attempt_start
        cart_value = _cart_value(first, 0.0)
        out.append(
            Contribution(Kind.ENTERED, 0, attempt_start, tuple(segments), attempt_ms=attempt_start)
        )
        completed_at: int | None = None
        index = start + 1
        while index < count:
            event = events[index]
            deadline = min(window_end, last_activity + funnel.stage_timeout_ms(stage))
            if event.at_ms > deadline:
                break
            if any(_matches(funnel, s, event) for s in range(len(funnel.stages))):
                for dim, value in enumerate(_segments_of(funnel, event)):
                    if segments[dim] is None and value is not None:
                        segments[dim] = value
            last_activity = event.at_ms
            cart_value = _cart_value(event, cart_value)
            index += 1
            if _matches(funnel, stage + 1, event):
                frozen = tuple(segments)
                out.append(
                    Contribution(
                        Kind.CONVERTED,
                        stage,
                        event.at_ms,
                        frozen,
                        event.at_ms - reached_at,
                        attempt_ms=attempt_start,
                    )
                )
                stage += 1
                reached_at = event.at_ms
                out.append(
                    Contribution(Kind.ENTERED, stage, event.at_ms, frozen, attempt_ms=attempt_start)
                )
                if stage == last_stage:
                    completed_at = event.at_ms
                    break
        if completed_at is not None:
            position = index
            continue
        deadline = min(window_end, last_activity + funnel.stage_timeout_ms(stage))
        if watermark_ms > deadline:
            drop = Contribution(
                Kind.DROPPED,
                stage,
                deadline,
                tuple(segments),
                attempt_ms=attempt_start,
                value=cart_value,
                last_activity_ms=last_activity,
            )
            out.append(drop)
            drops.append(drop)
            position = bisect.bisect_right([e.at_ms for e in events], deadline)
            continue
        return Evaluation(tuple(out), stage, deadline, _retractions(funnel, events, drops))
    return Evaluation(tuple(out), None, None, _retractions(funnel, events, drops))
