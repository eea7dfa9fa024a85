"""Bytes of any declared shape -> what the funnels need of one event, or why not.

A worker decodes with one :class:`EventDecoder`, chosen at start (:func:`event_decoder`):

- :class:`ContractDecoder`: streamer's own twelve event types (``streamer.events``, the default
  when no tracking plan is set: existing deployments change nothing);
- :class:`PlanDecoder`: a tracking plan (``STREAMER_TRACKING_PLAN``: a YAML file, a folder, or
  ``preset:segment|posthog|snowplow|streamer``), compiled once into validators
  (``streamer.plan.compile``).

Both give a :class:`DecodedEvent` (the projection the core keeps, the session it belongs to and
the identities), a :class:`streamer.decode.Rejection` (dead-lettered with its reason) or, under a
plan's ``unplanned.events: ignore``, an :class:`streamer.plan.compile.Ignored` (counted per topic
and name, never in state). The event-time checks against the broker time are the same for
both (``streamer.decode.corrected_time`` and ``time_bounds``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from streamer.decode import DecodeLimits, Rejection, corrected_time, decode_event, time_bounds
from streamer.events import EVENT_MODELS, Event, EventContext, ReasonCode
from streamer.formatting import utc_datetime
from streamer.funnel.catalogue import ANY_TYPE, EventCatalogue
from streamer.funnel.definition import FunnelDefinition, stored_field
from streamer.funnel.session import VALUE_FIELDS, StoredEvent
from streamer.funnel.stages import lifecycle_stage
from streamer.plan.compile import CompiledPlan, Ignored, PlannedEvent, compile_plan
from streamer.plan.load import load_plan

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = [
    "ContractDecoder",
    "DecodedEvent",
    "EventDecoder",
    "Ignored",
    "PlanDecoder",
    "catalogue_of",
    "contract_catalogue",
    "event_decoder",
    "needed_fields",
    "plan_catalogue",
    "stored_event",
    "tracking_plan",
]


class DecodedEvent(NamedTuple):
    """One valid event, as the sessions stage offers it to a task (a named tuple: one is made
    per event, and a frozen dataclass costs about a microsecond more to build)."""

    event: StoredEvent
    session_id: str
    """The unit session funnels follow: the session id, or ``"<identity>:<id>"`` where a
    plan makes sessions by identity (its ``sessions`` rule)."""
    user_id: str | None
    anonymous_id: str | None = None
    inactivity_ms: int | None = None
    """Where ``session_id`` is an identity's key: the gap that cuts it into sessions."""

    @property
    def event_type(self) -> str:
        return self.event.event_type


class EventDecoder(Protocol):
    """Decodes one message value of ``topic`` read at ``received_at`` (the broker's time)."""

    @property
    def event_names(self) -> frozenset[str]:
        """Every name a decoded event can have (bounded: metric labels are made of them)."""

    def stage_of(self, name: str) -> str | None:
        """The customer's-flow stage of an event name (awareness ... advocacy), if any."""

    @property
    def fingerprint(self) -> str:
        """Names what this decoder makes of bytes (its contract or plan, limits, the fields
        kept): two decoders with the same fingerprint decode any message alike, so a decode
        handed over by another process (the re-key stage's) stands for this one's."""

    def decode(
        self, raw: bytes | None, *, topic: str, received_at: datetime
    ) -> DecodedEvent | Rejection | Ignored: ...


def _fingerprint(*parts: str) -> str:
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


# --- what the core keeps of an event ------------------------------------------------
def needed_fields(funnels: tuple[FunnelDefinition, ...]) -> frozenset[str]:
    """The flattened fields the funnels read (stage filters, segments, cart value, a
    lifecycle's order value and channel)."""
    names: set[str] = {*VALUE_FIELDS, "currency"}
    for funnel in funnels:
        for stage in funnel.stages:
            names.update(condition.property for condition in stage.where)
        sources = [segment.source for segment in funnel.segments]
        if funnel.lifecycle is not None:
            sources += [funnel.lifecycle.value_from, funnel.lifecycle.channel_from]
        names.update(stored_field(source) for source in sources if source != "event_name")
        names.update(survey.score for survey in funnel.surveys)
    return frozenset(names)


# What the core keeps of one event type: property names, (stored name, context field),
# (stored name, experiment name).
_Projection = tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


@cache
def _field_plan(keep: frozenset[str]) -> _Projection:
    """``keep`` split once: properties, (stored name, context field), (stored, experiment)."""
    properties = tuple(sorted(n for n in keep if "." not in n))
    context = tuple(sorted((n, n[len("context.") :]) for n in keep if n.startswith("context.")))
    experiments = tuple(
        sorted((n, n[len("experiment.") :]) for n in keep if n.startswith("experiment."))
    )
    return properties, context, experiments


@cache
def _model_plan(model: type[Any], keep: frozenset[str]) -> _Projection:
    """``_field_plan`` with only the properties ``model`` has (in the same order)."""
    properties, context, experiments = _field_plan(keep)
    return tuple(n for n in properties if n in model.model_fields), context, experiments


def stored_event(event: Event, keep: frozenset[str]) -> StoredEvent:
    """A validated event -> what the core keeps of it."""
    return _project(event, _model_plan(type(event), keep))


def _project(event: Event, projection: _Projection) -> StoredEvent:
    """:func:`stored_event` with the event type's projection at hand (the decoder keeps one
    per type). Read from the models' __dict__: pydantic's attribute lookup for names a model
    lacks is slow, and this runs per event; only the model's own properties are looked up."""
    properties, context_names, experiment_names = projection
    values = event.__dict__
    fields: dict[str, Any] = {}
    for name in properties:
        value = values.get(name)
        if value is not None:
            fields[name] = value
    context = values["context"].__dict__
    for stored, name in context_names:
        value = context.get(name)
        if value is not None:
            fields[stored] = value
    if experiment_names:
        variants = context["experiments"]
        for stored, name in experiment_names:
            value = variants.get(name)
            if value is not None:
                fields[stored] = value
    return StoredEvent(
        round(values["occurred_at"].timestamp() * 1000),
        values["event_id"],
        values["event_type"],
        fields,
    )


class ContractDecoder:
    """streamer's own contract: ``streamer.decode.decode_event``, then the projection."""

    def __init__(self, limits: DecodeLimits, keep: frozenset[str]) -> None:
        self.limits = limits
        self._keep = keep
        self._projections = {model: _model_plan(model, keep) for model in EVENT_MODELS.values()}
        self._fingerprint = _fingerprint("contract", repr(limits), *sorted(keep))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def event_names(self) -> frozenset[str]:
        return frozenset(EVENT_MODELS)

    def stage_of(self, name: str) -> str | None:
        stage = lifecycle_stage(name)
        return stage.value if stage is not None else None

    def decode(
        self, raw: bytes | None, *, topic: str, received_at: datetime
    ) -> DecodedEvent | Rejection:
        result = decode_event(raw, received_at=received_at, limits=self.limits)
        if isinstance(result, Rejection):
            return result
        values = result.__dict__
        return DecodedEvent(
            _project(result, self._projections[type(result)]),
            values["session_id"],
            values["user_id"],
        )


class PlanDecoder:
    """A compiled tracking plan: its validators, then the same time checks and projection."""

    def __init__(self, plan: CompiledPlan, limits: DecodeLimits, keep: frozenset[str]) -> None:
        self.plan = plan
        self.limits = limits
        tracking = plan.loaded.plan
        self._stages = {
            name: spec.stage.value if spec.stage else None for name, spec in tracking.events.items()
        }
        self._time_field = tracking.envelope.event_time.path[0]
        self._inactivity_ms = tracking.sessions.inactivity_ms if tracking.sessions else None
        self._threshold_ms = limits.skew_correction_threshold.total_seconds() * 1000
        self._max_age_ms = limits.max_age.total_seconds() * 1000
        self._future_ms = limits.max_future_skew.total_seconds() * 1000
        sent_at = tracking.envelope.sent_at
        self._sent_field = sent_at.path[0] if sent_at is not None else ""
        # The projection, worked out once: property names, and (stored name, context field).
        self._keep_properties = tuple(sorted(name for name in keep if "." not in name))
        self._keep_context = tuple(
            sorted((name, name[len("context.") :]) for name in keep if name.startswith("context."))
        )
        self._fingerprint = _fingerprint(
            "plan", tracking.model_dump_json(), repr(limits), *sorted(keep)
        )

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def event_names(self) -> frozenset[str]:
        return self.plan.event_names

    def stage_of(self, name: str) -> str | None:
        return self._stages.get(name)

    def decode(
        self, raw: bytes | None, *, topic: str, received_at: datetime
    ) -> DecodedEvent | Rejection | Ignored:
        return self.timed(
            self.plan.decode(raw, topic, max_bytes=self.limits.max_bytes), received_at
        )

    def timed(
        self, result: PlannedEvent | Rejection | Ignored, received_at: datetime
    ) -> DecodedEvent | Rejection | Ignored:
        """The plan's decode of a message, checked against the time it was received and
        projected (the file report decodes each line once, then learns when it arrived)."""
        if not isinstance(result, PlannedEvent):
            return result
        # The time checks in milliseconds (no datetime per event); a refusal is explained by
        # the same checks every decoder shares, on datetimes.
        received_ms = received_at.timestamp() * 1000
        at_ms = result.event_time_ms
        if result.sent_at_ms is not None:
            skew_ms = received_ms - result.sent_at_ms
            if abs(skew_ms) > self._threshold_ms:
                at_ms = round(at_ms + skew_ms)
        if not received_ms - self._max_age_ms <= at_ms <= received_ms + self._future_ms:
            return self._refused_time(result, received_at)
        return DecodedEvent(
            StoredEvent(at_ms, result.event_id, result.name, self._project(result)),
            result.session_key,
            result.user_id,
            result.anonymous_id,
            self._inactivity_ms if result.session_id is None else None,
        )

    def _refused_time(self, result: PlannedEvent, received_at: datetime) -> Rejection:
        occurred_at = corrected_time(
            utc_datetime(result.event_time_ms),
            utc_datetime(result.sent_at_ms) if result.sent_at_ms is not None else None,
            received_at,
            self.limits,
        )
        rejection = time_bounds(occurred_at, received_at, self.limits, self._time_field)
        if rejection is None:  # a boundary the milliseconds rounded over: refuse all the same
            rejection = Rejection(
                ReasonCode.TOO_OLD, f"{self._time_field} is at the edge of the allowed range"
            )
        if occurred_at.timestamp() * 1000 != result.event_time_ms:  # sent_at moved it
            return Rejection(
                rejection.reason,
                f"{rejection.message}, after correcting the device clock by "
                f"{self._sent_field} (the producer's clock at send time, "
                f"{utc_datetime(result.sent_at_ms or 0).isoformat()})",
                rejection.field,
            )
        return rejection

    def _project(self, event: PlannedEvent) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        properties = event.properties
        for name in self._keep_properties:
            value = properties.get(name)
            if value is not None:
                fields[name] = value
        context = event.context
        for stored, name in self._keep_context:
            value = context.get(name)
            if value is not None:
                fields[stored] = value
        return fields


def tracking_plan(settings: Settings) -> CompiledPlan | None:
    """The tracking plan of ``settings``, loaded and compiled (once, at start), or None for
    the built-in contract. A plan error raises ``streamer.errors.PlanError`` naming
    file:line and the field."""
    if settings.tracking_plan is None:
        return None
    return compile_plan(load_plan(settings.tracking_plan))


def catalogue_of(plan: CompiledPlan | None) -> EventCatalogue:
    """What funnels may name: the plan's events, or the built-in contract's."""
    return plan_catalogue(plan) if plan is not None else contract_catalogue()


def event_decoder(
    plan: CompiledPlan | None, limits: DecodeLimits, keep: frozenset[str]
) -> EventDecoder:
    """The worker's decoder: ``plan``'s (from :func:`tracking_plan`), else the built-in
    contract's. ``keep``: the fields the funnels read (:func:`needed_fields`)."""
    if plan is None:
        return ContractDecoder(limits, keep)
    return PlanDecoder(plan, limits, keep)


def _schema_type(schema: Mapping[str, Any]) -> tuple[str, frozenset[Any]]:
    """A property's type in a JSON Schema (pydantic's): (type, enum values)."""
    options = schema.get("anyOf", [schema])
    kinds = [option for option in options if option.get("type") != "null"]
    if len(kinds) != 1:
        return ANY_TYPE, frozenset()
    (kind,) = kinds
    if "enum" in kind or "const" in kind:
        return "enum", frozenset(kind.get("enum", [kind.get("const")]))
    return str(kind.get("type", ANY_TYPE)), frozenset()


def contract_catalogue() -> EventCatalogue:
    """The built-in contract's event types, their properties and types, its context fields."""
    events: dict[str, dict[str, str]] = {}
    enums: dict[tuple[str, str], frozenset[Any]] = {}
    envelope = {"event_type", *EventContext.model_fields, "context", "event_id", "session_id"}
    for name, model in EVENT_MODELS.items():
        properties = model.model_json_schema()["properties"]
        own = set(model.model_fields) - envelope - {"schema_version", "user_id"}
        own -= {"occurred_at", "sent_at"}
        events[name] = {}
        for prop in sorted(own):
            kind, values = _schema_type(properties[prop])
            events[name][prop] = kind
            if values:
                enums[(name, prop)] = values
    context = frozenset(EventContext.model_fields) - {"experiments"}
    return EventCatalogue(events, context, enums)


def plan_catalogue(plan: CompiledPlan) -> EventCatalogue:
    """A tracking plan's events, their declared properties and types, its context fields.
    Only declared properties may be named by a funnel, whatever the unplanned policy: a kept
    unplanned property may be anything, so a filter on it could not be checked."""
    tracking = plan.loaded.plan
    events: dict[str, dict[str, str]] = {}
    enums: dict[tuple[str, str], frozenset[Any]] = {}
    for name, spec in tracking.events.items():
        events[name] = {prop: decl.type for prop, decl in spec.properties.items()}
        for prop, decl in spec.properties.items():
            if decl.type == "enum" and decl.values:
                enums[(name, prop)] = frozenset(decl.values)
    return EventCatalogue(events, frozenset(tracking.envelope.context), enums)
