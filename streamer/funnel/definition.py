"""Funnel definitions: YAML files validated by pydantic, errors naming the file, line and field.

A funnel is an ordered list of stages, each matched by event types and optional property
filters; a conversion window from the first stage; per-stage abandonment timeouts; the segment
dimensions it breaks down by. See the README's "Funnel semantics" for what the numbers mean.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from streamer.funnel.catalogue import EventCatalogue, check_known_events
from streamer.funnel.yaml_lines import (
    YamlSourceError,
    line_index,
    line_of,
    problem_message,
    read_yaml,
)

__all__ = [
    "FUNNEL_FILE_PATTERNS",
    "Condition",
    "Exclusion",
    "Experiment",
    "FunnelDefinition",
    "FunnelDefinitionError",
    "LifecycleDeclaration",
    "Segment",
    "Stage",
    "StepAttribution",
    "apply_overrides",
    "check_known_events",
    "load_funnel",
    "load_funnels",
    "parse_duration_ms",
    "stored_field",
]

FUNNEL_FILE_PATTERNS = ("*.yaml", "*.yml")
# A segment value (and a lifecycle channel) is cut to this many characters: labels stay bounded.
SEGMENT_VALUE_CHARS = 64
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_USER_WINDOW_MAX_MS = 90 * 86_400_000
# A held field: an event property by name (or property.<name>), or context.<field>.
_HELD = r"^((context|property)\.)?[A-Za-z0-9_]+$"
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class FunnelDefinitionError(ValueError):
    """A funnel file is invalid; the message names the file, the line and the field."""


def parse_duration_ms(value: Any) -> int:
    """``"30m"``, ``"90s"``, ``"1.5h"``, ``"2d"`` or a number of seconds -> milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is text like '30m' or a number of seconds")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("a duration must be positive")
        return round(value * 1000)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            millis = round(float(match.group(1)) * _UNIT_MS[match.group(2)])
            if millis > 0:
                return millis
    raise ValueError(f"{value!r} is not a duration (use e.g. 500ms, 90s, 30m, 1h, 2d)")


Duration = Annotated[int, BeforeValidator(parse_duration_ms)]


def stored_field(source: str) -> str:
    """How an event stores a source's field: ``property.value`` as ``value``, a context or
    experiment field by its whole name (``context.channel``)."""
    kind, _, name = source.partition(".")
    return name if kind == "property" else source


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le", "in")


class Condition(_Frozen):
    """A filter on one event property: ``{value: {gt: 0}}`` or ``{landing: true}``."""

    property: str
    op: Literal["eq", "ne", "gt", "ge", "lt", "le", "in"]
    value: Any

    def matches(self, properties: Mapping[str, Any]) -> bool:
        actual = properties.get(self.property)
        if actual is None:
            return self.op == "ne" and self.value is not None
        try:
            if self.op == "eq":
                return bool(actual == self.value)
            if self.op == "ne":
                return bool(actual != self.value)
            if self.op == "in":
                return actual in self.value
            if self.op == "gt":
                return bool(actual > self.value)
            if self.op == "ge":
                return bool(actual >= self.value)
            if self.op == "lt":
                return bool(actual < self.value)
            return bool(actual <= self.value)
        except TypeError:
            return False  # comparing text with a number: no match, not a crash


def _conditions(raw: Any) -> list[Condition]:
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise ValueError("where: must map property names to a value or {operator: value}")
    out = []
    for prop, spec in raw.items():
        if isinstance(spec, Mapping):
            if len(spec) != 1 or next(iter(spec)) not in _OPERATORS:
                raise ValueError(f"where.{prop}: use one of {', '.join(_OPERATORS)}")
            ((op, value),) = spec.items()
            out.append(Condition(property=str(prop), op=op, value=value))
        else:
            out.append(Condition(property=str(prop), op="eq", value=spec))
    return out


class Stage(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    event_types: tuple[str, ...] = Field(min_length=1)
    where: tuple[Condition, ...] = ()
    timeout_ms: Duration | None = Field(
        default=None,
        validation_alias="timeout",
        description="step timeout: no next stage this long after reaching this one = dropped "
        "(default: the funnel's step_timeout)",
    )
    optional: bool = Field(
        default=False,
        description="attempts may skip it; the next required stage decides the drop",
    )
    first_time: bool = Field(
        default=False,
        description="only the unit's first event matching the stage (type and filters) fills "
        "it: the first since the unit's state was last forgotten (spec: First-time steps)",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _matcher_shorthand(data)

    def matches(self, event_type: str, properties: Mapping[str, Any]) -> bool:
        return event_type in self.event_types and all(c.matches(properties) for c in self.where)


def _matcher_shorthand(data: Any) -> Any:
    """``event_type: x`` for ``event_types: [x]``, and ``where`` as conditions."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    if "event_type" in data:
        data["event_types"] = [data.pop("event_type")]
    if "where" in data:
        data["where"] = _conditions(data["where"])
    return data


class Exclusion(_Frozen):
    """Events that take an attempt out of the funnel between two of its stages."""

    event_types: tuple[str, ...] = Field(min_length=1)
    where: tuple[Condition, ...] = ()
    between: tuple[str, str] | None = Field(
        default=None,
        description="[from, to]: the stages it excludes at, from <= k < to (default: all)",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _matcher_shorthand(data)

    def matches(self, event_type: str, properties: Mapping[str, Any]) -> bool:
        return event_type in self.event_types and all(c.matches(properties) for c in self.where)


class StepAttribution(_Frozen):
    """``attribution: {step: N}``: the value of the events that filled step N (from 1)."""

    step: int = Field(ge=1, description="the stage's number, from 1")


class Segment(_Frozen):
    """A breakdown dimension: a context field, an event property or an experiment."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    source: str = Field(
        description="context.<field>, property.<name>, experiment.<name>, or event_name (the "
        "name of one of `events` seen in the attempt: client errors, spec: 'Barriers')",
        pattern=r"^((context|property|experiment)\.[A-Za-z0-9_]+|event_name)$",
    )
    buckets: tuple[float, ...] = Field(
        default=(),
        max_length=20,
        description="bucket edges in milliseconds of a numeric source: [1000, 3000, 10000] "
        "gives the values <1s, 1-3s, 3-10s and >=10s (each bucket holds its lower edge)",
    )
    events: tuple[str, ...] = Field(
        default=(),
        max_length=100,
        description="source event_name: the event names whose name is the value",
    )
    cap: int = Field(default=10, ge=1, le=200, description="values kept; the rest fold into other")
    values: tuple[str, ...] = Field(
        default=(), description="if given, exactly these values are kept (others fold)"
    )
    attribution: Literal["first_touch", "last_touch"] | StepAttribution = Field(
        default="first_touch",
        description="which of the attempt's events give the value at a stage's entry: the "
        "first, the latest, or those of step N (spec: 'Breakdown attribution')",
    )

    @model_validator(mode="before")
    @classmethod
    def _source_needed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "source" not in data and "name" in data:
            name = data["name"]
            raise ValueError(
                f"unknown segment {name!r}; write `{name}: {{source: property.{name}}}` "
                "(or context.<field>, experiment.<name>); built in: "
                + ", ".join(_DEFAULT_SEGMENT_SOURCES)
            )
        return data

    @model_validator(mode="after")
    def _barrier_options_fit(self) -> Segment:
        if self.source == "event_name":
            if not self.events:
                raise ValueError("source event_name needs `events`: the event names it names")
            if self.buckets or self.values:
                raise ValueError("source event_name has no buckets or values: `events` says")
            if isinstance(self.attribution, StepAttribution):
                # The listed events match no stage: a step's events never carry them.
                raise ValueError("source event_name takes first_touch or last_touch")
        elif self.events:
            raise ValueError("`events` is for source event_name")
        if self.buckets:
            if self.source.startswith("experiment."):
                raise ValueError("an experiment's variants are names: no buckets")
            if self.values:
                raise ValueError("buckets name their own values: no `values` with them")
            if any(b < 0 for b in self.buckets) or any(
                a >= b for a, b in zip(self.buckets, self.buckets[1:], strict=False)
            ):
                raise ValueError("bucket edges are increasing milliseconds, from 0")
        return self

    @property
    def bucket_labels(self) -> tuple[str, ...]:
        """The buckets' values, lowest first: ``<1s``, ``1-3s``, ``3-10s``, ``>=10s``."""
        edges = self.buckets
        if not edges:
            return ()
        middle = [_span_text(low, high) for low, high in pairwise(edges)]
        return (f"<{_ms_text(edges[0])}", *middle, f">={_ms_text(edges[-1])}")


def _ms_text(ms: float) -> str:
    """1000 -> ``1s``, 1500 -> ``1.5s``, 250 -> ``250ms``."""
    return f"{ms / 1000:g}s" if ms >= 1000 and ms % 100 == 0 else f"{ms:g}ms"


def _span_text(low: float, high: float) -> str:
    """``1-3s`` when both edges are in seconds, else ``250ms-1s``."""
    low_text, high_text = _ms_text(low), _ms_text(high)
    if low_text.endswith("s") and not low_text.endswith("ms") and not high_text.endswith("ms"):
        return f"{low_text[:-1]}-{high_text}"
    return f"{low_text}-{high_text}"


def _off_is_a_word(value: Any) -> Any:
    # YAML 1.1 reads an unquoted `off` (and `no`) as false; in a severity it means "off".
    return "off" if value is False else value


SeverityOrOff = Annotated[Literal["page", "warning", "off"], BeforeValidator(_off_is_a_word)]


class StepAlerting(_Frozen):
    """Per-step overrides of the funnel's alert policy."""

    severity: SeverityOrOff | None = None
    min_increase: float | None = Field(default=None, gt=0, lt=1)
    min_decided: int | None = Field(default=None, ge=1)


class AlertPolicy(_Frozen):
    """When a step's drop-off is worth telling people about (``streamer.funnel.detect``)."""

    min_decided: int = Field(
        default=30, ge=1, description="sessions a final-cohort test needs (step or segment)"
    )
    min_baseline_decided: int = Field(
        default=500,
        ge=1,
        description="final sessions a step's baseline needs before it may alert (warm-up)",
    )
    baseline_half_life: float = Field(
        default=2000,
        ge=50,
        description="sessions after which a final cohort weighs half in the baseline",
    )
    # Family-wise: every test of one evaluation (steps x segments x final/young) shares it.
    significance: float = Field(default=1e-6, gt=0, lt=0.5)
    min_increase: float = Field(
        default=0.10, gt=0, lt=1, description="absolute rise of the drop (or not-converted) rate"
    )
    young_span_ms: Duration = Field(
        default=900_000,
        validation_alias="young_span",
        description="how far back young cohorts are tested at matched age",
    )
    min_age_ms: Duration = Field(
        default=60_000,
        validation_alias="min_age",
        description="a cohort younger than this is not tested yet",
    )
    cooldown_ms: Duration = Field(default=1_800_000, validation_alias="cooldown")
    resolve_after_windows: int = Field(default=3, ge=1)
    severity: Literal["page", "warning"] = "warning"
    abandonment_severity: Literal["page", "warning"] = "page"
    data_quality_severity: SeverityOrOff = Field(
        default="warning",
        description="tracking alerts (an input topic or event type went silent); 'off' still "
        "holds the conversion tests it would blind, it only sends nothing",
    )
    min_baseline_events: int = Field(
        default=5000,
        ge=100,
        description="accepted events the tracking check learns from before it may alert",
    )
    volume_half_life: float = Field(
        default=50_000,
        ge=1000,
        description="events after which a window weighs half in the volume baseline",
    )
    steps: dict[str, StepAlerting] = Field(default_factory=dict)


_DEFAULT_SEGMENT_SOURCES = {
    "device": "context.device",
    "channel": "context.channel",
    "country": "context.country",
    "utm_source": "context.utm_source",
    "utm_campaign": "context.utm_campaign",
    "app_version": "context.app_version",
    "payment_method": "property.payment_method",
}


class Experiment(_Frozen):
    """An A/B test whose variants are compared step by step (docs/experiments.md). Its
    variant is a breakdown of the funnel named after it, attributed at the exposure stage."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    variant_from: str | None = Field(
        default=None,
        pattern=r"^(context|property|experiment)\.[A-Za-z0-9_]+$",
        description="where the exposure's events carry the variant (default: "
        "experiment.<name>, the event's context.experiments)",
    )
    exposure: str = Field(
        description="the stage whose entry exposes an attempt: the variant is that of the "
        "events that entered it (first exposure wins)"
    )
    variants: dict[str, float] = Field(
        min_length=2, max_length=20, description="variant -> intended share (summing to 1)"
    )
    control: str = Field(description="the variant the others are compared with")
    steps: tuple[str, ...] = Field(
        default=(), description="steps guarded, from the exposure stage on (default: every one)"
    )
    alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="false-alert rate of the experiment's guardrails (split over its steps "
        "and variants) and of its sample-ratio check, however often they are read",
    )
    severity: Literal["page", "warning"] = "warning"

    @property
    def source(self) -> str:
        return self.variant_from or f"experiment.{self.name}"


class Survey(_Frozen):
    """Survey answers counted beside the funnel (docs/satisfaction.md): each answer at the
    stage its unit's latest attempt had reached when it answered."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    event_type: str = Field(description="the answer's event")
    score: str = Field(
        pattern=r"^[A-Za-z0-9_]+$", description="the event property holding the score"
    )
    kind: Literal["csat", "nps"] = Field(description="csat: 1 to 5; nps: 0 to 10")


def _experiment_segments(data: dict[str, Any]) -> list[Any]:
    """Each well-formed experiment's breakdown: its variants (others fold into ``other``),
    attributed at the exposure stage's entry. A malformed one adds none; its own validation
    names the problem."""
    stages = data.get("stages")
    names = (
        [s.get("name") for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []
    )
    added: list[Any] = []
    for raw in data.get("experiments") or ():
        if not isinstance(raw, dict) or raw.get("exposure") not in names:
            continue
        variants = raw.get("variants")
        if not isinstance(raw.get("name"), str) or not isinstance(variants, dict):
            continue
        added.append({
            "name": raw["name"],
            "source": raw.get("variant_from") or f"experiment.{raw['name']}",
            "values": [str(v) for v in variants],
            # room for unknown and other too: they take a rank when the windows are folded
            "cap": len(variants) + 2,
            "attribution": {"step": names.index(raw["exposure"]) + 1},
        })  # fmt: skip
    return added


# Words the lifecycle's channel labels use for what is not a declared channel.
_CHANNEL_FOLDS = ("other", "unknown")
ChannelName = Annotated[str, Field(min_length=1, max_length=SEGMENT_VALUE_CHARS)]


class LifecycleDeclaration(_Frozen):
    """A user funnel's lifecycle figures (docs/lifecycle.md): first visit -> first order ->
    repeat orders within the horizons -> review or referral, by cohort."""

    visits: tuple[str, ...] = Field(
        default=("page_view",),
        min_length=1,
        description="event types that are a visit (an order is one too)",
    )
    orders: tuple[str, ...] = Field(
        default=("order_placed",), min_length=1, description="event types that are an order"
    )
    value_from: str = Field(
        default="property.value",
        pattern=r"^(context|property)\.[A-Za-z0-9_]+$",
        description="where an order carries its value (property.<name> or context.<field>)",
    )
    advocacy: tuple[str, ...] = Field(
        default=("review_submitted", "referral_sent"),
        description="event types that make a buyer an advocate (after the first order)",
    )
    channel_from: str = Field(
        default="context.channel",
        pattern=r"^(context|property)\.[A-Za-z0-9_]+$",
        description="where the first visit carries the acquisition channel",
    )
    channels: tuple[ChannelName, ...] = Field(
        min_length=1,
        max_length=20,
        description="the channels counted apart (a bounded label); others fold into other, "
        "none into unknown",
    )
    horizon_days: tuple[Annotated[int, Field(ge=1, le=366)], ...] = Field(
        default=(30, 60, 90),
        min_length=1,
        max_length=5,
        description="days after the first order (repeat rate) or first visit (value per user)",
    )
    churn_days: int = Field(
        default=60,
        ge=1,
        le=366,
        description="a buyer churned once this many whole UTC days passed after the day of "
        "their latest order without another",
    )

    @field_validator("channels")
    @classmethod
    def _channels_are_labels(cls, channels: tuple[str, ...]) -> tuple[str, ...]:
        folded = [c for c in channels if c in _CHANNEL_FOLDS]
        if folded:
            raise ValueError(f"{folded} name what is not a declared channel; pick other names")
        if len(set(channels)) != len(channels):
            raise ValueError(f"channels must be unique, got {list(channels)}")
        return channels

    @field_validator("horizon_days")
    @classmethod
    def _horizons_rise(cls, days: tuple[int, ...]) -> tuple[int, ...]:
        if list(days) != sorted(set(days)):
            raise ValueError(f"horizons must rise, each once, got {list(days)}")
        return days

    @model_validator(mode="after")
    def _kinds_apart(self) -> LifecycleDeclaration:
        problems: list[InitErrorDetails] = []
        for index, event_type in enumerate(self.advocacy):
            if event_type in self.orders or event_type in self.visits:
                problems.append(_problem(
                    ("advocacy", index), f"{event_type!r} is a visit or an order already"
                ))  # fmt: skip
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


def _default_source(name: str) -> dict[str, str]:
    known = _DEFAULT_SEGMENT_SOURCES.get(name)
    return {"source": known} if known else {}


class FunnelDefinition(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=40)
    follows: Literal["session", "user"] = Field(
        default="session",
        description="the counting unit: a session, or a user across sessions and devices",
    )
    order: Literal["ordered", "strict", "unordered"] = Field(
        default="ordered",
        description="ordered: later steps at later instants, anything in between; strict: any "
        "other event in between breaks the attempt; unordered: distinct steps in any order",
    )
    strict_ignore: tuple[str, ...] = Field(
        default=(), description="strict funnels: event types that never break an attempt"
    )
    reentry: Literal["first", "latest"] = Field(
        default="first",
        description="a first-stage event during an attempt: only activity (first), or a "
        "restart from it (latest; ordered funnels)",
    )
    uniques: bool = Field(
        default=False,
        description="also count units: each unit once per cohort window and stage it entered "
        "(spec: Uniques and totals)",
    )
    hold: tuple[Annotated[str, Field(pattern=_HELD)], ...] = Field(
        default=(),
        description="properties (or context.<field>) whose value, fixed at the attempt's "
        "first step, later steps must carry",
    )
    stages: tuple[Stage, ...] = Field(min_length=2, max_length=20)
    exclusions: tuple[Exclusion, ...] = Field(
        default=(), description="events that take an attempt out between two stages"
    )
    conversion_window_ms: Duration = Field(validation_alias="conversion_window")
    window_ms: Duration = Field(default=60_000, validation_alias="window")
    segments: tuple[Segment, ...] = ()
    default_step_timeout_ms: Duration = Field(
        default=1_800_000,
        validation_alias="step_timeout",
        description="the timeout of every step whose stage names none",
    )
    abandonment: tuple[str, ...] = Field(
        default=(), description="stages whose drop-off emits an abandonment event"
    )
    alerting: AlertPolicy = Field(default_factory=lambda: AlertPolicy())
    experiments: tuple[Experiment, ...] = Field(
        default=(), description="A/B tests guarded step by step (docs/experiments.md)"
    )
    lifecycle: LifecycleDeclaration | None = Field(
        default=None,
        description="user funnels: cohort figures of first and repeat orders (docs/lifecycle.md)",
    )
    surveys: tuple[Survey, ...] = Field(
        default=(), max_length=20, description="CSAT and NPS answers joined to stages"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("follows") == "user" and "step_timeout" not in data:
            # A user's steps take days: by default a step may take the whole window.
            data["step_timeout"] = data.get("conversion_window")
        segments = data.get("segments")
        if isinstance(segments, Mapping):  # {device: {cap: 5}} or {device: null}
            data["segments"] = [
                {"name": name, **_default_source(name), **(spec or {})}
                for name, spec in segments.items()
            ]
        if data.get("experiments"):
            declared = data.get("segments") or []
            data["segments"] = (
                [*declared, *_experiment_segments(data)] if isinstance(declared, list) else declared
            )
        return data

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return stages

    @field_validator("strict_ignore")
    @classmethod
    def _ignore_only_when_strict(
        cls, ignored: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if ignored and info.data.get("order") != "strict":
            raise ValueError("strict_ignore applies to order: strict only")
        return ignored

    @model_validator(mode="after")
    def _order_fits(self) -> FunnelDefinition:
        # Raised with the field's location, so the message names its line.
        problems: list[InitErrorDetails] = []
        stage_types = {t for stage in self.stages for t in stage.event_types}
        for index, event_type in enumerate(self.strict_ignore):
            if event_type in stage_types:
                problems.append(_problem(
                    ("strict_ignore", index),
                    f"{event_type!r} is a stage's event type; a step never breaks its own attempt",
                ))  # fmt: skip
        names = [stage.name for stage in self.stages]
        for index, exclusion in enumerate(self.exclusions):
            for event_type in exclusion.event_types:
                if event_type in stage_types:
                    problems.append(_problem(
                        ("exclusions", index, "event_types"),
                        f"{event_type!r} is a stage's event type; an event never both "
                        "advances and excludes",
                    ))  # fmt: skip
            if exclusion.between is None:
                continue
            low, high = exclusion.between
            unknown = [name for name in (low, high) if name not in names]
            if unknown:
                problems.append(_problem(
                    ("exclusions", index, "between"),
                    f"names unknown stages {unknown}; stages are {names}",
                ))  # fmt: skip
            elif names.index(low) >= names.index(high):
                problems.append(_problem(
                    ("exclusions", index, "between"),
                    f"{low!r} must come before {high!r}",
                ))  # fmt: skip
            elif self.order == "unordered" and (low, high) != (names[0], names[-1]):
                problems.append(_problem(
                    ("exclusions", index, "between"),
                    "an unordered funnel's exclusions span the whole funnel (positions are not "
                    "stages): leave out between",
                ))  # fmt: skip
        for index, stage in enumerate(self.stages):
            if not stage.optional:
                continue
            if index in (0, len(self.stages) - 1):
                problems.append(_problem(
                    ("stages", index, "optional"),
                    "the first and the last stage cannot be optional (attempts start at the "
                    "first; the last is the goal)",
                ))  # fmt: skip
            elif self.order != "ordered":
                problems.append(_problem(
                    ("stages", index, "optional"),
                    f"optional stages are for ordered funnels only, not {self.order}",
                ))  # fmt: skip
            elif stage.timeout_ms is not None:
                problems.append(_problem(
                    ("stages", index, "timeout"),
                    "an optional stage has the timeout of the required stage before it (the "
                    "next required stage decides the drop)",
                ))  # fmt: skip
        if self.follows == "user" and self.conversion_window_ms > _USER_WINDOW_MAX_MS:
            problems.append(_problem(
                ("conversion_window",), "a user funnel's conversion window is at most 90d"
            ))  # fmt: skip
        problems += self._repeats_fit() + self._hold_and_attribution_fit()
        if self.order == "unordered":
            for index, stage in enumerate(self.stages):
                if stage.timeout_ms is not None:
                    problems.append(_problem(
                        ("stages", index, "timeout"),
                        "an unordered funnel's steps have no order, so no stage has a timeout of "
                        "its own: use the funnel's step_timeout",
                    ))  # fmt: skip
            if self.abandonment:
                problems.append(_problem(
                    ("abandonment",),
                    "an unordered funnel has no stage an attempt stops at (counts are by number "
                    "of steps done): no abandonment",
                ))  # fmt: skip
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def _repeats_fit(self) -> list[InitErrorDetails]:
        """Repeated event types and re-entry (spec: "Repeated events and re-entry")."""
        problems: list[InitErrorDetails] = []
        if self.order == "unordered":
            # Steps in no order: which of two look-alike steps an event does is undecidable.
            owner: dict[str, str] = {}
            for index, stage in enumerate(self.stages):
                for event_type in stage.event_types:
                    if event_type in owner:
                        problems.append(_problem(
                            ("stages", index, "event_types"),
                            f"{event_type!r} is in stages {owner[event_type]!r} and "
                            f"{stage.name!r}; an unordered funnel's steps have no order to tell "
                            "which of two look-alike steps an event does",
                        ))  # fmt: skip
                    owner.setdefault(event_type, stage.name)
        if self.reentry == "latest" and self.order != "ordered":
            problems.append(_problem(
                ("reentry",),
                "reentry: latest is for ordered funnels (a strict funnel restarts on a repeated "
                "first step already; an unordered attempt starts at any step)",
            ))  # fmt: skip
        return problems

    def _hold_and_attribution_fit(self) -> list[InitErrorDetails]:
        """Hold and breakdown attribution (spec: "Holding a property constant", "Breakdown
        attribution")."""
        problems: list[InitErrorDetails] = []
        if self.hold and self.order == "unordered":
            problems.append(_problem(
                ("hold",), "an unordered funnel has no first step to fix a held value at"
            ))  # fmt: skip
        if len(set(self.hold)) != len(self.hold):
            problems.append(_problem(("hold",), f"names a field twice: {list(self.hold)}"))
        for index, segment in enumerate(self.segments):
            step = segment.attribution
            if isinstance(step, StepAttribution) and step.step > len(self.stages):
                problems.append(_problem(
                    ("segments", index, "attribution", "step"),
                    f"step {step.step}: the funnel has {len(self.stages)} stages (1 to "
                    f"{len(self.stages)})",
                ))  # fmt: skip
            elif isinstance(step, StepAttribution) and self.order == "unordered":
                problems.append(_problem(
                    ("segments", index, "attribution"),
                    "an unordered funnel's positions are not stages: no step attribution",
                ))  # fmt: skip
        return problems

    @model_validator(mode="after")
    def _names_exist(self) -> FunnelDefinition:
        stages = {stage.name for stage in self.stages}
        unknown = [name for name in self.abandonment if name not in stages]
        if unknown:
            raise ValueError(f"abandonment names unknown stages {unknown}")
        if self.abandonment and self.stages[-1].name in self.abandonment:
            raise ValueError("the last stage cannot be abandoned (nothing comes after it)")
        steps = set(self.step_names)
        unknown = [name for name in self.alerting.steps if name not in steps]
        if unknown:
            raise ValueError(
                f"alerting.steps names unknown steps {unknown}; steps are {sorted(steps)}"
            )
        return self

    @model_validator(mode="after")
    def _lifecycle_follows_users(self) -> FunnelDefinition:
        if self.lifecycle is not None and self.follows != "user":
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    _problem(
                        ("lifecycle",), "a lifecycle counts users: the funnel needs follows: user"
                    )
                ],
            )
        return self

    @model_validator(mode="after")
    def _surveys_fit(self) -> FunnelDefinition:
        problems: list[InitErrorDetails] = []
        stage_types = {t for stage in self.stages for t in stage.event_types}
        seen: set[str] = set()
        for index, survey in enumerate(self.surveys):
            if survey.name in seen:
                problems.append(
                    _problem(("surveys", index, "name"), "a second survey of that name")
                )
            seen.add(survey.name)
            if survey.event_type in stage_types:
                problems.append(_problem(
                    ("surveys", index, "event_type"),
                    "an answer is no step: its event cannot be a stage's",
                ))  # fmt: skip
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    @model_validator(mode="after")
    def _experiments_fit(self) -> FunnelDefinition:
        problems: list[InitErrorDetails] = []
        stages = [stage.name for stage in self.stages]
        steps = self.step_names
        names = [e.name for e in self.experiments]
        for index, experiment in enumerate(self.experiments):
            at = ("experiments", index)
            if experiment.exposure not in stages[:-1]:
                problems.append(_problem(
                    (*at, "exposure"),
                    f"{experiment.exposure!r} is not a stage with a step after it; stages are "
                    f"{stages[:-1]}",
                ))  # fmt: skip
                continue
            if names.count(experiment.name) > 1:
                problems.append(_problem((*at, "name"), "two experiments have this name"))
            if sum(1 for s in self.segments if s.name == experiment.name) > 1:
                problems.append(_problem(
                    (*at, "name"),
                    f"a segment is named {experiment.name!r} too: the experiment's variants "
                    "are a breakdown of that name",
                ))  # fmt: skip
            if experiment.control not in experiment.variants:
                problems.append(_problem(
                    (*at, "control"),
                    f"{experiment.control!r} is not a variant: {list(experiment.variants)}",
                ))  # fmt: skip
            shares = list(experiment.variants.values())
            if any(share <= 0 for share in shares) or abs(sum(shares) - 1.0) > 1e-6:
                problems.append(_problem(
                    (*at, "variants"), f"shares must be positive and sum to 1, got {shares}"
                ))  # fmt: skip
            guarded = steps[stages.index(experiment.exposure) :]
            for step_index, step in enumerate(experiment.steps):
                if step not in guarded:
                    problems.append(_problem(
                        (*at, "steps", step_index),
                        f"{step!r} is not a step from the exposure stage on; those are {guarded}",
                    ))  # fmt: skip
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def guarded_steps(self, experiment: Experiment) -> list[int]:
        """The indexes of the steps ``experiment`` guards (its ``steps``, or every step from
        its exposure stage on)."""
        first = [stage.name for stage in self.stages].index(experiment.exposure)
        names = self.step_names
        return [
            k
            for k in range(first, len(names))
            if not experiment.steps or names[k] in experiment.steps
        ]

    @property
    def abandonment_stage_indexes(self) -> frozenset[int]:
        return frozenset(i for i, s in enumerate(self.stages) if s.name in self.abandonment)

    @model_validator(mode="after")
    def _windows_fit(self) -> FunnelDefinition:
        if self.window_ms > 86_400_000:
            raise ValueError("window must be at most 1d")
        if 86_400_000 % self.window_ms:
            raise ValueError("window must divide a day evenly (e.g. 10s, 1m, 5m, 15m, 1h)")
        return self

    def step_timeout_ms(self, index: int) -> int:
        """``Tk``: how long after reaching stage ``index`` the next one may come (inclusive),
        the stage's own timeout or the funnel's ``step_timeout``, capped by the window. An
        optional stage's is the required stage's before it (counted from that one's entry)."""
        while self.stages[index].optional:
            index -= 1
        timeout = self.stages[index].timeout_ms or self.default_step_timeout_ms
        return min(timeout, self.conversion_window_ms)

    @property
    def finality_lag_ms(self) -> int:
        """How long after a window's end all its cohorts are decided (before lateness)."""
        return max(self.step_timeout_ms(k) for k in range(len(self.stages) - 1))

    @property
    def judged_final_lag_ms(self) -> int:
        """How long after a window's end its holder (the merger, a replay) keeps it: the
        finality lag rounded up to whole windows. The detector and the experiment guard judge
        on window boundaries, so the first judgement that sees every cohort of the window
        decided is at that boundary; a window let go at its finality between two boundaries
        would never be read final (its baselines and arms would miss it)."""
        size = self.window_ms
        return -(-self.finality_lag_ms // size) * size

    @property
    def step_names(self) -> list[str]:
        return [f"{a.name}->{b.name}" for a, b in zip(self.stages, self.stages[1:], strict=False)]

    def describe(self) -> str:
        """What the funnel counts, in the words of the spec: one line per rule it uses."""
        lines = [
            f"funnel {self.name} ({self.follows}, {self.order}): conversion window "
            f"{_fmt(self.conversion_window_ms)}, windows of {_fmt(self.window_ms)}"
        ]
        for index, stage in enumerate(self.stages):
            where = " and ".join(f"{c.property} {c.op} {c.value!r}" for c in stage.where)
            timeout = (
                f", next stage within {_fmt(self.step_timeout_ms(index))} or dropped"
                if index < len(self.stages) - 1
                else ""
            )
            lines.append(
                f"  {index + 1}. {stage.name}{_stage_marks(stage)}: "
                f"{' | '.join(stage.event_types)}{' where ' + where if where else ''}{timeout}"
            )
        lines.extend(f"  {rule}" for rule in self._rules())
        if self.segments:
            lines.append("  segments: " + ", ".join(_segment_text(s) for s in self.segments))
        return "\n".join(lines)

    def _rules(self) -> list[str]:
        rules = []
        if self.strict_ignore:
            rules.append(f"strict mode ignores: {', '.join(self.strict_ignore)}")
        for exclusion in self.exclusions:
            where = " and ".join(f"{c.property} {c.op} {c.value!r}" for c in exclusion.where)
            span = (
                f"between {exclusion.between[0]} and {exclusion.between[1]}"
                if exclusion.between
                else "anywhere"
            )
            rules.append(
                f"excluded by {' | '.join(exclusion.event_types)}"
                f"{' where ' + where if where else ''} {span}"
            )
        if self.reentry == "latest":
            rules.append("re-entry: latest (a first-stage event restarts the attempt)")
        if self.hold:
            rules.append(f"holds constant: {', '.join(self.hold)} (fixed at the first stage)")
        if self.uniques:
            rules.append(
                f"counts {self.follows}s too: each {self.follows} once per window and stage it "
                "entered (units), beside the attempts"
            )
        first_time = [stage.name for stage in self.stages if stage.first_time]
        if first_time:
            rules.append(
                f"first time only: {', '.join(first_time)} (the unit's first matching event "
                "since its state was last forgotten)"
            )
        return rules


def _stage_marks(stage: Stage) -> str:
    marks = [
        word for word, on in (("optional", stage.optional), ("first time", stage.first_time)) if on
    ]
    return f" ({', '.join(marks)})" if marks else ""


def _segment_text(segment: Segment) -> str:
    attribution = segment.attribution
    how = ""  # first touch, the default, goes without saying
    if isinstance(attribution, StepAttribution):
        how = f", at step {attribution.step}"
    elif attribution == "last_touch":
        how = ", last_touch"
    return f"{segment.name} ({segment.source}, top {segment.cap}{how})"


def _problem(loc: tuple[str | int, ...], message: str) -> InitErrorDetails:
    return {"type": PydanticCustomError("funnel", message), "loc": loc, "input": None}


def _fmt(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _scalar(text: str) -> Any:
    """A ``--set`` value as YAML reads it (numbers, durations as strings, lists), except that
    words YAML 1.1 turns into booleans (off, no, yes) stay words."""
    value = yaml.safe_load(text)
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text
    return value


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, str]) -> dict[str, Any]:
    """``{"alerting.min_increase": "0.05"}`` applied to a funnel file's mapping (a copy)."""
    data = copy.deepcopy(data)
    for dotted, text in overrides.items():
        target = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = target.get(part)
            if child is None:
                child = target[part] = {}
            if not isinstance(child, dict):
                raise FunnelDefinitionError(f"--set {dotted}: {part} is not a mapping")
            target = child
        target[leaf] = _scalar(text)
    return data


def _segment_lines(node: yaml.Node, data: Mapping[str, Any]) -> dict[tuple[Any, ...], int]:
    """``segments`` written as a mapping ({plan: {cap: 5}}): index -> its key's line."""
    lines: dict[tuple[Any, ...], int] = {}
    if isinstance(data.get("segments"), Mapping) and isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == "segments" and isinstance(value_node, yaml.MappingNode):
                for index, (name_node, _) in enumerate(value_node.value):
                    lines[("segments", index)] = name_node.start_mark.line + 1
    return lines


def load_funnel(
    path: Path | str,
    overrides: Mapping[str, str] | None = None,
    known_events: EventCatalogue | Mapping[str, frozenset[str]] | None = None,
) -> FunnelDefinition:
    """A funnel file, validated; ``overrides`` (``--set`` keys as dotted paths of the file's
    own names) are applied first; with ``known_events`` (event type -> its properties) what
    could never match is refused too (:func:`check_known_events`). Errors name the file, the
    line and the field."""
    path = Path(path)
    try:
        data, node = read_yaml(path)
    except YamlSourceError as exc:
        raise FunnelDefinitionError(str(exc)) from None
    if not isinstance(data, dict) or node is None:
        raise FunnelDefinitionError(f"{path}:1: a funnel file must be a mapping")
    if overrides:
        data = apply_overrides(data, overrides)
    lines = {**line_index(node), **_segment_lines(node, data)}
    try:
        definition = FunnelDefinition.model_validate(data)
    except ValidationError as exc:
        problems = [
            (tuple(error["loc"]), problem_message(error)) for error in exc.errors(include_url=False)
        ]
        raise FunnelDefinitionError(_located(path, lines, problems)) from None
    except ValueError as exc:  # raised by a before-validator outside pydantic's wrapping
        raise FunnelDefinitionError(f"{path}:1: {exc}") from None
    if known_events is not None:
        problems = check_known_events(definition, known_events)
        if problems:
            raise FunnelDefinitionError(_located(path, lines, problems))
    return definition


def _located(
    path: Path, lines: Mapping[tuple[Any, ...], int], problems: list[tuple[tuple[Any, ...], str]]
) -> str:
    """``file:line: field: message`` for each problem, the line of the nearest enclosing node."""
    return "; ".join(
        f"{path}:{line_of(lines, loc)}: {'.'.join(str(p) for p in loc) or '<funnel>'}: {message}"
        for loc, message in problems
    )


def load_funnels(
    paths: Sequence[Path | str],
    overrides: Mapping[str, str] | None = None,
    known_events: EventCatalogue | Mapping[str, frozenset[str]] | None = None,
) -> tuple[FunnelDefinition, ...]:
    """Load several funnel files (a folder means every *.yaml and *.yml directly in it);
    names must be unique. ``overrides`` and ``known_events`` apply to every one of them."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted({f for pattern in FUNNEL_FILE_PATTERNS for f in path.glob(pattern)})
            if not found:
                raise FunnelDefinitionError(f"no funnel files (*.yaml, *.yml) in {path}")
            files.extend(found)
        elif not path.exists():
            raise FunnelDefinitionError(f"{path}: no such funnel file or folder")
        else:
            files.append(path)
    funnels = tuple(load_funnel(file, overrides, known_events) for file in files)
    names = [funnel.name for funnel in funnels]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FunnelDefinitionError(f"funnel names must be unique across files: {duplicates}")
    return funnels
