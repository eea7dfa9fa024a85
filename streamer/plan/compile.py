"""Compile a tracking plan once into a validator: ``CompiledPlan.validate(document)``.

Compiling resolves every dotted path into a getter and every declared property into a checker
(a closure with its type, bounds, compiled pattern and the plan line it came from), per event
name. Validating one document then walks the document's declared paths only, never the plan:
a dict lookup for the event name, the envelope getters, the event's tuple of checkers, and a
set difference for the unplanned properties.

The result is a :class:`PlannedEvent`, a :class:`streamer.decode.Rejection` (dead-lettered:
the reason names the field and the plan's ``file:line``), or :class:`Ignored` (an unplanned
event under ``unplanned.events: ignore``: counted, never dead-lettered, never in state).
Event-time bounds against the broker's time (future events, too old) and the ``sent_at``
clock-skew correction stay with the caller (``streamer.decode``), which knows the receive time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from streamer.decode import Rejection, parse_json
from streamer.events import ReasonCode
from streamer.plan.load import LoadedPlan
from streamer.plan.model import (
    ContextField,
    PropertySpec,
    TrackingPlan,
    pattern_matcher,
    split_path,
)

__all__ = ["MAX_STRING_LENGTH", "CompiledPlan", "Ignored", "PlannedEvent", "compile_plan"]

# A string without a declared max_length is still capped (patterns run on bounded text).
MAX_STRING_LENGTH = 65_536
_MAX_TIME_TEXT = 64  # no ISO 8601 timestamp is longer
_MAX_NAME = 256  # an event name longer than this is not looked up
_EPOCH_MS_LIMIT = 1e15  # year 33658: above it, a unit mistake (as streamer.events)
_INT64 = 2.0**63
_LAX_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_LAX_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})
_INT_TEXT = re.compile(r"^[+-]?\d{1,19}$")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d{1,30}(\.\d{0,30})?|\.\d{1,30})([eE][+-]?\d{1,3})?$")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One valid event of the plan, in streamer's terms."""

    name: str
    event_id: str
    event_time_ms: int
    sent_at_ms: int | None
    session_id: str | None
    user_id: str | None
    anonymous_id: str | None
    context: dict[str, Any]
    properties: dict[str, Any]
    stage: str | None = None
    session_key: str = ""
    """The session id, or ``"<identity>:<id>"`` of the first identity of the plan's sessions
    rule present: the task cuts those into sessions by inactivity (streamer.funnel.inactivity)."""


@dataclass(frozen=True, slots=True)
class Ignored:
    """An unplanned event under ``unplanned.events: ignore``: to count per topic and name."""

    name: str
    topic: str | None
    message: str


class _Invalid(Exception):
    """A value broke its declaration; the message says how (the caller adds the field)."""


Checker = Callable[[Any], Any]
Getter = Callable[[Mapping[str, Any]], Any]


def _getter(path: tuple[str, ...]) -> Getter:
    if not path:
        return lambda document: document
    if len(path) == 1:
        (key,) = path
        return lambda document: document.get(key, MISSING)
    first, *rest = path
    steps = tuple((key, int(key) if key.isdigit() else None) for key in rest)

    def get(document: Mapping[str, Any]) -> Any:
        value = document.get(first, MISSING)
        for key, index in steps:
            if isinstance(value, dict):
                value = value.get(key, MISSING)
            elif index is not None and isinstance(value, list) and index < len(value):
                value = value[index]  # contexts_..._1.0: the first entity of a list
            else:
                return MISSING
        return value

    return get


def _first_of(paths: tuple[str, ...]) -> Getter:
    getters = tuple(_getter(split_path(p)) for p in paths)
    if len(getters) == 1:
        return getters[0]

    def get(document: Mapping[str, Any]) -> Any:
        for getter in getters:
            value = getter(document)
            if value is not MISSING and value is not None:
                return value
        return MISSING

    return get


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "text",
            dict: "an object", list: "a list"}.get(type(value), type(value).__name__)  # fmt: skip


def _bound(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if value == int(value) else str(value)


def _time_checker(formats: tuple[str, ...]) -> Checker:
    """-> epoch milliseconds (int); text is ISO 8601 with an offset, a number is the one
    numeric unit declared."""
    iso = "iso8601" in formats
    scale = 1000 if "epoch_s" in formats else (1 if "epoch_ms" in formats else 0)
    declared = " or ".join(formats)

    def check(value: Any) -> int:
        if isinstance(value, str):
            if not iso:
                raise _Invalid(f"is text, the plan declares {declared} (a number)")
            text = value.strip()
            if len(text) > _MAX_TIME_TEXT:
                raise _Invalid("is not an ISO 8601 timestamp (too long)")
            try:
                parsed = datetime.fromisoformat(text.replace("z", "Z"))
            except ValueError:
                raise _Invalid("is not an ISO 8601 timestamp") from None
            if parsed.tzinfo is None or parsed.utcoffset() is None:
                raise _Invalid("has no UTC offset (add 'Z' or '+hh:mm')")
            millis = round(parsed.timestamp() * 1000)
            if not 0 <= millis < _EPOCH_MS_LIMIT:
                raise _Invalid("is out of range (1970 .. year 33658)")
            return millis
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not scale:
                raise _Invalid(f"is a number, the plan declares {declared} (a unit is never "
                               "guessed)")  # fmt: skip
            if not math.isfinite(value):
                raise _Invalid("must be a finite number")
            millis_f = value * scale
            if not 0 <= millis_f < _EPOCH_MS_LIMIT:
                unit = "seconds" if scale == 1000 else "milliseconds"
                raise _Invalid(f"is out of range for epoch {unit} (wrong unit?)")
            return round(millis_f)
        raise _Invalid(f"is {_kind(value)}, expected a timestamp ({declared})")

    return check


def _value_checker(spec: PropertySpec, *, strip: bool, lax: bool) -> Checker:
    kind = spec.type
    if kind == "string":
        low = spec.min_length or 0
        high = spec.max_length if spec.max_length is not None else MAX_STRING_LENGTH
        matcher = pattern_matcher(spec.pattern) if spec.pattern is not None else None

        def check_string(value: Any) -> Any:
            if not isinstance(value, str):
                raise _Invalid(f"is {_kind(value)}, expected text")
            if strip:
                value = value.strip()
            if not low <= len(value) <= high:
                raise _Invalid(f"has {len(value)} characters, expected {low} .. {high}")
            if matcher is not None and not matcher(value):
                raise _Invalid(f"does not match the pattern {spec.pattern!r}")
            return value

        return check_string
    if kind in ("integer", "number"):
        integer = kind == "integer"
        low_n = -math.inf if spec.min is None else spec.min
        high_n = math.inf if spec.max is None else spec.max

        def check_number(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float):
                # Never a boolean, lax or not (pydantic's lax mode reads true as 1: an order
                # worth 1.00); the contract's models refuse them too (streamer/events.py).
                if lax and isinstance(value, str):
                    text = value.strip()
                    if integer and _INT_TEXT.match(text):
                        value = int(text)
                    elif not integer and _NUMBER_TEXT.match(text):
                        value = float(text)
                    else:
                        raise _Invalid(
                            f"is text that is not {'an integer' if integer else 'a number'}"
                        )
                else:
                    raise _Invalid(
                        f"is {_kind(value)}, expected {'an integer' if integer else 'a number'}"
                    )
            if integer and not isinstance(value, int):
                if lax and abs(value) < _INT64 and value == int(value):
                    value = int(value)
                else:
                    raise _Invalid("is a fraction, expected an integer")
            if not integer and not math.isfinite(value):
                raise _Invalid("must be a finite number")
            if not low_n <= value <= high_n:
                raise _Invalid(f"is {value!r}, expected {_bound(spec.min)} .. {_bound(spec.max)}")
            return value

        return check_number
    if kind == "boolean":

        def check_boolean(value: Any) -> Any:
            if isinstance(value, bool):
                return value
            if lax:
                if isinstance(value, int) and value in (0, 1):
                    return bool(value)
                if isinstance(value, str):
                    text = value.strip().lower()
                    if text in _LAX_TRUE:
                        return True
                    if text in _LAX_FALSE:
                        return False
            raise _Invalid(f"is {_kind(value)}, expected a boolean")

        return check_boolean
    if kind == "enum":
        allowed = frozenset(spec.values or ())
        shown = ", ".join(map(str, (spec.values or ())[:10]))
        more = "..." if len(allowed) > 10 else ""

        def check_enum(value: Any) -> Any:
            if isinstance(value, str):
                if strip:
                    value = value.strip()
            elif isinstance(value, bool) or not isinstance(value, int):
                raise _Invalid(f"is {_kind(value)}, expected one of {shown}{more}")
            if value not in allowed:
                text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise _Invalid(f"is {text}, expected one of {shown}{more}")
            return value

        return check_enum
    if kind == "timestamp":
        return _time_checker(spec.format)
    # map: text -> text (e.g. experiment -> variant)
    low_m = spec.min_length or 0
    high_m = spec.max_length if spec.max_length is not None else 256

    def check_map(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(f"is {_kind(value)}, expected an object of text values")
        if not low_m <= len(value) <= high_m:
            raise _Invalid(f"has {len(value)} entries, expected {low_m} .. {high_m}")
        for key, item in value.items():
            if not isinstance(item, str) or len(item) > MAX_STRING_LENGTH:
                raise _Invalid(f"entry {str(key)[:40]!r} is {_kind(item)}, expected text")
        return value

    return check_map


@dataclass(frozen=True, slots=True)
class _Field:
    """One declared property (or context field), compiled."""

    name: str
    shown: str  # the field as the document names it (properties.price)
    key: str  # its key in its holder object (the properties or the context object)
    get: Getter | None  # a context field outside the context object: read from the document
    check: Checker
    required: bool
    nullable: bool
    default: Any
    where: str  # plan file:line


@dataclass(frozen=True, slots=True)
class _Fields:
    """Declared fields, arranged for speed: the ones in a holder object by key (validation
    walks the few keys an event has, not every declared field), the required or defaulted
    ones again (to notice them missing), and the ones read from elsewhere in the document."""

    by_key: dict[str, _Field]
    must: tuple[_Field, ...]
    outside: tuple[_Field, ...]

    @classmethod
    def of(cls, fields: tuple[_Field, ...]) -> _Fields:
        inside = tuple(f for f in fields if f.get is None)
        return cls(
            by_key={f.key: f for f in inside},
            must=tuple(f for f in inside if f.required or f.default is not None),
            outside=tuple(f for f in fields if f.get is not None),
        )


@dataclass(frozen=True, slots=True)
class _Event:
    name: str
    stage: str | None
    topics: frozenset[str]
    topics_where: str
    properties_get: Getter
    properties_shown: str
    fields: _Fields
    declared: frozenset[str]  # property names, plus the envelope's top-level keys at the root
    where: str


def _compile_field(
    name: str,
    spec: PropertySpec,
    path: tuple[str, ...],
    where: str,
    plan: TrackingPlan,
    holder: tuple[str, ...] | None = None,
) -> _Field:
    """``holder``: for a context field, the context object's path (None: there is none)."""
    outside = isinstance(spec, ContextField) and (holder is None or path[:-1] != holder)
    return _Field(
        name=name,
        shown=".".join(path) or name,
        key=path[-1],
        get=_getter(path) if outside else None,
        check=_value_checker(spec, strip=plan.strip_strings, lax=plan.coercion == "lax"),
        required=spec.required,
        nullable=spec.nullable,
        default=spec.default,
        where=where,
    )


class CompiledPlan:
    """A plan compiled into per-event checkers; ``validate`` is the only per-event call."""

    def __init__(self, loaded: LoadedPlan) -> None:
        plan = loaded.plan
        self.loaded = loaded
        self.plan = plan
        env = plan.envelope
        self._strip = plan.strip_strings
        self._id_max = env.id_max_length
        self._name_get = _first_of(env.event_name)
        self._name_field = env.event_name[0]
        self._name_where = loaded.where("envelope", "event_name")
        self._id_get = _first_of(env.event_id)
        self._id_field = env.event_id[0]
        self._id_where = loaded.where("envelope", "event_id")
        self._time_get = _first_of(env.event_time.path)
        self._time_field = env.event_time.path[0]
        self._time_check = _time_checker(env.event_time.format)
        self._time_where = loaded.where("envelope", "event_time")
        self._sent_get = _first_of(env.sent_at.path) if env.sent_at else None
        self._sent_field = env.sent_at.path[0] if env.sent_at else ""
        self._sent_check = _time_checker(env.sent_at.format) if env.sent_at else None
        self._identity: list[tuple[str, Getter | None, str, str]] = [
            (
                name,
                _first_of(paths) if paths else None,
                paths[0] if paths else "",
                loaded.where("envelope", name),
            )
            for name, paths in (
                ("session_id", env.session_id),
                ("user_id", env.user_id),
                ("anonymous_id", env.anonymous_id),
            )
        ]
        self._sessions_by = plan.sessions.by if plan.sessions else ()
        holder_path = split_path(env.context_object) if env.context_object else None
        self._context = _Fields.of(
            tuple(
                _compile_field(
                    name,
                    spec,
                    split_path(spec.path),
                    loaded.where("envelope", "context", name),
                    plan,
                    holder_path,
                )
                for name, spec in env.context.items()
            )
        )
        self._context_object = (
            _getter(split_path(env.context_object)) if env.context_object else None
        )
        self._context_object_shown = env.context_object or ""
        prefix = split_path(env.context_object) if env.context_object else ()
        self._context_declared = frozenset(
            split_path(spec.path)[-1]
            for spec in env.context.values()
            if split_path(spec.path)[:-1] == prefix
        )
        self._unplanned_events = plan.unplanned.events
        self._unplanned_properties = plan.unplanned.properties
        self._unplanned_where = loaded.where("unplanned")
        self._events = {name: self._compile_event(loaded, name) for name in plan.events}

    @staticmethod
    def _envelope_keys(plan: TrackingPlan, prefix: tuple[str, ...]) -> frozenset[str]:
        """The keys of the object at ``prefix`` that the envelope itself reads (the top-level
        envelope fields when the properties are at the root; ``$session_id`` and the context
        fields when they are inside ``properties``): not unplanned properties."""
        env = plan.envelope
        paths: list[str] = [*env.event_name, *env.event_id, *env.event_time.path]
        for group in (env.session_id, env.user_id, env.anonymous_id):
            paths.extend(group or ())
        if env.sent_at:
            paths.extend(env.sent_at.path)
        paths.extend(spec.path for spec in env.context.values())
        if env.context_object:
            paths.append(env.context_object)
        depth = len(prefix)
        return frozenset(
            parts[depth]
            for parts in map(split_path, paths)
            if len(parts) > depth and parts[:depth] == prefix
        )

    def _compile_event(self, loaded: LoadedPlan, name: str) -> _Event:
        plan = loaded.plan
        spec = plan.events[name]
        props_path = (
            spec.properties_path if spec.properties_path is not None else plan.envelope.properties
        )
        prefix = split_path(props_path)
        fields = _Fields.of(
            tuple(
                _compile_field(
                    prop,
                    prop_spec,
                    (*prefix, prop),
                    loaded.where("events", name, "properties", prop),
                    plan,
                )
                for prop, prop_spec in spec.properties.items()
            )
        )
        declared = frozenset(spec.properties) | self._envelope_keys(plan, prefix)
        return _Event(
            name=name,
            stage=spec.stage.value if spec.stage else None,
            topics=frozenset(spec.topics),
            topics_where=loaded.where("events", name, "topics"),
            properties_get=_getter(prefix),
            properties_shown=props_path,
            fields=fields,
            declared=declared,
            where=loaded.where("events", name),
        )

    @property
    def event_names(self) -> frozenset[str]:
        return frozenset(self._events)

    def _id(self, value: Any, field: str, where: str) -> str | Rejection:
        if not isinstance(value, str):
            return _violation(field, f"is {_kind(value)}, expected text", where)
        text: str = value.strip() if self._strip else value
        if not 1 <= len(text) <= self._id_max:
            return _violation(
                field, f"has {len(text)} characters, expected 1 .. {self._id_max}", where
            )
        return text

    def validate(
        self, document: Any, topic: str | None = None
    ) -> PlannedEvent | Rejection | Ignored:
        """One decoded JSON document (and the topic it came from, if known)."""
        if not isinstance(document, dict):
            return Rejection(
                ReasonCode.NOT_AN_OBJECT,
                f"payload must be a JSON object, got {type(document).__name__}",
            )
        name = self._name_get(document)
        if not isinstance(name, str) or not name:
            return _violation(
                self._name_field, "is missing or not text (the event name)", self._name_where
            )
        event = self._events.get(name) if len(name) <= _MAX_NAME else None
        if event is None:
            shown = repr(name) if len(name) <= 80 else repr(name[:77]) + "..."
            if self._unplanned_events == "ignore":
                return Ignored(name[:_MAX_NAME], topic, f"unplanned event {shown}")
            return Rejection(
                ReasonCode.UNKNOWN_EVENT_TYPE,
                f"unplanned event {shown} (plan {self._unplanned_where}: events dead_letter)",
                field=self._name_field,
            )
        if topic is not None and event.topics and topic not in event.topics:
            return _violation(
                self._name_field,
                f"{name} is planned on topics {sorted(event.topics)}, arrived on {topic!r}",
                event.topics_where,
            )
        event_id = self._id(self._id_get(document), self._id_field, self._id_where)
        if isinstance(event_id, Rejection):
            return event_id
        try:
            raw_time = self._time_get(document)
            if raw_time is MISSING or raw_time is None:
                raise _Invalid("is required (the event time)")
            event_time = self._time_check(raw_time)
        except _Invalid as exc:
            return _violation(self._time_field, str(exc), self._time_where)
        sent_at = None
        if self._sent_get is not None and self._sent_check is not None:
            raw_sent = self._sent_get(document)
            if raw_sent is not MISSING and raw_sent is not None:
                try:
                    sent_at = self._sent_check(raw_sent)
                except _Invalid as exc:
                    return _violation(self._sent_field, str(exc), self._time_where)
        ids: dict[str, str | None] = {}
        for identity, get, field, where in self._identity:
            raw = get(document) if get is not None else MISSING
            if raw is MISSING or raw is None:
                ids[identity] = None
                continue
            checked = self._id(raw, field, where)
            if isinstance(checked, Rejection):
                return checked
            ids[identity] = checked
        if ids["session_id"] is None:
            if not self._sessions_by:
                return _violation(
                    self._identity[0][2] or "session_id", "is required", self._identity[0][3]
                )
            by = next((by for by in self._sessions_by if ids[by] is not None), None)
            if by is None:
                return _violation(
                    self._identity[0][2] or self._sessions_by[0],
                    f"no session id and no {' or '.join(self._sessions_by)} to make sessions "
                    "by (plan sessions rule)",
                    self.loaded.where("sessions"),
                )
            session_key = f"{by}:{ids[by]}"
        else:
            session_key = ids["session_id"]
        context: dict[str, Any] = {}
        holder = self._context_object(document) if self._context_object is not None else {}
        if holder is MISSING:
            holder = {}
        elif not isinstance(holder, dict):
            return _violation(
                self._context_object_shown,
                f"is {_kind(holder)}, expected an object",
                self.loaded.where("envelope", "context_object"),
            )
        outcome = _check_fields(self._context, holder, document, context)
        if outcome is not None:
            return outcome
        if self._context_object is not None and holder:
            extra = holder.keys() - self._context_declared
            if extra:
                rejection = self._unplanned(
                    holder, extra, self._context_object_shown, context, name
                )
                if rejection is not None:
                    return rejection
        holder = event.properties_get(document)
        if holder is MISSING or holder is None:
            holder = {}
        elif not isinstance(holder, dict):
            return _violation(
                event.properties_shown or "<event>",
                f"is {_kind(holder)}, expected an object",
                event.where,
            )
        properties: dict[str, Any] = {}
        outcome = _check_fields(event.fields, holder, document, properties)
        if outcome is not None:
            return outcome
        extra = holder.keys() - event.declared
        if extra:
            rejection = self._unplanned(holder, extra, event.properties_shown, properties, name)
            if rejection is not None:
                return rejection
        return PlannedEvent(
            name=name,
            event_id=event_id,
            event_time_ms=event_time,
            sent_at_ms=sent_at,
            session_id=ids["session_id"],
            user_id=ids["user_id"],
            anonymous_id=ids["anonymous_id"],
            context=context,
            properties=properties,
            stage=event.stage,
            session_key=session_key,
        )

    def decode(
        self, raw: bytes | None, topic: str | None = None, *, max_bytes: int = 64 * 1024
    ) -> PlannedEvent | Rejection | Ignored:
        """One message value: ``decode_event``'s first checks (tombstone, size, UTF-8, JSON),
        then :meth:`validate`. The event-time bounds against the broker time stay with the
        caller, as the module docstring says."""
        document = parse_json(raw, max_bytes)
        if isinstance(document, Rejection):
            return document
        return self.validate(document, topic)

    def _unplanned(
        self,
        holder: dict[str, Any],
        extra: set[str],
        prefix: str,
        into: dict[str, Any],
        name: str,
    ) -> Rejection | None:
        policy = self._unplanned_properties
        if policy == "keep":
            for key in extra:
                into[key] = holder[key]
            return None
        if policy == "drop":
            return None
        first = min(extra, key=str)
        key = str(first)[:80]
        field = f"{prefix}.{key}" if prefix else key
        more = f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""
        return _violation(
            field,
            f"is not a planned property of {name}{more}; unplanned properties are dead-lettered",
            self._unplanned_where,
        )


def _violation(field: str, problem: str, where: str) -> Rejection:
    return Rejection(ReasonCode.SCHEMA_VIOLATION, f"{field}: {problem} (plan {where})", field)


def _check_fields(
    fields: _Fields,
    holder: Mapping[str, Any],
    document: Mapping[str, Any],
    into: dict[str, Any],
) -> Rejection | None:
    """Check the declared fields (read from ``holder``, or from the document for a context
    field outside the context object) into ``into``; the first violation."""
    by_key = fields.by_key
    for key, raw in holder.items():
        spec = by_key.get(key)
        if spec is None:
            continue
        if raw is None:
            if spec.required:
                return _violation(spec.shown, "is required", spec.where)
            if not spec.nullable:
                return _violation(spec.shown, "must not be null", spec.where)
            continue
        try:
            into[spec.name] = spec.check(raw)
        except _Invalid as exc:
            return _violation(spec.shown, str(exc), spec.where)
    for spec in fields.must:
        if holder.get(spec.key) is None:
            if spec.required:
                return _violation(spec.shown, "is required", spec.where)
            into[spec.name] = spec.default
    for spec in fields.outside:
        raw = spec.get(document)  # type: ignore[misc]
        if raw is MISSING or raw is None:
            if spec.required:
                return _violation(spec.shown, "is required", spec.where)
            if raw is None and not spec.nullable:
                return _violation(spec.shown, "must not be null", spec.where)
            if spec.default is not None:
                into[spec.name] = spec.default
            continue
        try:
            into[spec.name] = spec.check(raw)
        except _Invalid as exc:
            return _violation(spec.shown, str(exc), spec.where)
    return None


def compile_plan(loaded: LoadedPlan) -> CompiledPlan:
    """Compile once (at start); then ``validate`` per event."""
    return CompiledPlan(loaded)
