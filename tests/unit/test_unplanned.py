"""The unplanned policies of a tracking plan, through the sessions stage: each default and
each option. An unplanned event is ignored (counted by topic and name, never in state) or
dead-lettered; an unplanned property is kept (a funnel's segment can read it), dropped, or
dead-letters its event. The reasons name the field and the plan's line."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from streamer.decode import DecodeLimits
from streamer.decoders import PlanDecoder, needed_fields
from streamer.events import ReasonCode
from streamer.funnel.definition import load_funnel
from streamer.funnel.task import Offer
from streamer.metrics import UNPLANNED_NAMES_CAP, UNPLANNED_OTHER
from streamer.plan.compile import compile_plan
from streamer.plan.load import load_plan
from tests.support.stage_harness import NOW, Harness, make_harness

PLAN = """\
version: 1
envelope:
  event_name: event
  event_id: id
  event_time: {{path: ts, format: epoch_ms}}
  session_id: sid
  properties: props
{unplanned}
events:
  Viewed:
    properties:
      sku: {{type: string}}
  Bought:
    properties:
      total: {{type: number, min: 0}}
"""

FUNNEL = """\
name: shop
conversion_window: 1h
stages:
  - {name: viewed, event_types: [Viewed]}
  - {name: bought, event_types: [Bought]}
segments:
  sku: {source: property.sku}
"""


def harness(tmp_path: Path, unplanned: str = "") -> Harness:
    (tmp_path / "plan.yaml").write_text(PLAN.format(unplanned=unplanned))
    (tmp_path / "shop.yaml").write_text(FUNNEL)
    funnels = (load_funnel(tmp_path / "shop.yaml"),)
    decoder = PlanDecoder(
        compile_plan(load_plan(tmp_path / "plan.yaml")), DecodeLimits(), needed_fields(funnels)
    )
    return make_harness(funnels=funnels, decoder=decoder)


def event(name: str, event_id: str, **props: object) -> bytes:
    at = round(NOW.timestamp() * 1000) - 60_000
    return orjson.dumps({"event": name, "id": event_id, "ts": at, "sid": "s-1", "props": props})


def counted(h: Harness, name: str, topic: str = "clickstream") -> float:
    h.stage.flush_metrics()
    ignored = h.metrics.events.labels(topic=topic, outcome="ignored")._value.get()
    by_name = h.metrics.unplanned_events.labels(topic=topic, event=name)._value.get()
    assert ignored >= by_name
    return float(by_name)


async def test_unplanned_events_are_ignored_and_counted_by_default(tmp_path: Path) -> None:
    h = harness(tmp_path)
    outcome, letter = await h.process(h.message(event("Wishlisted", "e-1", sku="a")))
    assert (outcome, letter) == ("ignored", None)
    assert counted(h, "Wishlisted") == 1
    assert h.stage.runtimes[0].task.sessions == {}  # never in state
    assert (await h.process(h.message(event("Viewed", "e-2", sku="a"))))[0] is Offer.ACCEPTED


async def test_unplanned_events_can_be_dead_lettered(tmp_path: Path) -> None:
    h = harness(tmp_path, "unplanned: {events: dead_letter}")
    outcome, letter = await h.process(h.message(event("Wishlisted", "e-1")))
    assert outcome == "dead_lettered"
    assert letter is not None
    assert letter.reason is ReasonCode.UNKNOWN_EVENT_TYPE
    assert letter.field == "event"
    assert "plan.yaml:8" in letter.message  # the unplanned line
    assert orjson.loads(base64.b64decode(letter.payload_base64))["event"] == "Wishlisted"


async def test_unplanned_names_beyond_the_cap_count_as_other(tmp_path: Path) -> None:
    h = harness(tmp_path)
    for n in range(UNPLANNED_NAMES_CAP + 5):
        await h.process(h.message(event(f"Custom {n}", f"e-{n}")))
    assert counted(h, "Custom 0") == 1
    assert counted(h, f"Custom {UNPLANNED_NAMES_CAP - 1}") == 1
    assert counted(h, UNPLANNED_OTHER) == 5


@pytest.mark.parametrize(
    ("policy", "kept"), [("", True), ("unplanned: {properties: keep}", True),
                         ("unplanned: {properties: drop}", False)],
)  # fmt: skip
async def test_unplanned_properties_are_kept_by_default_or_dropped(
    tmp_path: Path, policy: str, kept: bool
) -> None:
    """A kept unplanned property reaches the core like a declared one; a dropped one not."""
    h = harness(tmp_path, policy)
    raw = orjson.loads(event("Bought", "e-1", total=10, sku="kept-sku"))
    outcome, _ = await h.process(h.message(orjson.dumps(raw)))
    assert outcome is Offer.ACCEPTED
    [state] = h.stage.runtimes[0].task.sessions.values()
    [(_, _, stored)] = state.pending or []
    assert ("sku" in stored.fields) is kept


async def test_unplanned_properties_can_dead_letter_their_event(tmp_path: Path) -> None:
    h = harness(tmp_path, "unplanned: {properties: dead_letter}")
    outcome, letter = await h.process(h.message(event("Bought", "e-1", total=10, coupon="X")))
    assert outcome == "dead_lettered"
    assert letter is not None
    assert letter.reason is ReasonCode.SCHEMA_VIOLATION
    assert letter.field == "props.coupon"
    assert "plan.yaml:8" in letter.message  # the unplanned line


async def test_a_malformed_planned_event_names_the_field_and_the_plan_line(tmp_path: Path) -> None:
    h = harness(tmp_path)
    outcome, letter = await h.process(h.message(event("Bought", "e-1", total="ten")))
    assert outcome == "dead_lettered"
    assert letter is not None
    assert letter.reason is ReasonCode.SCHEMA_VIOLATION
    assert letter.field == "props.total"
    assert "plan.yaml:15" in letter.message  # total's declaration
