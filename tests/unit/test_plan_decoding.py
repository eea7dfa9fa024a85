"""The worker's plan decoder against the oracle's own reading of the plan, and the built-in
contract against ``preset:streamer``.

``streamer.decoders.PlanDecoder`` (the compiled plan, as the worker runs it) and
``tests.oracle.plan_events`` (PyYAML and DuckDB's JSON paths, written from the docs) read the
same documents: every event must get the same name, id, time, session and fields, and the
same events must be left out as unplanned.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.decode import DecodeLimits
from streamer.decoders import ContractDecoder, DecodedEvent, Ignored, PlanDecoder, needed_fields
from streamer.funnel.definition import load_funnel
from streamer.plan.compile import compile_plan
from streamer.plan.load import load_plan
from streamer.simulate import write_export
from tests.oracle.plan_events import plan_rows
from tests.support.shapes import shaped
from tests.support.traffic import generate

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"
LIMITS = DecodeLimits(max_age=timedelta(days=3650))
NOW = datetime.now(UTC)
KEEP = frozenset(
    {"price", "payment_method", "shipping_method", "total", "cart_value", "landing"}
    | {"context.device_type", "context.utm_source", "context.utm_medium"}
)


@pytest.mark.parametrize("shape", ["segment", "posthog"])
def test_the_plan_decoder_reads_what_the_oracle_reads(shape: str, tmp_path: Path) -> None:
    traffic = shaped(shape, generate(seed=7, minutes=3, sessions_per_second=1.5), tmp_path)
    documents = traffic.documents()
    decoder = PlanDecoder(compile_plan(load_plan(traffic.plan_dir)), LIMITS, KEEP)
    decoded = [decoder.decode(doc, topic="clickstream", received_at=NOW) for doc in documents]
    kept = [d for d in decoded if isinstance(d, DecodedEvent)]
    ignored = [d for d in decoded if isinstance(d, Ignored)]
    assert len(kept) + len(ignored) == len(documents), [
        d for d in decoded if not isinstance(d, DecodedEvent | Ignored)
    ][:3]
    rows = plan_rows(traffic.plan_dir, documents)
    assert len(rows) == len(kept) > 500
    for event, row in zip(kept, rows, strict=True):
        assert (event.session_id, event.event.event_id, event.event_type, event.event.at_ms) == (
            row["session_id"], row["event_id"], row["event_type"], row["at_ms"],
        )  # fmt: skip
        expected: dict[str, Any] = {
            name: row["properties"][name]
            for name in KEEP
            if row["properties"].get(name) is not None
        }
        expected |= {
            f"context.{name}": value
            for name, value in row["context"].items()
            if f"context.{name}" in KEEP
        }
        assert dict(event.event.fields) == expected
    if shape == "posthog":  # its preset declares no review event: ignored, never in state
        assert {i.name for i in ignored} == {"Product Reviewed"}


def test_the_built_in_contract_decodes_as_preset_streamer() -> None:
    """The default (no plan) and ``preset:streamer`` agree on every generated event, and
    both refuse the same broken ones."""
    keep = needed_fields((load_funnel(CHECKOUT),))
    contract = ContractDecoder(LIMITS, keep)
    preset = PlanDecoder(compile_plan(load_plan("preset:streamer")), LIMITS, keep)
    events = generate(seed=11, minutes=3, sessions_per_second=1.5).arrivals
    broken = [
        {**events[0], "occurred_at": "yesterday"},
        {**events[1], "event_type": "page_veiw"},
        {k: v for k, v in events[2].items() if k != "session_id"},
        {**events[3], "context": {"device": "smart_fridge"}},
    ]
    for event in events:
        raw = orjson.dumps(event)
        topic = "checkout" if event["event_type"] in ("order_placed",) else "clickstream"
        assert contract.decode(raw, topic=topic, received_at=NOW) == preset.decode(
            raw, topic=topic, received_at=NOW
        ), event
    for event in broken:
        raw = orjson.dumps(event)
        assert not isinstance(
            contract.decode(raw, topic="clickstream", received_at=NOW), DecodedEvent
        )
        assert not isinstance(
            preset.decode(raw, topic="clickstream", received_at=NOW), DecodedEvent
        )


@pytest.mark.parametrize("shape", ["segment", "posthog"])
def test_a_simulated_export_is_read_by_its_preset(shape: str, tmp_path: Path) -> None:
    """`streamer simulate --shape S --export F` writes what `preset:S` decodes (the shop's own
    events beside the preset's are ignored, never refused), the same file for the same seed."""
    end = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    report = write_export(first, rate=20, duration=600, seed=3, shape=shape, end=end)
    write_export(second, rate=20, duration=600, seed=3, shape=shape, end=end)
    assert first.read_bytes() == second.read_bytes()
    decoder = PlanDecoder(compile_plan(load_plan(f"preset:{shape}")), LIMITS, KEEP)
    lines = first.read_bytes().splitlines()
    assert len(lines) == report.events > 1000
    decoded = [decoder.decode(line, topic="t", received_at=end) for line in lines]
    assert [d for d in decoded if not isinstance(d, DecodedEvent | Ignored)] == []
    kept = [d for d in decoded if isinstance(d, DecodedEvent)]
    assert len(kept) > 0.9 * len(lines)
    assert all(d.event.at_ms < end.timestamp() * 1000 for d in kept)
