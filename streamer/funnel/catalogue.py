"""The events a funnel may name, and what in a funnel could never match them.

A funnel names event types in its stages, event properties in its ``where`` filters and
``property.<name>`` segments, and context fields in ``context.<field>`` segments. Against the
events there are (the built-in contract, ``streamer.events``, or a tracking plan,
``streamer.plan``) a misspelt name or a filter of the wrong type matches nothing, silently:
:func:`check_known_events` lists each such problem so that ``streamer funnel check`` and the
worker refuse the funnel at start, with the file and line.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamer.funnel.definition import Condition, Exclusion, FunnelDefinition, Stage

__all__ = ["ANY_TYPE", "EventCatalogue", "check_known_events"]

# A property whose type the catalogue does not know: any filter value is accepted.
ANY_TYPE = "any"
_NUMERIC = frozenset({"integer", "number"})


@dataclass(frozen=True)
class EventCatalogue:
    """Event type -> its properties -> their type (``string``, ``integer``, ``number``,
    ``boolean``, ``enum``, ``timestamp``, ``map`` or ``any``), the context fields, and the
    values of each enum property."""

    events: Mapping[str, Mapping[str, str]]
    context: frozenset[str] | None = None  # None: any context field (not checked)
    enums: Mapping[tuple[str, str], frozenset[Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, known: EventCatalogue | Mapping[str, Iterable[str]]) -> EventCatalogue:
        """A catalogue, or event type -> property names (types unknown)."""
        if isinstance(known, EventCatalogue):
            return known
        return cls({name: dict.fromkeys(props, ANY_TYPE) for name, props in known.items()})

    def carried(self, event_types: Iterable[str]) -> dict[str, set[str]]:
        """The properties any of ``event_types`` carries -> their types."""
        found: dict[str, set[str]] = {}
        for name in event_types:
            for prop, kind in self.events.get(name, {}).items():
                found.setdefault(prop, set()).add(kind)
        return found


def check_known_events(
    definition: FunnelDefinition, known: EventCatalogue | Mapping[str, Iterable[str]]
) -> list[tuple[tuple[Any, ...], str]]:
    """What in ``definition`` can never match the events there are: event types (of stages and
    exclusions) the catalogue does not list, ``where`` properties none of their event types
    carries or filtered
    with a value of the wrong type, ``property.<name>`` segments no event carries,
    ``context.<field>`` segments on an undeclared field, ``event_name`` segments listing an
    unknown event, and held fields no stage's event carries.
    Each problem is (the path in the
    funnel file, a message); none means the funnel fits."""
    catalogue = EventCatalogue.of(known)
    events = catalogue.events
    problems: list[tuple[tuple[Any, ...], str]] = []
    matchers: list[tuple[str, int, Stage | Exclusion]] = [
        ("stages", index, stage) for index, stage in enumerate(definition.stages)
    ]
    matchers += [
        ("exclusions", index, exclusion) for index, exclusion in enumerate(definition.exclusions)
    ]
    for part, index, matcher in matchers:
        unknown = [name for name in matcher.event_types if name not in events]
        for name in unknown:
            problems.append(
                (
                    (part, index, "event_types"),
                    f"unknown event type {name!r}{_closest(name, events)}",
                )
            )
        if unknown:
            continue  # its properties are unknown too: one problem is enough
        stage = matcher
        carried = catalogue.carried(stage.event_types)
        for condition in stage.where:
            where = (part, index, "where", condition.property)
            kinds = carried.get(condition.property)
            if kinds is None:
                problems.append(
                    (
                        where,
                        f"no event of {' | '.join(stage.event_types)} has a property "
                        f"{condition.property!r}{_closest(condition.property, carried)}",
                    )
                )
                continue
            problem = _type_problem(condition, kinds, catalogue, stage.event_types)
            if problem is not None:
                problems.append((where, problem))
    all_properties = {prop for props in events.values() for prop in props}
    for index, segment in enumerate(definition.segments):
        kind, _, name = segment.source.partition(".")
        for position, event_name in enumerate(segment.events):  # source event_name
            if event_name not in events:
                problems.append(
                    (
                        ("segments", index, "events", position),
                        f"unknown event type {event_name!r}{_closest(event_name, events)}",
                    )
                )
        if kind == "property" and name not in all_properties:
            problems.append(
                (
                    ("segments", index, "source"),
                    f"no event has a property {name!r}{_closest(name, all_properties)}",
                )
            )
        elif kind == "context" and catalogue.context is not None and name not in catalogue.context:
            problems.append(
                (
                    ("segments", index, "source"),
                    f"no context field {name!r} is declared{_closest(name, catalogue.context)}",
                )
            )
    for index, survey in enumerate(definition.surveys):
        if survey.event_type not in events:
            problems.append(
                (
                    ("surveys", index, "event_type"),
                    f"unknown event type {survey.event_type!r}"
                    f"{_closest(survey.event_type, events)}",
                )
            )
        elif survey.score not in (carried := catalogue.carried((survey.event_type,))):
            problems.append(
                (
                    ("surveys", index, "score"),
                    f"no event of {survey.event_type} has a property {survey.score!r}"
                    f"{_closest(survey.score, carried)}",
                )
            )
    problems += _hold_problems(definition, catalogue)
    return problems


def _hold_problems(
    definition: FunnelDefinition, catalogue: EventCatalogue
) -> list[tuple[tuple[Any, ...], str]]:
    """A held property no stage's event carries, or a held context field not declared: it
    would be missing on every event, and holding it would change nothing."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    carried = catalogue.carried(t for stage in definition.stages for t in stage.event_types)
    for index, held in enumerate(definition.hold):
        kind, _, name = held.rpartition(".")
        if kind == "context":
            if catalogue.context is not None and name not in catalogue.context:
                problems.append(
                    (
                        ("hold", index),
                        f"no context field {name!r} is declared{_closest(name, catalogue.context)}",
                    )
                )
        elif name not in carried:
            problems.append(
                (
                    ("hold", index),
                    f"no event of the stages has a property {name!r}{_closest(name, carried)}",
                )
            )
    return problems


def _type_problem(
    condition: Condition, kinds: set[str], catalogue: EventCatalogue, event_types: Iterable[str]
) -> str | None:
    """Why ``condition``'s value can never match a property of these types, or None."""
    if ANY_TYPE in kinds:
        return None
    values = condition.value if condition.op == "in" else [condition.value]
    if not isinstance(values, list | tuple):
        return None  # the definition refuses a non-list `in` itself
    wanted = " or ".join(sorted(kinds))
    for value in values:
        if value is None:
            continue
        fits = (
            (isinstance(value, bool) and "boolean" in kinds)
            or (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and bool(kinds & (_NUMERIC | {"enum"}))
            )
            or (isinstance(value, str) and bool(kinds & {"string", "enum", "timestamp"}))
        )
        if not fits:
            return f"{condition.property} is {wanted}: {value!r} can never match"
        if kinds == {"enum"}:
            allowed = frozenset().union(
                *(catalogue.enums.get((name, condition.property), ()) for name in event_types)
            )
            if allowed and value not in allowed:
                return (
                    f"{condition.property} is one of {sorted(allowed, key=str)}: {value!r} "
                    f"can never match{_closest(str(value), map(str, allowed))}"
                )
    if condition.op in ("gt", "ge", "lt", "le") and kinds <= {"boolean", "map"}:
        return f"{condition.property} is {wanted}: it has no order for {condition.op}"
    return None


def _closest(name: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""
