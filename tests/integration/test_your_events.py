"""A shop's own events on the real broker, default settings: Segment calls and PostHog captures
with the shop's own event names and properties, through a worker given a tracking plan (the
vendor's preset copied beside a file of the shop's events). The final windows, segments and
abandonments equal the SQL oracle's, which reads the same documents by the same plan with its
own reader (tests/oracle/plan_events.py). Unplanned events are counted, never dead-lettered;
broken messages of each shape are dead-lettered with their reason and field.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.app import topic_plan
from streamer.dlq import parse_dead_letters
from streamer.events import ReasonCode
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.settings import Settings
from streamer.testing import metric, produce, scrape_metrics
from tests.oracle import compute
from tests.oracle.plan_events import plan_rows
from tests.support.compare import assert_same
from tests.support.pipeline_run import send_to_partitions, wait_published, worker
from tests.support.shapes import shaped
from tests.support.traffic import generate

pytestmark = pytest.mark.integration

# One funnel per shape, on the vendor's names, the shop's own event (Shipping Chosen) and
# properties (shipping_method, an enum of the shop's file; the vendor's price and total).
FUNNELS = {
    "segment": """
name: shop_checkout
conversion_window: 2h
window: 1m
stages:
  - {name: product, event_types: [Product Viewed]}
  - {name: cart, event_types: [Product Added], where: {price: {gt: 0}}, timeout: 30m}
  - {name: checkout, event_types: [Checkout Started], timeout: 15m}
  - name: shipping
    event_types: [Shipping Chosen]
    where: {shipping_method: {in: [standard, express]}}
    timeout: 10m
  - {name: payment, event_types: [Payment Info Entered], timeout: 10m}
  - {name: order, event_types: [Order Completed], where: {total: {gt: 0}}}
segments:
  device: {source: context.device_type, cap: 6}
  medium: {source: context.utm_medium, cap: 8}
  payment_method: {source: property.payment_method, cap: 8}
abandonment: [cart, checkout, payment]
""",
    "posthog": """
name: shop_checkout
conversion_window: 2h
window: 1m
stages:
  - {name: product, event_types: [Product Viewed]}
  - {name: cart, event_types: [Product Added], timeout: 30m}
  - {name: checkout, event_types: [Checkout Started], timeout: 15m}
  - {name: shipping, event_types: [Shipping Chosen], timeout: 10m}
  - {name: order, event_types: [Order Completed], where: {total: {gt: 0}}}
segments:
  device: {source: context.device_type, cap: 6}
  source: {source: context.utm_source, cap: 8}
abandonment: [cart, checkout]
""",
}


def hostile(shape: str, valid: dict[str, Any]) -> list[tuple[bytes, ReasonCode, str | None]]:
    """Broken messages of ``shape`` made from one valid document: (bytes, the reason, the
    field the dead letter must name)."""
    name = "event"
    time_field = "timestamp"
    props = valid["properties"]
    return [
        (orjson.dumps(valid)[:40], ReasonCode.NOT_JSON, None),
        (b'{"event": "\xff\xfe"}', ReasonCode.NOT_UTF8, None),
        (b"[1, 2, 3]", ReasonCode.NOT_AN_OBJECT, None),
        (orjson.dumps(valid | {"timestamp": 1_796_615_767}), ReasonCode.SCHEMA_VIOLATION,
         time_field),
        (orjson.dumps(valid | {"timestamp": "2026-12-07T03:56:06"}), ReasonCode.SCHEMA_VIOLATION,
         time_field),
        (orjson.dumps(valid | {"properties": [props]}), ReasonCode.SCHEMA_VIOLATION,
         "properties"),
        (orjson.dumps(valid | {"properties": props | {"price": "12.00"}}),
         ReasonCode.SCHEMA_VIOLATION, "properties.price"),
        (orjson.dumps(valid | {"properties": props | {"blob": "x" * 70_000}}),
         ReasonCode.TOO_LARGE, None),
        # no event name at all (a Segment call without `event` falls back to its `type`)
        (orjson.dumps({k: v for k, v in valid.items() if k not in (name, "type")}),
         ReasonCode.SCHEMA_VIOLATION, name),
    ]  # fmt: skip


@pytest.mark.parametrize("shape", ["segment", "posthog"])
async def test_a_shops_own_events_give_the_oracles_numbers(
    shape: str, settings: Settings, tmp_path: Path
) -> None:
    data = generate(seed=20261207, minutes=10, sessions_per_second=2.0)
    traffic = shaped(shape, data, tmp_path / "plan")
    funnel_file = tmp_path / "shop_checkout.yaml"
    funnel_file.write_text(FUNNELS[shape])
    config = settings.model_copy(
        update={"tracking_plan": str(traffic.plan_dir), "funnels": (funnel_file,)}
    )
    documents = traffic.documents()
    expected = compute(
        [load_funnel(funnel_file)], plan_rows(traffic.plan_dir, documents), data.final_watermark_ms
    )
    assert len(expected.windows) > 20
    assert expected.abandonments
    await ensure_topic_plan(config, topic_plan(config))
    product_view = next(d for d in documents if b'"Product Viewed"' in d)
    broken = hostile(shape, orjson.loads(product_view))
    await produce(config, [(config.clickstream_topic, b"hostile", raw) for raw, _, _ in broken])
    await produce(config, traffic.messages(config))
    await send_to_partitions(config, traffic.closing(config))
    process = worker(config, tmp_path, "w1")
    process.start()
    try:
        published = await wait_published(config, expected, [process])
        values = scrape_metrics(process.metrics_url)
    finally:
        process.stop()
    assert all(published.final.values())
    assert_same("windows", expected.windows, published.windows)
    assert_same("segments", expected.segments, published.segments)
    assert_same("abandonments", expected.abandonments, published.abandonments)
    # Every broken message is dead-lettered with its reason and field, nothing else is.
    letters, unreadable = parse_dead_letters(await read_topic(config, config.dlq_topic))
    assert unreadable == 0
    assert sorted((letter.reason, letter.field) for letter in letters) == sorted(
        (reason, field) for _, reason, field in broken
    )
    assert sorted(base64.b64decode(letter.payload_base64) for letter in letters) == sorted(
        raw for raw, _, _ in broken
    )
    # Unplanned events are counted by name, never dead-lettered nor in state.
    unplanned = len(documents) - len(plan_rows(traffic.plan_dir, documents))
    counted = sum(
        metric(values, "streamer_unplanned_events_total", topic=topic, event="Product Reviewed")
        for topic in (config.clickstream_topic, config.checkout_topic)
    )
    assert counted == unplanned
    if shape == "posthog":
        assert unplanned > 0  # its preset declares no review event
