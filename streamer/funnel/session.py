"""The session state machine: one session's instants in event-time order -> funnel outcomes.

This file is ``docs/funnel-semantics.md`` in code; read them side by side. Pure: times are
arguments (epoch ms), nothing here knows about Kafka or Faust.

A session is fed *instants*: all its events at one event time, in ascending time, and only
once the watermark is past that time (the reorder buffer in :mod:`streamer.funnel.task` does
that). For each funnel it is idle or in one :class:`Attempt`, so the work per event is O(1) and
the state of a session at rest is a few fields per funnel, whatever its length.

Outcomes are :class:`Outcome` records (entered, converted, dropped, excluded), each carrying
the time the attempt reached the stage (``cohort_ms``): counts belong to the window of that
time. The order modes (strict, unordered) and exclusions are the spec's "Order modes" and
"Exclusion steps": the same walk, with a break, a set of steps done, and an exclusion check.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

import orjson

from streamer.funnel.definition import (
    SEGMENT_VALUE_CHARS,
    Condition,
    FunnelDefinition,
    StepAttribution,
)
from streamer.funnel.satisfaction import SCORE_RANGE

_T = TypeVar("_T")
_SHARED_MAX = 65_536  # distinct shared segment values and tuples per funnel

__all__ = [
    "FOREVER",
    "NEVER",
    "VALUE_FIELDS",
    "Abandoned",
    "Attempt",
    "CompiledFunnel",
    "Kind",
    "Outcome",
    "Progress",
    "StoredEvent",
    "UnitMemory",
    "apply_instant",
    "expire_attempt",
]

NEVER = -(2**62)
FOREVER = 2**62  # a retention that never forgets (the core's default; the task passes its own)

# Where an event's cart value is read from: the first of these present and positive.
VALUE_FIELDS = ("cart_value", "amount", "value")


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """What the core needs of one event: its time, id, type and the fields funnels read
    (properties by name, ``context.<field>``, ``experiment.<name>``)."""

    at_ms: int
    event_id: str
    event_type: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    # Its JSON, once encoded: a buffered event is stored again by every checkpoint that
    # finds its session changed, and encoding it each time was most of a checkpoint's cost.
    _encoded: bytes | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> list[Any]:
        return [self.at_ms, self.event_id, self.event_type, dict(self.fields)]

    def json_fragment(self) -> orjson.Fragment:
        """Its JSON (the same as :meth:`to_json`'s), encoded once."""
        encoded = self._encoded
        if encoded is None:
            encoded = orjson.dumps(self.to_json())
            object.__setattr__(self, "_encoded", encoded)  # a cache, not state
        return orjson.Fragment(encoded)

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> StoredEvent:
        return cls(int(raw[0]), str(raw[1]), str(raw[2]), dict(raw[3]))


class Kind(IntEnum):
    ENTERED = 0  # the attempt reached stage ``stage``
    CONVERTED = 1  # step ``stage`` -> ``stage + 1`` converted
    DROPPED = 2  # step ``stage`` -> ``stage + 1`` timed out (or a strict attempt broke)
    EXCLUDED = 3  # step ``stage`` -> ``stage + 1`` excluded (spec: "Exclusion steps")
    # A survey answer at the stage the unit's latest attempt had reached (-1: none yet);
    # ``value`` the score, ``time_to_convert_ms`` the survey's index (docs/satisfaction.md).
    ANSWERED = 4


# Not frozen: a frozen dataclass's __init__ is slow, and one is made per step of an attempt.
@dataclass(slots=True)
class Outcome:
    kind: Kind
    stage: int
    cohort_ms: int  # when the attempt reached ``stage``: the window the outcome counts in
    at_ms: int  # when it happened (entry, conversion, or the deadline of a drop)
    segments: tuple[str | None, ...]
    time_to_convert_ms: int = 0
    value: float = 0.0  # drops: the attempt's cart value


@dataclass(slots=True)
class Attempt:
    """One funnel attempt in progress."""

    start_ms: int
    stage: int
    reached_ms: int
    deadline_ms: int
    segments: tuple[str | None, ...]  # first-touch values so far (shared, see share())
    stage_segments: tuple[str | None, ...]  # the values at the entry into ``stage``
    cart_value: float = 0.0
    last_activity_ms: int = 0
    currency: str | None = None
    done: int = 0  # unordered funnels: the steps done, one bit per stage index
    anchor_ms: int = 0  # funnels with optional stages: when the latest required stage was reached
    held: tuple[str | None, ...] | None = None  # funnels with hold: the values fixed at S0

    def to_json(self) -> list[Any]:
        raw = [
            self.start_ms,
            self.stage,
            self.reached_ms,
            self.deadline_ms,
            list(self.segments),
            list(self.stage_segments),
            self.cart_value,
            self.last_activity_ms,
            self.currency,
        ]
        if self.done or self.anchor_ms or self.held is not None:
            raw += [self.done, self.anchor_ms]  # only these modes: others are stored as before
        if self.held is not None:
            raw.append(list(self.held))
        return raw

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> Attempt:
        return cls(
            int(raw[0]),
            int(raw[1]),
            int(raw[2]),
            int(raw[3]),
            tuple(raw[4]),
            tuple(raw[5]),
            float(raw[6]),
            int(raw[7]),
            raw[8],
            int(raw[9]) if len(raw) > 9 else 0,
            int(raw[10]) if len(raw) > 10 else 0,
            tuple(raw[11]) if len(raw) > 11 else None,
        )


@dataclass(frozen=True, slots=True)
class Abandoned:
    """A drop out of an abandonment stage, remembered until it can no longer be retracted."""

    stage: int
    attempt_ms: int
    abandoned_ms: int
    last_activity_ms: int
    retractable_until_ms: int  # attempt start + conversion window
    cart_value: float
    currency: str | None
    segments: tuple[str | None, ...]
    held: tuple[str | None, ...] | None = None  # funnels with hold: the attempt's held values

    def to_json(self) -> list[Any]:
        raw = [
            self.stage,
            self.attempt_ms,
            self.abandoned_ms,
            self.last_activity_ms,
            self.retractable_until_ms,
            self.cart_value,
            self.currency,
            list(self.segments),
        ]
        if self.held is not None:  # only funnels with hold: others are stored as before
            raw.append(list(self.held))
        return raw

    @classmethod
    def from_json(cls, raw: Sequence[Any]) -> Abandoned:
        return cls(
            int(raw[0]),
            int(raw[1]),
            int(raw[2]),
            int(raw[3]),
            int(raw[4]),
            float(raw[5]),
            raw[6],
            tuple(raw[7]),
            tuple(raw[8]) if len(raw) > 8 else None,
        )


@dataclass(slots=True)
class UnitMemory:
    """What a unit's state in a funnel with first-time stages, units or surveys remembers beyond
    its attempts (spec: "First-time steps", "Uniques and totals"; docs/satisfaction.md). Apart
    from :class:`Progress`, and made only when such a funnel first needs it: most funnels never
    do, and every open session of them would otherwise carry these fields."""

    first_done: int = 0  # first-time stages the unit has done, one bit per stage index
    latest_ms: int = NEVER  # the unit's latest instant (funnels with first-time stages only)
    # Funnels counting units: the window of the unit's latest counted entry and the stages
    # already counted in it, one bit each.
    units_window_ms: int = NEVER
    units_counted: int = 0
    # Funnels with surveys: the stage the latest attempt reached (-1: none) and its segment
    # values at that entry, which an answer is joined to.
    reached: int = -1
    reached_segments: tuple[str | None, ...] | None = None
    # User funnels with experiments: the variant of the unit's first exposure to each
    # experiment (by segment dimension; None: not exposed yet), which its later attempts carry.
    variants: tuple[str | None, ...] | None = None


@dataclass(slots=True)
class Progress:
    """A session's state in one funnel: the attempt in progress, when the last one ended, and
    its latest abandonment while a retraction is still possible; in a funnel with first-time
    stages or units also what the unit remembers (:class:`UnitMemory`)."""

    attempt: Attempt | None = None
    ended_ms: int = NEVER
    abandoned: Abandoned | None = None
    memory: UnitMemory | None = None  # None until a first-time or uniques funnel needs it

    def wake_ms(self) -> int | None:
        """The next time at which the watermark alone changes this state."""
        attempt, abandoned = self.attempt, self.abandoned
        if abandoned is None:
            return None if attempt is None else attempt.deadline_ms
        if attempt is None:
            return abandoned.retractable_until_ms
        return min(attempt.deadline_ms, abandoned.retractable_until_ms)

    @property
    def at_rest(self) -> bool:
        return self.attempt is None and self.abandoned is None

    def to_json(self) -> list[Any] | None:
        memory = self.memory
        if (
            memory is not None
            and memory.latest_ms == NEVER
            and memory.units_window_ms == NEVER
            and memory.reached < 0
            and memory.variants is None
        ):
            memory = None  # remembers nothing yet
        if self.at_rest and self.ended_ms == NEVER and memory is None:
            return None
        raw = [
            self.attempt.to_json() if self.attempt else None,
            self.ended_ms,
            self.abandoned.to_json() if self.abandoned else None,
        ]
        # Only funnels with first-time stages, units or surveys: others are stored as before.
        if memory is not None:
            exposed = memory.variants is not None
            surveyed = memory.reached >= 0 or exposed
            raw += [memory.first_done, memory.latest_ms]
            if memory.units_window_ms != NEVER or surveyed:
                raw += [memory.units_window_ms, memory.units_counted]
            if surveyed:
                raw += [memory.reached, list(memory.reached_segments or ())]
            if exposed:
                raw.append(list(memory.variants or ()))
        return raw

    def remembered(self) -> UnitMemory:
        """The unit's memory, made on first use."""
        memory = self.memory
        if memory is None:
            memory = self.memory = UnitMemory()
        return memory

    def first_entry_of_unit(self, stage: int, window_ms: int) -> bool:
        """Whether an entry into ``stage`` in the window starting at ``window_ms`` is the
        unit's first there (then remembered). A unit's entries come in time order, so only
        its latest window needs remembering."""
        memory = self.remembered()
        if window_ms != memory.units_window_ms:
            memory.units_window_ms, memory.units_counted = window_ms, 0
        bit = 1 << stage
        if memory.units_counted & bit:
            return False
        memory.units_counted |= bit
        return True

    @classmethod
    def from_json(cls, raw: Sequence[Any] | None) -> Progress:
        if raw is None:
            return cls()
        memory = None
        if len(raw) > 3:
            memory = UnitMemory(
                int(raw[3]),
                int(raw[4]) if len(raw) > 4 else NEVER,
                int(raw[5]) if len(raw) > 5 else NEVER,
                int(raw[6]) if len(raw) > 6 else 0,
                int(raw[7]) if len(raw) > 7 else -1,
                tuple(raw[8]) if len(raw) > 8 and raw[8] else None,
                tuple(raw[9]) if len(raw) > 9 else None,
            )
        return cls(
            Attempt.from_json(raw[0]) if raw[0] else None,
            int(raw[1]),
            Abandoned.from_json(raw[2]) if raw[2] else None,
            memory,
        )


class CompiledFunnel:
    """A funnel definition prepared for the hot path: stage lookup by event type, segment
    field names, timeouts."""

    def __init__(self, definition: FunnelDefinition) -> None:
        self.definition = definition
        self.name = definition.name
        self.last_stage = len(definition.stages) - 1
        self.conversion_window_ms = definition.conversion_window_ms
        self.window_ms = definition.window_ms
        self.uniques = definition.uniques
        steps = range(self.last_stage)
        self.timeouts_ms = (*(definition.step_timeout_ms(k) for k in steps), 0)
        self.abandonment_stages = definition.abandonment_stage_indexes
        # Order modes (spec, "Order modes"): strict breaks an attempt on any other event at an
        # instant between two steps; unordered counts distinct steps in any order.
        self.strict = definition.order == "strict"
        self.unordered = definition.order == "unordered"
        self.strict_ignore = frozenset(definition.strict_ignore)
        # Optional stages (spec, "Optional steps"): from stage k an attempt may go to any stage
        # up to the next required one; its deadline runs from the latest required stage.
        stages = definition.stages
        self.has_optional = any(stage.optional for stage in stages)
        self.required = tuple(not stage.optional for stage in stages)
        self.next_required = tuple(
            next((j for j in range(k + 1, len(stages)) if self.required[j]), k)
            for k in range(len(stages))
        )
        # Exclusions by event type: (filters, from, to) each; an event excludes at from <= k < to.
        names = [stage.name for stage in definition.stages]
        self._exclusions: dict[str, list[tuple[tuple[Condition, ...], int, int]]] = {}
        for exclusion in definition.exclusions:
            low, high = exclusion.between or (names[0], names[-1])
            for event_type in exclusion.event_types:
                self._exclusions.setdefault(event_type, []).append(
                    (exclusion.where, names.index(low), names.index(high))
                )
        self.has_exclusions = bool(self._exclusions)
        self._stage_of_type: dict[str, int] = {}
        self._stages_of_type: dict[str, tuple[int, ...]] = {}
        for index, stage in enumerate(definition.stages):
            for event_type in stage.event_types:
                self._stage_of_type.setdefault(event_type, index)
                found = self._stages_of_type.get(event_type, ())
                self._stages_of_type[event_type] = (*found, index)
        self._filters = tuple(stage.where for stage in definition.stages)
        # Repeated event types, hold and step attribution read which stages each event of an
        # instant matches as a bit mask (spec: "Repeated events and re-entry"); other funnels
        # keep one stage per event.
        self.repeated = any(len(found) > 1 for found in self._stages_of_type.values())
        self.restarts = definition.reentry == "latest"
        self._held_fields = tuple(_segment_field(_held_source(name)) for name in definition.hold)
        self.holds = bool(self._held_fields)
        # Attribution per segment dimension: first touch, last touch, or the stage whose events
        # give the value (spec: "Breakdown attribution").
        self.last_touch = tuple(s.attribution == "last_touch" for s in definition.segments)
        self.step_dims: dict[int, tuple[int, ...]] = {}
        for dim, segment in enumerate(definition.segments):
            if isinstance(segment.attribution, StepAttribution):
                stage_index = segment.attribution.step - 1
                self.step_dims[stage_index] = (*self.step_dims.get(stage_index, ()), dim)
        self.touch_dims = tuple(
            dim
            for dim, segment in enumerate(definition.segments)
            if not isinstance(segment.attribution, StepAttribution)
        )
        self.first_touch_only = not self.step_dims and not any(self.last_touch)
        # A user funnel's experiments randomise users: a unit keeps its first exposure's
        # variant for every later attempt (docs/experiments.md, "Per unit in user funnels").
        experiments = {e.name for e in definition.experiments}
        self.unit_variant_dims = frozenset(
            dim
            for dim, segment in enumerate(definition.segments)
            if definition.follows == "user" and segment.name in experiments
        )
        # First-time stages (spec: "First-time steps"): one bit each; the unit's memory of
        # which it has done is its Progress's.
        self.first_time = sum(1 << k for k, stage in enumerate(stages) if stage.first_time)
        self.by_mask = self.repeated or self.holds or bool(self.step_dims) or bool(self.first_time)
        # What a unit remembers between its attempts and forgets after a silence longer than
        # the retention: first-time stages done, first exposures.
        self.remembers_instants = bool(self.first_time or self.unit_variant_dims)
        self._segment_fields = tuple(_segment_field(s.source) for s in definition.segments)
        self._segment_values = tuple(frozenset(s.values) for s in definition.segments)
        # Barriers (spec: "Barriers"): latency buckets, and the names of events seen (client
        # errors), which give a value though they match no stage.
        self._buckets = tuple(
            (s.buckets, s.bucket_labels) if s.buckets else None for s in definition.segments
        )
        self._seen_names = tuple(
            frozenset(s.events) if s.source == "event_name" else None for s in definition.segments
        )
        self.seen_dims = tuple(d for d, names in enumerate(self._seen_names) if names)
        # Surveys (docs/satisfaction.md): answer event -> (survey index, score field, range).
        self._surveys: dict[str, list[tuple[int, str, int, int]]] = {}
        for index, survey in enumerate(definition.surveys):
            lowest, highest = SCORE_RANGE[survey.kind]
            self._surveys.setdefault(survey.event_type, []).append(
                (index, survey.score, lowest, highest)
            )
        self.surveys = bool(self._surveys)
        self._shared: dict[Any, Any] = {}

    def share(self, value: _T) -> _T:
        """One object for equal segment values and tuples: millions of open sessions hold a
        few distinct ones (bounded, so a high-cardinality segment cannot grow it forever)."""
        shared = self._shared.get(value)
        if shared is not None:
            return shared  # type: ignore[no-any-return]
        if len(self._shared) < _SHARED_MAX:
            self._shared[value] = value
        return value

    def stage_of(self, event: StoredEvent) -> int:
        """The stage ``event`` matches, or -1."""
        stage = self._stage_of_type.get(event.event_type, -1)
        if stage >= 0:
            for condition in self._filters[stage]:
                if not condition.matches(event.fields):
                    return -1
        return stage

    def stage_mask(self, event: StoredEvent) -> int:
        """The stages ``event`` matches (type and filters), one bit each."""
        mask = 0
        for stage in self._stages_of_type.get(event.event_type, ()):
            if all(condition.matches(event.fields) for condition in self._filters[stage]):
                mask |= 1 << stage
        return mask

    def held_of(self, event: StoredEvent) -> tuple[str | None, ...]:
        """``event``'s values of the held fields, as text (None: missing)."""
        return tuple(_held_text(event.fields.get(name)) for name in self._held_fields)

    def held_at_start(
        self, events: Sequence[StoredEvent], masks: Sequence[int]
    ) -> tuple[str | None, ...]:
        """Each held field's smallest value among the S0 events of a start instant."""
        held = []
        for index in range(len(self._held_fields)):
            found = [
                value
                for event, mask in zip(events, masks, strict=True)
                if mask & 1 and (value := self.held_of(event)[index]) is not None
            ]
            held.append(min(found) if found else None)
        return self.share(tuple(held))

    def excluded_stages(self, events: Sequence[StoredEvent]) -> frozenset[int]:
        """The stages at which an event of this instant excludes an attempt."""
        stages: set[int] = set()
        for event in events:
            for where, low, high in self._exclusions.get(event.event_type, ()):
                if all(condition.matches(event.fields) for condition in where):
                    stages.update(range(low, high))
        return frozenset(stages)

    def segment_value(self, event: StoredEvent, dim: int) -> str | None:
        """``event``'s value of segment dimension ``dim``, or None."""
        names = self._seen_names[dim]
        if names is not None:
            return event.event_type if event.event_type in names else None
        raw = event.fields.get(self._segment_fields[dim])
        if raw is None or raw == "":
            return None
        buckets = self._buckets[dim]
        if buckets is not None:
            return _bucket_label(raw, *buckets)
        text = str(raw)[:SEGMENT_VALUE_CHARS]
        allowed = self._segment_values[dim]
        return "other" if allowed and text not in allowed else self.share(text)

    def answers(self, events: Sequence[StoredEvent]) -> list[tuple[int, int]]:
        """(survey index, score) of each answer among ``events``: a whole number in the
        survey's range (anything else is no answer)."""
        found = []
        for event in events:
            for index, field_name, low, high in self._surveys.get(event.event_type, ()):
                score = event.fields.get(field_name)
                if type(score) is int and low <= score <= high:  # not a bool, not 4.0
                    found.append((index, score))
        return found

    @property
    def segment_count(self) -> int:
        return len(self._segment_fields)


def _bucket_label(raw: Any, edges: tuple[float, ...], labels: tuple[str, ...]) -> str | None:
    """The bucket of a number (each holds its lower edge); anything else has no value."""
    if isinstance(raw, bool) or not isinstance(raw, _NUMBER) or raw != raw:  # NaN
        return None
    return labels[bisect_right(edges, raw)]


def _held_source(name: str) -> str:
    """A held field as a segment source: a bare name is an event property."""
    return name if "." in name else f"property.{name}"


def _held_text(raw: Any) -> str | None:
    """A held value as text (spec: a string as it is, other JSON values as their JSON text);
    absent, null and empty are missing."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        return raw
    return orjson.dumps(raw).decode()


def _segment_field(source: str) -> str:
    """``context.device`` / ``experiment.x`` as stored; ``property.payment_method`` by name."""
    kind, _, name = source.partition(".")
    return name if kind == "property" else source


_NUMBER = (int, float)  # built once: ``int | float`` in the call makes a union per event


def _cart_value(event: StoredEvent) -> float:
    for name in VALUE_FIELDS:
        value = event.fields.get(name)
        if isinstance(value, _NUMBER) and not isinstance(value, bool) and value > 0:
            return float(value)
    return 0.0


def _deadline(funnel: CompiledFunnel, attempt: Attempt) -> int:
    # At an optional stage the time runs from the latest required one (its Tk is that one's).
    since = attempt.anchor_ms if funnel.has_optional else attempt.reached_ms
    return min(
        since + funnel.timeouts_ms[attempt.stage],
        attempt.start_ms + funnel.conversion_window_ms,
    )


def expire_attempt(
    funnel: CompiledFunnel, progress: Progress, watermark_ms: int, out: list[Outcome]
) -> Abandoned | None:
    """Decide what the watermark alone decides: a drop once it is past the deadline, and the
    end of the retraction horizon. Returns the new abandonment, if the drop is one."""
    if progress.abandoned is not None and progress.abandoned.retractable_until_ms < watermark_ms:
        progress.abandoned = None
    attempt = progress.attempt
    if attempt is None or attempt.deadline_ms >= watermark_ms:
        return None
    return _drop(funnel, progress, attempt, out)


def _drop(
    funnel: CompiledFunnel,
    progress: Progress,
    attempt: Attempt,
    out: list[Outcome],
    broken_ms: int | None = None,
) -> Abandoned | None:
    """Step ``attempt.stage`` dropped: at its deadline, or at ``broken_ms`` when a strict
    funnel's attempt is broken (then it ended at its latest instant: a start may follow)."""
    at_ms = attempt.deadline_ms if broken_ms is None else broken_ms
    out.append(
        Outcome(
            Kind.DROPPED,
            attempt.stage,
            attempt.reached_ms,
            at_ms,
            attempt.stage_segments,
            value=attempt.cart_value,
        )
    )
    progress.attempt = None
    progress.ended_ms = at_ms if broken_ms is None else attempt.last_activity_ms
    if attempt.stage not in funnel.abandonment_stages:
        return None
    progress.abandoned = Abandoned(
        attempt.stage,
        attempt.start_ms,
        at_ms,
        attempt.last_activity_ms,
        attempt.start_ms + funnel.conversion_window_ms,
        attempt.cart_value,
        attempt.currency,
        attempt.stage_segments,
        attempt.held,
    )
    return progress.abandoned


def _exclude(progress: Progress, attempt: Attempt, at_ms: int, out: list[Outcome]) -> None:
    """Step ``attempt.stage`` excluded at ``at_ms``: the attempt ends (no start at this instant)."""
    out.append(
        Outcome(Kind.EXCLUDED, attempt.stage, attempt.reached_ms, at_ms, attempt.stage_segments)
    )
    progress.attempt = None
    progress.ended_ms = at_ms


@dataclass(frozen=True, slots=True)
class InstantResult:
    abandoned: Abandoned | None = None
    retracted: tuple[Abandoned, int] | None = None  # (abandonment, order time)


_UNDECIDED = InstantResult()
_NONE: frozenset[int] = frozenset()  # most instants decide neither: one shared result


def apply_instant(
    funnel: CompiledFunnel,
    progress: Progress,
    at_ms: int,
    events: Sequence[StoredEvent],
    out: list[Outcome],
    retention_ms: int = FOREVER,
) -> InstantResult:
    """Apply one instant (all of a session's events at ``at_ms``) to one funnel's progress.

    The caller guarantees ascending instants and that ``at_ms`` is below the watermark;
    ``retention_ms``: how long the caller keeps a unit's state at rest after its last event
    (first-time stages forget what the unit did after a silence longer than that)."""
    dropped: Abandoned | None = None
    retracted: tuple[Abandoned, int] | None = None
    attempt = progress.attempt
    # 1. Drop: this instant is past the deadline, so nothing came in time.
    if attempt is not None and at_ms > attempt.deadline_ms:
        dropped = _drop(funnel, progress, attempt, out)
        attempt = None
    # Each event's stage; with repeated types, hold or step attribution also the stages it
    # matches as a bit mask (then ``stages`` holds each event's lowest).
    masks = [funnel.stage_mask(event) for event in events] if funnel.by_mask else None
    order_masks = masks  # an order retracts whether or not it is the unit's first
    if funnel.remembers_instants:
        _remember_instant(progress, at_ms, retention_ms)
        if funnel.first_time and masks is not None:
            masks = _first_time_only(funnel, progress, masks)
    if masks is None:
        stages = [funnel.stage_of(event) for event in events]
    else:
        stages = [(mask & -mask).bit_length() - 1 for mask in masks]
    # Retraction: an order after the latest abandonment, within its attempt's window (before a
    # strict break of this instant, whose own abandonment an order at this instant never
    # retracts).
    abandoned = progress.abandoned
    if abandoned is not None:
        if at_ms > abandoned.retractable_until_ms:
            progress.abandoned = None
        elif at_ms > abandoned.abandoned_ms and _retracts(
            funnel, abandoned, events, order_masks, stages
        ):
            retracted = (abandoned, at_ms)
            progress.abandoned = None
    # Exclusion: an event of this instant excludes at the attempt's stage (before a break).
    excluding = funnel.excluded_stages(events) if funnel.has_exclusions else _NONE
    if attempt is not None and attempt.stage in excluding:
        _exclude(progress, attempt, at_ms, out)
        attempt = None
    # 1b. Break (strict): no next stage at this instant, and an event that is not ignored.
    if (
        attempt is not None
        and funnel.strict
        and not _has(attempt.stage + 1, stages, _fitting(funnel, attempt, events, masks))
        and any(event.event_type not in funnel.strict_ignore for event in events)
    ):
        dropped = _drop(funnel, progress, attempt, out, broken_ms=at_ms)
        attempt = None
    # Re-entry `latest`: an S0 event restarts an attempt this instant does not advance (the
    # drop of a strict break: the attempt ended at its latest instant, a start follows).
    if (
        attempt is not None
        and funnel.restarts
        and 0 in stages
        and _next_target(funnel, attempt.stage, stages, _fitting(funnel, attempt, events, masks))
        < 0
    ):
        dropped = _drop(funnel, progress, attempt, out, broken_ms=at_ms)
        attempt = None
    # 2. Start: an idle session's S0 event, strictly after the previous attempt ended.
    started = False
    if attempt is None:
        if at_ms <= progress.ended_ms:
            return _result(dropped, retracted)
        if 0 not in stages and not (funnel.unordered and max(stages) >= 0):
            return _result(dropped, retracted)
        attempt = Attempt(at_ms, 0, at_ms, 0, funnel.share((None,) * funnel.segment_count), ())
        if funnel.has_optional:
            attempt.anchor_ms = at_ms
        if funnel.holds:
            attempt.held = funnel.held_at_start(events, masks or ())
        attempt.deadline_ms = _deadline(funnel, attempt)
        progress.attempt = attempt
        started = True
    # 3. Segments (first touch; ties at one instant: smallest text), cart value, activity.
    # Only the dimensions still unknown are read, and only from events of a stage (a seen
    # event's name from any event of the instant).
    if not funnel.first_touch_only:
        _touch(funnel, attempt, events, stages)
    elif None in attempt.segments:
        touched = [e for e, stage in zip(events, stages, strict=True) if stage >= 0]
        segments = list(attempt.segments)
        found = False
        for dim, current in enumerate(segments):
            if current is None:
                pool = events if dim in funnel.seen_dims else touched
                candidates = [
                    text for e in pool if (text := funnel.segment_value(e, dim)) is not None
                ]
                if candidates:
                    segments[dim] = min(candidates)
                    found = True
        if found:
            attempt.segments = funnel.share(tuple(segments))
    # Cart value: the largest positive one of the instant; currency: the greatest code.
    amount, currency = 0.0, ""
    for event in events:
        amount = max(amount, _cart_value(event))
        code = event.fields.get("currency")
        if code:
            currency = max(currency, str(code))
    if amount > 0:
        attempt.cart_value = amount
    if currency and currency != attempt.currency:
        attempt.currency = funnel.share(currency)
    attempt.last_activity_ms = at_ms
    if started:
        if 0 in funnel.step_dims and masks is not None:
            _attribute_step(funnel, attempt, 0, events, masks, progress.memory)
        attempt.stage_segments = attempt.segments
        out.append(Outcome(Kind.ENTERED, 0, at_ms, at_ms, attempt.stage_segments))
        if 0 in excluding:  # an exclusion at the instant S0 is reached
            _exclude(progress, attempt, at_ms, out)
            return _result(dropped, retracted)
    if funnel.unordered:
        _advance_unordered(funnel, attempt, at_ms, stages, started, out)
    else:
        # Advance while this instant holds the next stage's event (inclusive deadline: step 1);
        # with optional stages, the nearest one up to the next required stage; with masks, by
        # an event that fits no stage filled at this instant (one event fills one step).
        fitting = _fitting(funnel, attempt, events, masks)
        filled = 1 if started else 0
        while attempt.stage < funnel.last_stage:
            if fitting is not None:
                target = _next_target(funnel, attempt.stage, stages, fitting, filled)
                if target < 0:
                    break
                filled |= 1 << target
                _convert(funnel, attempt, at_ms, out, target, events, masks, progress.memory)
            elif funnel.has_optional:
                target = _next_target(funnel, attempt.stage, stages)
                if target < 0:
                    break
                _convert(funnel, attempt, at_ms, out, target)
            elif attempt.stage + 1 in stages:
                _convert(funnel, attempt, at_ms, out)
            else:
                break
            if attempt.stage in excluding:  # reached and excluded at once: the exclusion wins
                _exclude(progress, attempt, at_ms, out)
                return _result(dropped, retracted)
    if attempt.stage == funnel.last_stage:
        progress.attempt = None
        progress.ended_ms = at_ms
    return _result(dropped, retracted)


def _remember_instant(progress: Progress, at_ms: int, retention_ms: int) -> None:
    """The unit's instant at ``at_ms``: after a silence longer than the retention it forgets
    its first-time stages and first exposures, as the task forgets a state at rest: so the
    numbers never depend on when the state was dropped."""
    memory = progress.remembered()
    if memory.latest_ms != NEVER and at_ms - memory.latest_ms > retention_ms:
        memory.first_done, memory.variants = 0, None
    memory.latest_ms = at_ms


def _first_time_only(funnel: CompiledFunnel, progress: Progress, masks: list[int]) -> list[int]:
    """The masks without the first-time stages the unit did at an earlier instant; remembers
    this instant's (after :func:`_remember_instant`)."""
    memory = progress.remembered()
    done = memory.first_done
    matched = 0
    for mask in masks:
        matched |= mask
    memory.first_done = done | (matched & funnel.first_time)
    if not done:
        return masks
    return [mask & ~done for mask in masks]


def _advance_unordered(
    funnel: CompiledFunnel,
    attempt: Attempt,
    at_ms: int,
    stages: list[int],
    started: bool,
    out: list[Outcome],
) -> None:
    """Unordered: each step of this instant not done yet is one more step, by position (the
    first step of a new attempt is its entry, not a conversion)."""
    new = 0
    for stage in stages:
        if stage >= 0:
            new |= 1 << stage
    new &= ~attempt.done
    if not new:
        return
    attempt.done |= new
    for _ in range(new.bit_count() - (1 if started else 0)):
        _convert(funnel, attempt, at_ms, out)


def _has(stage: int, stages: list[int], masks: list[int] | None) -> bool:
    """Whether an event of the instant matches ``stage``."""
    if masks is None:
        return stage in stages
    bit = 1 << stage
    return any(mask & bit for mask in masks)


def _retracts(
    funnel: CompiledFunnel,
    abandoned: Abandoned,
    events: Sequence[StoredEvent],
    masks: list[int] | None,
    stages: list[int],
) -> bool:
    """Whether an event of the instant matches the last stage for the abandoned attempt: with
    hold, only one with the attempt's held values (spec: "Abandonments")."""
    if masks is None or not funnel.holds:
        return _has(funnel.last_stage, stages, masks)
    bit = 1 << funnel.last_stage
    return any(
        mask & bit and funnel.held_of(event) == abandoned.held
        for event, mask in zip(events, masks, strict=True)
    )


def _fitting(
    funnel: CompiledFunnel,
    attempt: Attempt,
    events: Sequence[StoredEvent],
    masks: list[int] | None,
) -> list[int] | None:
    """The masks as the attempt sees them: with hold, an event without the held values
    matches only ``S0`` (spec: "Holding a property constant")."""
    if masks is None or not funnel.holds:
        return masks
    held = attempt.held
    return [
        mask if mask <= 1 or funnel.held_of(event) == held else mask & 1
        for event, mask in zip(events, masks, strict=True)
    ]


def _next_target(
    funnel: CompiledFunnel,
    stage: int,
    stages: list[int],
    masks: list[int] | None = None,
    filled: int = 0,
) -> int:
    """The nearest stage after ``stage``, up to the next required one, that an event of this
    instant fills (with masks: an event that matches it and no stage of ``filled``); -1 if
    none."""
    for target in range(stage + 1, funnel.next_required[stage] + 1):
        if masks is None:
            if target in stages:
                return target
        else:
            bit = 1 << target
            if any(mask & bit and not mask & filled for mask in masks):
                return target
    return -1


def _touch(
    funnel: CompiledFunnel, attempt: Attempt, events: Sequence[StoredEvent], stages: list[int]
) -> None:
    """First- and last-touch segment values of this instant's funnel events (ties: the
    smallest text); step-attributed dimensions are set by :func:`_attribute_step`."""
    touched = [e for e, stage in zip(events, stages, strict=True) if stage >= 0]
    if not touched and not funnel.seen_dims:
        return
    segments = list(attempt.segments)
    for dim in funnel.touch_dims:
        if segments[dim] is None or funnel.last_touch[dim]:
            pool = events if dim in funnel.seen_dims else touched
            candidates = [text for e in pool if (text := funnel.segment_value(e, dim)) is not None]
            if candidates:
                segments[dim] = min(candidates)
    attempt.segments = funnel.share(tuple(segments))


def _attribute_step(
    funnel: CompiledFunnel,
    attempt: Attempt,
    stage: int,
    events: Sequence[StoredEvent],
    masks: list[int],
    memory: UnitMemory | None = None,
) -> None:
    """Entering ``stage``: the dimensions attributed to it take the smallest value of the
    instant's events that match it (none: unknown); a user funnel's experiment takes the
    unit's first exposure instead, once it has one (``memory``)."""
    bit = 1 << stage
    segments = list(attempt.segments)
    for dim in funnel.step_dims[stage]:
        candidates = [
            text
            for event, mask in zip(events, masks, strict=True)
            if mask & bit and (text := funnel.segment_value(event, dim)) is not None
        ]
        value = min(candidates) if candidates else None
        if memory is not None and dim in funnel.unit_variant_dims:
            value = _first_exposure(funnel, memory, dim, value)
        segments[dim] = value
    attempt.segments = funnel.share(tuple(segments))


def _first_exposure(
    funnel: CompiledFunnel, memory: UnitMemory, dim: int, value: str | None
) -> str | None:
    """The unit's variant of the experiment at ``dim``: the first one it was exposed to (an
    exposure without a variant fixes nothing), remembered here."""
    fixed = memory.variants or (None,) * funnel.segment_count
    if fixed[dim] is not None:
        return fixed[dim]
    if value is not None:
        memory.variants = funnel.share((*fixed[:dim], value, *fixed[dim + 1 :]))
    return value


def _convert(
    funnel: CompiledFunnel,
    attempt: Attempt,
    at_ms: int,
    out: list[Outcome],
    target: int | None = None,
    events: Sequence[StoredEvent] = (),
    masks: list[int] | None = None,
    memory: UnitMemory | None = None,
) -> None:
    """Step ``attempt.stage`` converts at ``at_ms``; the attempt enters the next stage (or
    ``target``, past optional stages); ``events`` and ``masks``: the instant's, for step
    attribution (``memory``: the unit's, for its first exposures)."""
    out.append(
        Outcome(
            Kind.CONVERTED,
            attempt.stage,
            attempt.reached_ms,
            at_ms,
            attempt.stage_segments,
            time_to_convert_ms=at_ms - attempt.reached_ms,
        )
    )
    attempt.stage = attempt.stage + 1 if target is None else target
    attempt.reached_ms = at_ms
    if masks is not None and attempt.stage in funnel.step_dims:
        _attribute_step(funnel, attempt, attempt.stage, events, masks, memory)
    attempt.stage_segments = attempt.segments
    if funnel.has_optional and funnel.required[attempt.stage]:
        attempt.anchor_ms = at_ms
    attempt.deadline_ms = _deadline(funnel, attempt)
    out.append(Outcome(Kind.ENTERED, attempt.stage, at_ms, at_ms, attempt.stage_segments))


def _result(dropped: Abandoned | None, retracted: tuple[Abandoned, int] | None) -> InstantResult:
    if dropped is None and retracted is None:
        return _UNDECIDED
    return InstantResult(dropped, retracted)
