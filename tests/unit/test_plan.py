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


# --- presets ---------------------------------------------------------------------------------
PLAN_EXAMPLES = Path(__file__).parent / "plan_examples"
SHOP_FLOW = {  # product viewed, added to cart, checkout started, order completed
    "streamer": ["product_view", "add_to_cart", "checkout_started", "order_placed"],
    "segment": ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"],
    "posthog": ["Product Viewed", "Product Added", "Checkout Started", "Order Completed"],
    "snowplow": ["product_view", "add_to_cart", "checkout_step", "transaction"],
}


@pytest.mark.parametrize("preset", sorted(SHOP_FLOW))
def test_preset_example_file_validates_through_the_compiled_preset(preset: str) -> None:
    compiled = compile_plan(load_plan(f"preset:{preset}"))
    lines = (PLAN_EXAMPLES / f"{preset}.jsonl").read_text().splitlines()
    events = [compiled.validate(json.loads(line)) for line in lines]
    assert all(isinstance(e, PlannedEvent) for e in events), events
    planned = [e for e in events if isinstance(e, PlannedEvent)]
    names = [e.name for e in planned]
    assert [n for n in names if n in SHOP_FLOW[preset]] == SHOP_FLOW[preset]
    assert all(e.stage is not None and e.session_key for e in planned)
    assert len({e.event_id for e in planned}) == len(planned)


@pytest.mark.parametrize("preset", ["segment", "posthog", "snowplow"])
def test_vendor_preset_cites_its_documentation(preset: str) -> None:
    text = (ROOT / f"streamer/plan/presets/{preset}.yaml").read_text()
    host = {"segment": "twilio.com/docs/segment", "posthog": "posthog.com/docs",
            "snowplow": "docs.snowplow.io"}[preset]  # fmt: skip
    assert f"https://www.{host}" in text or f"https://{host}" in text


def _segment() -> dict[str, Any]:
    line = (PLAN_EXAMPLES / "segment.jsonl").read_text().splitlines()[3]
    document: dict[str, Any] = json.loads(line)
    return document


def test_segment_identities_and_sessions_rule() -> None:
    compiled = compile_plan(load_plan("preset:segment"))
    event = compiled.validate(_segment())
    assert isinstance(event, PlannedEvent)
    assert event.session_id is None
    assert event.session_key == "anonymous_id:507f191e810c19729de860ea"
    assert event.context["utm_campaign"] == "winter_sale"
    assert event.properties["size"] == "42"  # unplanned property: kept (the default)
    server_side = _segment() | {"userId": "u-1"}
    del server_side["anonymousId"]
    event = compiled.validate(server_side)
    assert isinstance(event, PlannedEvent)
    assert event.session_key == "user_id:u-1"
    del server_side["userId"]
    rejected = compiled.validate(server_side)
    assert isinstance(rejected, Rejection)
    assert "sessions rule" in rejected.message


def test_posthog_session_falls_back_to_the_distinct_id() -> None:
    compiled = compile_plan(load_plan("preset:posthog"))
    lines = (PLAN_EXAMPLES / "posthog.jsonl").read_text().splitlines()
    with_session = compiled.validate(json.loads(lines[0]))
    without = compiled.validate(json.loads(lines[-1]))
    assert isinstance(with_session, PlannedEvent)
    assert isinstance(without, PlannedEvent)
    assert with_session.session_key == "0193a1b2-5e55-7000-8000-000000000001"
    assert without.session_key == "user_id:0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
    # context fields read inside `properties` are not counted again as properties
    assert "$current_url" not in with_session.properties
    assert with_session.context["current_url"].startswith("https://")


# --- unplanned policies ------------------------------------------------------------------
def _plan_file(tmp_path: Path, body: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


_SMALL = """\
version: 3
envelope:
  event_name: event
  event_id: id
  event_time: {path: ts, format: epoch_ms}
  session_id: sid
events:
  signup:
    stage: awareness
    topics: [web]
    properties:
      plan: {type: enum, values: [free, pro]}
      seats: {type: integer, min: 1, required: true}
"""


def _doc(**extra: Any) -> dict[str, Any]:
    properties = {"seats": 2, **extra}
    return {"event": "signup", "id": "e-1", "ts": 1795342500120, "sid": "s-1",
            "properties": properties}  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("", "kept"), ("unplanned: {properties: keep}", "kept"),
     ("unplanned: {properties: drop}", "dropped"),
     ("unplanned: {properties: dead_letter}", "rejected")],
)  # fmt: skip
def test_unplanned_property_policies(tmp_path: Path, policy: str, expected: str) -> None:
    compiled = compile_plan(load_plan(_plan_file(tmp_path, _SMALL + policy + "\n")))
    result = compiled.validate(_doc(coupon="X1"))
    if expected == "rejected":
        assert isinstance(result, Rejection)
        assert result.field == "properties.coupon"
        assert result.reason == ReasonCode.SCHEMA_VIOLATION
        assert "plan.yaml:" in result.message
    else:
        assert isinstance(result, PlannedEvent)
        assert ("coupon" in result.properties) == (expected == "kept")


@pytest.mark.parametrize("policy", ["", "unplanned: {events: ignore}"])
def test_unplanned_events_are_ignored_by_default(tmp_path: Path, policy: str) -> None:
    compiled = compile_plan(load_plan(_plan_file(tmp_path, _SMALL + policy + "\n")))
    result = compiled.validate(_doc() | {"event": "add_to_wishlist"}, topic="web")
    assert result == Ignored("add_to_wishlist", "web", "unplanned event 'add_to_wishlist'")


def test_unplanned_events_dead_lettered_on_demand(tmp_path: Path) -> None:
    body = _SMALL + "unplanned: {events: dead_letter}\n"
    compiled = compile_plan(load_plan(_plan_file(tmp_path, body)))
    result = compiled.validate(_doc() | {"event": "add_to_wishlist"})
    assert isinstance(result, Rejection)
    assert result.reason == ReasonCode.UNKNOWN_EVENT_TYPE
    assert result.message.endswith("plan.yaml:14: events dead_letter)")


def test_topics_and_time_unit_and_enum(tmp_path: Path) -> None:
    compiled = compile_plan(load_plan(_plan_file(tmp_path, _SMALL)))
    assert isinstance(compiled.validate(_doc(), topic="web"), PlannedEvent)
    wrong_topic = compiled.validate(_doc(), topic="checkout")
    assert isinstance(wrong_topic, Rejection)
    assert "plan.yaml:10" in wrong_topic.message
    as_text = compiled.validate(_doc() | {"ts": "2026-11-22T09:15:00Z"})
    assert isinstance(as_text, Rejection)
    assert as_text.field == "ts"
    assert "declares epoch_ms" in as_text.message
    micros = compiled.validate(_doc() | {"ts": 1795342500120000})
    assert isinstance(micros, Rejection)
    assert "wrong unit" in micros.message
    enum = compiled.validate(_doc(plan="enterprise"))
    assert isinstance(enum, Rejection)
    assert enum.message.startswith("properties.plan: is 'enterprise', expected one of free, pro")
    assert enum.message.endswith("(plan " + str(tmp_path / "plan.yaml") + ":12)")
    missing = compiled.validate(_doc() | {"properties": {}})
    assert isinstance(missing, Rejection)
    assert missing.message.startswith("properties.seats: is required")


def test_epoch_seconds_declared(tmp_path: Path) -> None:
    body = _SMALL.replace("format: epoch_ms", "format: epoch_s")
    compiled = compile_plan(load_plan(_plan_file(tmp_path, body)))
    event = compiled.validate(_doc() | {"ts": 1795342500.12})
    assert isinstance(event, PlannedEvent)
    assert event.event_time_ms == 1795342500120
    in_ms = compiled.validate(_doc() | {"ts": 1795342500120})
    assert isinstance(in_ms, Rejection)
    assert "wrong unit" in in_ms.message


# --- loading: errors as one line naming file:line and the field ----------------------------
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("seats: {type: integer", "seats: {type: int"), r"plan.yaml:13: events.signup."
         r"properties.seats.type: Input should be 'string', 'integer'"),
        (("min: 1, required", "pattern: x, required"), r"plan.yaml:13: events.signup."
         r"properties.seats: pattern applies to strings, not to integer"),
        (("format: epoch_ms", "format: [epoch_ms, epoch_s]"),
         r"plan.yaml:5: envelope.event_time.format: iso8601 and at most one"),
        (("values: [free, pro]", "values: []"),
         r"plan.yaml:12: events.signup.properties.plan: an enum needs values"),
        (("  session_id: sid\n", ""),
         r"plan.yaml:1: <plan>: envelope.session_id is not declared"),
        (("stage: awareness", "stage: loyalty"),
         r"plan.yaml:9: events.signup.stage: Input should be 'awareness'"),
        (("event_name: event", "event_name: a.b.c.d.e.f.g.h.i"),
         r"plan.yaml:3: envelope.event_name.0: a path has at most 8 segments"),
    ],
)  # fmt: skip
def test_plan_errors_name_file_line_and_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in _SMALL
    path = _plan_file(tmp_path, _SMALL.replace(*change))
    with pytest.raises(PlanError, match=expected) as caught:
        load_plan(path)
    assert "\n" not in str(caught.value)


def test_plan_folder_merges_events_and_reports_duplicates(tmp_path: Path) -> None:
    folder = tmp_path / "plan"
    folder.mkdir()
    _plan_file(folder, _SMALL, "a.yaml")
    extra = "events:\n  login:\n    properties:\n      method: string\n"
    _plan_file(folder, extra, "b.yaml")
    loaded = load_plan(folder)
    assert sorted(loaded.plan.events) == ["login", "signup"]
    assert loaded.where("events", "login", "properties", "method") == f"{folder / 'b.yaml'}:4"
    assert loaded.where("events", "signup") == f"{folder / 'a.yaml'}:8"
    _plan_file(folder, "events:\n  signup: {}\n", "c.yaml")
    with pytest.raises(PlanError, match=r"c.yaml:2: events.signup: already declared in .*a.yaml"):
        load_plan(folder)


def test_plan_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"plan.yaml:4: not valid YAML"):
        load_plan(_plan_file(tmp_path, "version: 1\nenvelope:\n  - [\n"))
    with pytest.raises(PlanError, match=r"nope.yaml: no such file"):
        load_plan(tmp_path / "nope.yaml")
    with pytest.raises(PlanError, match=r"no preset 'amplitude'"):
        load_plan("preset:amplitude")
