"""A hostile mix of each preset's own shape through the worker's decoder
(``streamer.decoders.PlanDecoder``, the default limits): every message decodes or is a
Rejection whose reason names the field and, where the plan is at stake, the plan's file:line;
nothing raises; each message takes bounded time.

(``test_plan_hostile.py`` mutates the same examples at random through ``CompiledPlan`` and
refuses hostile plans; this file goes through the decoder the worker runs, with the event-time
bounds against the broker time, field by field.)"""

from __future__ import annotations

import copy
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.decode import DecodeLimits, Rejection
from streamer.decoders import DecodedEvent, PlanDecoder
from streamer.events import ReasonCode
from streamer.plan.compile import Ignored, compile_plan
from streamer.plan.load import load_plan
from streamer.plan.model import split_path

PRESETS = ["streamer", "segment", "posthog", "snowplow"]
PLAN_EXAMPLES = Path(__file__).parent / "plan_examples"
RECEIVED = datetime(2026, 11, 22, 9, 16, tzinfo=UTC)  # the examples' minute, as a broker
WRONG_TYPES: list[Any] = [123, -1.5, True, [], {}, {"a": [1, {"b": None}]}, "", "x" * 1000]
# What one message may cost at most on a loaded, shared machine (a few µs typically).
BOUND_SECONDS = 0.25


@dataclass(frozen=True)
class Hostile:
    label: str
    raw: bytes
    field: str | None = None  # the field a rejection must name
    # A wrong sent_at is taken as the device clock's error and corrects the event time (as
    # the contract does), so the time bound refusing the result names the event time.
    or_field: str | None = None
    must_reject: bool = True  # never decoded


def _put(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``document`` with ``value`` at the dotted ``path`` (list indexes included)."""
    out = copy.deepcopy(document)
    holder: Any = out
    parts = split_path(path)
    for part in parts[:-1]:
        holder = holder[int(part)] if isinstance(holder, list) else holder.setdefault(part, {})
    if isinstance(holder, list):
        holder[int(parts[-1])] = value
    else:
        holder[parts[-1]] = value
    return out


def hostile_mix(preset: str) -> list[Hostile]:
    plan = compile_plan(load_plan(f"preset:{preset}")).plan
    env = plan.envelope
    examples = [json.loads(line) for line in (PLAN_EXAMPLES / f"{preset}.jsonl").open()]
    base = examples[1]
    mix: list[Hostile] = []
    # Wrong types in every envelope field: the required ones are refused naming the field,
    # the optional ones decode or are refused naming it.
    required = {env.event_id[0], env.event_time.path[0]}
    if len(env.event_name) == 1:
        required.add(env.event_name[0])
    fields = [env.event_name[0], env.event_id[0], env.event_time.path[0]]
    fields += [paths[0] for paths in (env.session_id, env.user_id, env.anonymous_id) if paths]
    fields += [env.sent_at.path[0]] if env.sent_at else []
    fields += [spec.path for spec in env.context.values()]
    sent_at = env.sent_at.path[0] if env.sent_at else None
    for path in fields:
        for value in WRONG_TYPES:
            mix.append(
                Hostile(
                    f"{path}={value!r:.20}",
                    orjson.dumps(_put(base, path, value)),
                    path,
                    env.event_time.path[0] if path == sent_at else None,
                    must_reject=path in required,
                )
            )
    # Wrong time units: epoch seconds, ms, µs, ns where the plan declares another.
    at_ms = 1795338900120  # 2026-11-22T09:15:00.120Z
    time_path = env.event_time.path[0]
    for value in (at_ms // 1000, at_ms, at_ms * 1000, at_ms * 1_000_000, str(at_ms)):
        declared_ms = "epoch_ms" in env.event_time.format and value == at_ms
        mix.append(
            Hostile(
                f"{time_path}={value!r}",
                orjson.dumps(_put(base, time_path, value)),
                time_path,
                must_reject=not declared_ms,
            )
        )
    raw = orjson.dumps(base)
    # Truncated JSON, cut anywhere.
    for cut in range(1, len(raw), max(1, len(raw) // 12)):
        mix.append(Hostile(f"cut at {cut}", raw[:cut]))
    # Invalid UTF-8 inside a value, and alone.
    event_id = orjson.dumps(base[env.event_id[0]])
    assert event_id in raw
    mix.append(Hostile("invalid UTF-8 in the event id", raw.replace(event_id, b'"\xff\xfe\xc3("')))
    mix.append(Hostile("invalid UTF-8 bytes", b"\xff\xfe\xfd"))
    # Huge properties: over the message limit, and a huge value inside it.
    props = env.properties
    many = {f"k{i}": "v" * 100 for i in range(2000)}
    mix.append(Hostile("2,000 properties", orjson.dumps(_put(base, props or "k", many))))
    big = _put(base, f"{props}.big" if props else "big", "x" * 60_000)
    mix.append(Hostile("a 60,000-character value", orjson.dumps(big), must_reject=False))
    # Deep nesting: within the JSON parser's limit (decodes or is refused), and beyond it.
    for depth, reject in ((500, False), (5000, True)):
        deep = orjson.dumps(_put(base, f"{props}.deep" if props else "deep", "x"))
        deep = deep.replace(b'"x"', b"[" * depth + b"1" + b"]" * depth, 1)
        mix.append(Hostile(f"{depth} levels of nesting", deep, must_reject=reject))
    nested = orjson.dumps(_put(base, env.event_id[0], "x")).replace(b'"x"', b"[" * 800 + b"]" * 800)
    mix.append(Hostile("800 levels in the event id", nested, env.event_id[0]))
    return mix


@pytest.mark.parametrize("preset", PRESETS)
def test_a_hostile_mix_decodes_or_is_refused_naming_the_field(preset: str) -> None:
    loaded = load_plan(f"preset:{preset}")
    decoder = PlanDecoder(compile_plan(loaded), DecodeLimits(), frozenset({"price", "big"}))
    plan_file = re.compile(rf"\(plan presets/{preset}\.yaml:\d+[):]")
    outcomes: dict[str, int] = {}
    slowest = 0.0
    for hostile in hostile_mix(preset):
        began = time.process_time()
        result = decoder.decode(hostile.raw, topic="clickstream", received_at=RECEIVED)
        slowest = max(slowest, time.process_time() - began)
        assert isinstance(result, DecodedEvent | Rejection | Ignored), hostile.label
        kind = type(result).__name__
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if hostile.must_reject:  # refused; or, a wrong event name, an unplanned event
            assert not isinstance(result, DecodedEvent), f"{hostile.label}: {result}"
        if not isinstance(result, Rejection):
            continue
        assert result.reason in ReasonCode, hostile.label
        assert result.message, hostile.label
        if hostile.field is not None:
            named = {hostile.field, hostile.or_field} - {None}
            assert result.field in named, f"{hostile.label}: {result}"
            if result.reason != ReasonCode.UNKNOWN_EVENT_TYPE:  # that one quotes the name
                assert result.field in result.message, hostile.label
        if result.reason in (ReasonCode.SCHEMA_VIOLATION, ReasonCode.UNKNOWN_EVENT_TYPE):
            assert plan_file.search(result.message), f"{hostile.label}: {result.message}"
    assert slowest < BOUND_SECONDS, f"{preset}: one message took {slowest:.3f} s"
    assert outcomes["Rejection"] >= 60  # the mix is mostly refused, and some decodes
    assert outcomes.get("DecodedEvent", 0) >= 1


@pytest.mark.parametrize("preset", PRESETS)
def test_plan_violations_name_the_line_of_the_field(preset: str) -> None:
    """The time and identity fields' rejections name the plan line that declares them."""
    loaded = load_plan(f"preset:{preset}")
    decoder = PlanDecoder(compile_plan(loaded), DecodeLimits(), frozenset())
    env = loaded.plan.envelope
    base = json.loads((PLAN_EXAMPLES / f"{preset}.jsonl").read_text().splitlines()[1])
    cases = [("event_time", env.event_time.path[0])]
    cases += [(name, paths[0]) for name, paths in (("user_id", env.user_id),) if paths]
    for part, path in cases:
        raw = orjson.dumps(_put(base, path, {"not": "an id"}))
        result = decoder.decode(raw, topic="clickstream", received_at=RECEIVED)
        assert isinstance(result, Rejection)
        assert f"(plan {loaded.where('envelope', part)})" in result.message


def test_epoch_seconds_where_milliseconds_are_declared_are_refused_naming_the_unit() -> None:
    """The default plan reads a number as epoch milliseconds: seconds land in January 1970,
    and the worker's age bound refuses them saying so."""
    decoder = PlanDecoder(compile_plan(load_plan("preset:streamer")), DecodeLimits(), frozenset())
    base = json.loads((PLAN_EXAMPLES / "streamer.jsonl").read_text().splitlines()[1])
    base.pop("sent_at", None)
    raw = orjson.dumps({**base, "occurred_at": 1795338900})
    result = decoder.decode(raw, topic="clickstream", received_at=RECEIVED)
    assert isinstance(result, Rejection)
    assert result.field == "occurred_at"
    assert "seconds" in result.message
