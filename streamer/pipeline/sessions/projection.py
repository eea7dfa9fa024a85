"""What the funnel core keeps of a validated event: the fields the funnels read, projected
once per event (``stored_event``), with the projection plan worked out once per model."""

from __future__ import annotations

from functools import cache
from typing import Any

from streamer.events import Event
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.session import VALUE_FIELDS, StoredEvent

__all__ = ["needed_fields", "stored_event"]


def needed_fields(funnels: tuple[FunnelDefinition, ...]) -> frozenset[str]:
    """The flattened fields the funnels read (stage filters, segments, cart value)."""
    names: set[str] = {*VALUE_FIELDS, "currency"}
    for funnel in funnels:
        for stage in funnel.stages:
            names.update(condition.property for condition in stage.where)
        for segment in funnel.segments:
            kind, _, name = segment.source.partition(".")
            names.add(name if kind == "property" else segment.source)
    return frozenset(names)


@cache
def _field_plan(
    keep: frozenset[str],
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """``keep`` split once: properties, (stored name, context field), (stored, experiment)."""
    properties = tuple(sorted(n for n in keep if "." not in n))
    context = tuple(sorted((n, n[len("context.") :]) for n in keep if n.startswith("context.")))
    experiments = tuple(
        sorted((n, n[len("experiment.") :]) for n in keep if n.startswith("experiment."))
    )
    return properties, context, experiments


@cache
def _model_plan(
    model: type[Any], keep: frozenset[str]
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """``_field_plan`` with only the properties ``model`` has (in the same order)."""
    properties, context, experiments = _field_plan(keep)
    return tuple(n for n in properties if n in model.model_fields), context, experiments


def stored_event(event: Event, keep: frozenset[str]) -> StoredEvent:
    """A validated event -> what the core keeps of it (read from the models' __dict__:
    pydantic's attribute lookup for names a model lacks is slow, and this runs per event;
    only the model's own properties are looked up)."""
    properties, context_names, experiment_names = _model_plan(type(event), keep)
    values = event.__dict__
    fields: dict[str, Any] = {}
    for name in properties:
        value = values.get(name)
        if value is not None:
            fields[name] = value
    context = event.context.__dict__
    for stored, name in context_names:
        value = context.get(name)
        if value is not None:
            fields[stored] = value
    if experiment_names:
        variants = event.context.experiments
        for stored, name in experiment_names:
            value = variants.get(name)
            if value is not None:
                fields[stored] = value
    return StoredEvent(
        round(event.occurred_at.timestamp() * 1000), event.event_id, event.event_type, fields
    )
