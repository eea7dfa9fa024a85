"""The tracking plan (streamer.plan): the default preset is today's twelve types exactly, the
loader reports errors as file:line, the compiled validator applies the unplanned policies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

import orjson
import pytest

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.errors import PlanError
from streamer.events import EVENT_MODELS, ReasonCode
from streamer.plan.compile import CompiledPlan, Ignored, PlannedEvent, compile_plan
from streamer.plan.load import load_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "schemas" / "examples"
ENVELOPE_FIELDS = {"schema_version", "event_id", "event_type", "session_id", "user_id",
                   "occurred_at", "sent_at", "context"}  # fmt: skip


@pytest.fixture(scope="module")
def default() -> CompiledPlan:
    return compile_plan(load_plan("preset:streamer"))


def _example(event_type: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES / f"{event_type}.json").read_text())
    return document


def _plan_type(annotation: Any) -> tuple[str, bool]:
    """(plan type, nullable) of a model field's annotation."""
    args = get_args(annotation)
    nullable = False
    if get_origin(annotation) in (Union, UnionType):
        nullable = NoneType in args
        (annotation,) = [a for a in args if a is not NoneType]
    while get_origin(annotation) is not None and get_origin(annotation) is not Literal:
        annotation = get_args(annotation)[0]  # Annotated[float, ...] -> float
    if get_origin(annotation) is Literal:
        return "enum", nullable
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[annotation], nullable


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_default_plan_declares_every_model_property_alike(
    default: CompiledPlan, event_type: str
) -> None:
    spec = default.plan.events[event_type]
    model = EVENT_MODELS[event_type]
    fields = {n: f for n, f in model.model_fields.items() if n not in ENVELOPE_FIELDS}
    assert set(spec.properties) == set(fields)
    for name, field in fields.items():
        declared = spec.properties[name]
        kind, nullable = _plan_type(field.annotation)
        assert declared.type == kind, name
        assert declared.required == field.is_required(), name
        if not declared.required:
            assert declared.nullable == nullable, name
            assert declared.default == field.default, name


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_examples_validate_through_the_default_plan(default: CompiledPlan, event_type: str) -> None:
    document = _example(event_type)
    event = default.validate(document)
    assert isinstance(event, PlannedEvent), event
    model = EVENT_MODELS[event_type].model_validate(document)
    assert event.name == event_type
    assert event.event_id == model.event_id
    assert event.session_id == model.session_id
    assert event.user_id == model.user_id
    assert event.event_time_ms == round(model.occurred_at.timestamp() * 1000)
    assert event.stage is not None
    dumped = model.model_dump(exclude=ENVELOPE_FIELDS, exclude_none=True)
    assert event.properties == dumped


_PROBES: list[Any] = [None, "", " x ", "EUR", " EUR ", "de", -1, 0, 1, 1.5, 6, "5", "5.5", True,
                      False, 10**10, 1e300, [], {}, "x" * 3000, "true"]  # fmt: skip


def _accepted_by_models(document: dict[str, Any]) -> bool:
    received = datetime(2026, 11, 22, 9, 15, 5, tzinfo=UTC)
    # time bounds and clock-skew correction stay with decode_event: out of the comparison
    limits = DecodeLimits(
        max_age=timedelta(days=365 * 100),
        max_future_skew=timedelta(days=365 * 100),
        skew_correction_threshold=timedelta.max,
    )
    result = decode_event(orjson.dumps(document), received_at=received, limits=limits)
    return not isinstance(result, Rejection)


@pytest.mark.parametrize("event_type", sorted(EVENT_MODELS))
def test_default_plan_accepts_and_rejects_what_the_models_do(
    default: CompiledPlan, event_type: str
) -> None:
    """Every property of every type, set to each probe value or removed: the plan and
    decode_event agree on accept/reject (differences would change a deployment)."""
    base = _example(event_type)
    names = [n for n in EVENT_MODELS[event_type].model_fields if n != "event_type"]
    names += [f"context.{n}" for n in base["context"]]
    disagreements = []
    for name in names:
        for probe in [*_PROBES, "<removed>"]:
            document = json.loads(json.dumps(base))
            holder, key = document, name
            if name.startswith("context."):
                holder, key = document["context"], name.removeprefix("context.")
            if probe == "<removed>":
                holder.pop(key, None)
            else:
                holder[key] = probe
            expected = _accepted_by_models(document)
            got = isinstance(default.validate(document), PlannedEvent)
            if expected != got:
                disagreements.append(f"{name}={probe!r}: models {expected}, plan {got}")
    assert disagreements == [], "\n".join(disagreements)


def test_unplanned_event_and_property_in_the_default_plan(default: CompiledPlan) -> None:
    document = _example("order_placed")
    document["event_type"] = "add_to_wishlist"
    rejected = default.validate(document)
    assert isinstance(rejected, Rejection)
    assert rejected.reason == ReasonCode.UNKNOWN_EVENT_TYPE
    assert "presets/streamer.yaml:" in rejected.message
    document = _example("order_placed") | {"plan": "pro"}
    rejected = default.validate(document)
    assert isinstance(rejected, Rejection)
    assert rejected.field == "plan"
    assert rejected.reason == ReasonCode.SCHEMA_VIOLATION


def test_rejection_names_the_field_and_the_plan_line(default: CompiledPlan) -> None:
    document = _example("order_placed") | {"value": -3}
    rejected = default.validate(document)
    assert isinstance(rejected, Rejection)
    assert rejected.field == "value"
    line = default.loaded.where("events", "order_placed", "properties", "value")
    assert rejected.message == f"value: is -3, expected 0 .. 1000000000 (plan {line})"
    text = (ROOT / "streamer/plan/presets/streamer.yaml").read_text().splitlines()
    assert text[int(line.rsplit(":", 1)[1]) - 1].strip().startswith("value:")
