"""The tracking plan as frozen pydantic models: what a shop's events look like.

A plan declares the *envelope* (where every event carries its name, id, time, identities and
context, as dotted paths), the *events* by name with their typed properties, the input topics
and the customer-flow stage of each, the *unplanned* policies and the *sessions* rule. It is
data only: ``streamer.plan.load`` reads it from YAML, ``streamer.plan.compile`` turns it into
a validator. ``docs/tracking-plan.md`` describes every field.

Every collection is capped (the ``MAX_*`` limits below), so that a hostile plan is refused at
bounded cost instead of being compiled.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from streamer.funnel.definition import Duration
from streamer.funnel.stages import LifecycleStage

__all__ = [
    "MAX_CONTEXT_FIELDS",
    "MAX_ENUM_VALUES",
    "MAX_EVENTS",
    "MAX_PATH_DEPTH",
    "MAX_PATTERN_LENGTH",
    "MAX_PROPERTIES",
    "MAX_TOPICS",
    "ContextField",
    "EventSpec",
    "PropertySpec",
    "Sessions",
    "TimeField",
    "TrackingPlan",
    "UnplannedPolicy",
    "check_pattern",
    "split_path",
]

# --- limits: a plan beyond them is refused, with the field and the line ---------------------
MAX_EVENTS = 2000
MAX_PROPERTIES = 500  # per event
MAX_CONTEXT_FIELDS = 200
MAX_ENUM_VALUES = 1000
MAX_TOPICS = 64  # per event
MAX_PATH_DEPTH = 8  # segments of a dotted path (context.page.url has 3)
MAX_PATH_LENGTH = 256
MAX_PATTERN_LENGTH = 256
MAX_NAME_LENGTH = 128
MAX_PATHS = 4  # fallbacks of one envelope field

PropertyType = Literal["string", "integer", "number", "boolean", "enum", "timestamp", "map"]
TimeFormat = Literal["iso8601", "epoch_ms", "epoch_s"]
Identity = Literal["anonymous_id", "user_id"]

_PATH_PART = re.compile(r"^[A-Za-z0-9_$@\-]+$")


def split_path(path: str) -> tuple[str, ...]:
    """``"properties.$session_id"`` -> ``("properties", "$session_id")``; ``""`` -> ``()``."""
    return tuple(path.split(".")) if path else ()


def _dotted(value: str) -> str:
    if len(value) > MAX_PATH_LENGTH:
        raise ValueError(f"a path has at most {MAX_PATH_LENGTH} characters")
    parts = split_path(value)
    if len(parts) > MAX_PATH_DEPTH:
        raise ValueError(f"a path has at most {MAX_PATH_DEPTH} segments, got {len(parts)}")
    for part in parts:
        if not _PATH_PART.match(part):
            raise ValueError(f"{value!r} is not a dotted path of names (a.b.c)")
    return value


DottedPath = Annotated[str, AfterValidator(_dotted)]


def _paths(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


# One path, or a few tried in order (the first present wins): event: [event, type].
Paths = Annotated[
    tuple[DottedPath, ...],
    BeforeValidator(_paths),
    Field(min_length=1, max_length=MAX_PATHS),
]


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # its parse errors become our one-line plan errors
    options.never_capture = True  # a pattern only says match or not
    return options


_RE2_OPTIONS = _re2_options()


def check_pattern(pattern: str) -> Any:  # an RE2 pattern (the package has no types)
    """Compile a property pattern with RE2, whose matching takes time linear in the value
    whatever the pattern (Python's ``re`` backtracks: ``^a*a*a*a*$`` on 400 characters took
    14 s, and no guard on the pattern's shape catches every such case). RE2 refuses what
    needs backtracking (backreferences, lookarounds): the error says so. At most
    ``MAX_PATTERN_LENGTH`` characters; values are also length-capped before they are
    matched (``streamer.plan.compile``)."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"a pattern has at most {MAX_PATTERN_LENGTH} characters")
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ValueError(
            f"not a regular expression RE2 runs in linear time: {detail} (backreferences "
            "and lookarounds are not supported)"
        ) from None


def pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """Whether a text holds a match of ``pattern`` (checked by :func:`check_pattern`),
    per value. It calls RE2's matcher on the UTF-8 bytes directly: the package's ``re``-like
    wrapper converts offsets between bytes and characters on every call, three times the
    cost of the match itself on the short values plans check."""
    compiled = check_pattern(pattern)
    low_level = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
    if low_level is None or anchor is None:  # another google-re2 layout: the wrapper
        return lambda text: compiled.search(text) is not None
    match, unanchored = low_level.Match, anchor.UNANCHORED

    def matches(text: str) -> bool:
        encoded = text.encode("utf-8", "surrogatepass")  # never raises
        return bool(match(unanchored, encoded, 0, len(encoded))[0][0] >= 0)

    return matches


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]


def _shorthand_type(data: Any) -> Any:
    """``price: number`` means ``price: {type: number}``."""
    return {"type": data} if isinstance(data, str) else data


class PropertySpec(_Frozen):
    """One property: its type, whether it is required, and its bounds."""

    type: PropertyType
    required: bool = False
    nullable: bool = Field(
        default=True, description="an optional property may be null (as if absent)"
    )
    description: str | None = Field(default=None, max_length=2000)
    pattern: str | None = Field(default=None, description="string: a regular expression")
    min: float | None = Field(default=None, description="integer/number: lower bound")
    max: float | None = Field(default=None, description="integer/number: upper bound")
    min_length: int | None = Field(default=None, ge=0, description="string/map: at least")
    max_length: int | None = Field(default=None, ge=0, description="string/map: at most")
    values: tuple[str | int, ...] | None = Field(
        default=None, max_length=MAX_ENUM_VALUES, description="enum: the allowed values"
    )
    format: tuple[TimeFormat, ...] = Field(
        default=("iso8601",),
        min_length=1,
        max_length=2,
        description="timestamp: iso8601 text and/or one numeric unit",
    )
    default: str | int | float | bool | None = Field(
        default=None, description="the value an absent optional property takes"
    )

    @field_validator("format", mode="before")
    @classmethod
    def _one_format(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("pattern")
    @classmethod
    def _safe_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            check_pattern(value)
        return value

    @model_validator(mode="after")
    def _fits_type(self) -> PropertySpec:
        kind = self.type
        if self.pattern is not None and kind != "string":
            raise ValueError(f"pattern applies to strings, not to {kind}")
        if (self.min is not None or self.max is not None) and kind not in ("integer", "number"):
            raise ValueError(f"min/max apply to integer and number, not to {kind}")
        if (self.min_length is not None or self.max_length is not None) and kind not in (
            "string",
            "map",
        ):
            raise ValueError(f"min_length/max_length apply to string and map, not to {kind}")
        if kind == "enum":
            if not self.values:
                raise ValueError("an enum needs values")
            if len(set(self.values)) != len(self.values):
                raise ValueError("enum values must be unique")
        elif self.values is not None:
            raise ValueError(f"values apply to enum, not to {kind}")
        if kind == "timestamp":
            numeric = [f for f in self.format if f != "iso8601"]
            if len(numeric) > 1 or len(set(self.format)) != len(self.format):
                raise ValueError(
                    "format: iso8601 and at most one numeric unit (epoch_ms or epoch_s): "
                    "a unit is declared, never guessed"
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            raise ValueError("min_length is above max_length")
        if self.required and self.default is not None:
            raise ValueError("a required property has no default")
        return self


PropertyDecl = Annotated[PropertySpec, BeforeValidator(_shorthand_type)]


class ContextField(PropertySpec):
    """A named context field: where it is (``path``) and what it holds."""

    path: DottedPath


class TimeField(_Frozen):
    """Where a time is, and its declared format(s): ``iso8601`` text (with an offset),
    ``epoch_ms`` or ``epoch_s`` numbers. A string is read as ISO 8601, a number in the one
    numeric unit declared: nothing is guessed from the magnitude."""

    path: Paths
    format: tuple[TimeFormat, ...] = Field(min_length=1, max_length=2)

    @field_validator("format", mode="before")
    @classmethod
    def _one_format(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("format")
    @classmethod
    def _one_unit(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        numeric = [f for f in value if f != "iso8601"]
        if len(numeric) > 1 or len(set(value)) != len(value):
            raise ValueError(
                "iso8601 and at most one numeric unit (epoch_ms or epoch_s): a unit is "
                "declared, never guessed"
            )
        return value


class Envelope(_Frozen):
    """Where every event carries what streamer needs, as dotted paths."""

    event_name: Paths
    event_id: Paths
    event_time: TimeField
    sent_at: TimeField | None = Field(
        default=None, description="the producer's clock at send time (clock-skew correction)"
    )
    session_id: Paths | None = None
    user_id: Paths | None = None
    anonymous_id: Paths | None = None
    properties: DottedPath = Field(
        default="properties",
        description="the object holding the event's properties; '' is the top level",
    )
    context: dict[Name, ContextField] = Field(default_factory=dict, max_length=MAX_CONTEXT_FIELDS)
    context_object: DottedPath | None = Field(
        default=None,
        description="the object holding the context fields: its other keys are unplanned "
        "properties (the unplanned.properties policy applies to them)",
    )
    id_max_length: int = Field(default=128, ge=1, le=4096)


class EventSpec(_Frozen):
    """One planned event."""

    description: str | None = Field(default=None, max_length=2000)
    stage: LifecycleStage | None = Field(
        default=None, description="its stage of the customer's flow, for the stage counters"
    )
    topics: tuple[Name, ...] = Field(
        default=(), max_length=MAX_TOPICS, description="input topics it may arrive on (empty: any)"
    )
    properties_path: DottedPath | None = Field(
        default=None,
        description="where this event's properties are, if not at envelope.properties (e.g. a "
        "Snowplow self-describing payload)",
    )
    properties: dict[Name, PropertyDecl] = Field(default_factory=dict, max_length=MAX_PROPERTIES)


class UnplannedPolicy(_Frozen):
    """What happens to what the plan does not declare (see docs/tracking-plan.md: why)."""

    events: Literal["ignore", "dead_letter"] = "ignore"
    properties: Literal["keep", "drop", "dead_letter"] = "keep"


class Sessions(_Frozen):
    """How sessions are made for events without a session id: by the first identity present
    (in the order given), a new session after ``inactivity`` without an event."""

    by: tuple[Identity, ...] = Field(min_length=1, max_length=2)
    inactivity_ms: Duration = Field(default=1_800_000, validation_alias="inactivity")

    @field_validator("by", mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class TrackingPlan(_Frozen):
    version: Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)] = Field(
        min_length=1, max_length=64
    )
    description: str | None = Field(default=None, max_length=2000)
    strip_strings: bool = Field(
        default=False, description="trim whitespace around string values before checking them"
    )
    coercion: Literal["strict", "lax"] = Field(
        default="strict",
        description="strict: JSON types as declared; lax: numeric text for numbers, integral "
        "floats for integers, 0/1 and true/false text for booleans (pydantic's lax mode)",
    )
    envelope: Envelope
    events: dict[Name, EventSpec] = Field(min_length=1, max_length=MAX_EVENTS)
    unplanned: UnplannedPolicy = Field(default_factory=UnplannedPolicy)
    sessions: Sessions | None = None

    @model_validator(mode="after")
    def _identities(self) -> TrackingPlan:
        env = self.envelope
        if self.sessions is None and env.session_id is None:
            raise ValueError(
                "envelope.session_id is not declared: declare it or a sessions rule "
                "(sessions: {by: anonymous_id, inactivity: 30m})"
            )
        if self.sessions is not None:
            for identity in self.sessions.by:
                if getattr(env, identity) is None:
                    raise ValueError(f"sessions.by names {identity}, not declared in envelope")
        return self

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic an event names, sorted (empty: the plan names none)."""
        return tuple(sorted({t for spec in self.events.values() for t in spec.topics}))
