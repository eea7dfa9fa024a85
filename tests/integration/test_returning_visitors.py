"""Sessions by inactivity on the real broker, default settings and the Segment preset
(``preset:segment``: sessions by anonymous id, a new one after 30 minutes without an event):
visitors come back 25 to 35 minutes of event time after their first visit, so some visits are
one session and others two. The worker is SIGKILLed once after it stored every first visit (its
identities restored mid-way from its checkpoint) and once at a random moment in the returning
visits. The final windows, segments and abandonments (their session ids ``anonymous_id:<id>``
and ``anonymous_id:<id>#2``) equal the SQL oracle's, which cuts sessions with its own SQL
(tests/oracle/inactivity.py) from the same documents.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streamer.app import topic_plan
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan
from streamer.plan.load import preset_path
from streamer.settings import Settings
from streamer.testing import produce
from tests.oracle import compute
from tests.oracle.plan_events import plan_rows
from tests.support.compare import assert_same
from tests.support.kafka_waits import wait_processed
from tests.support.pipeline_run import (
    first_event_after,
    send_to_partitions,
    unread_input,
    wait_published,
    worker,
)
from tests.support.shapes import ShapedTraffic
from tests.support.traffic import Dataset, at_ms, generate

pytestmark = pytest.mark.integration

# Product Viewed's step times out after 45 minutes, longer than the 30-minute gap: a product
# viewed on the first visit and added to the cart on a return after more than 30 minutes is a
# drop (another session), where following the visitor without cutting would convert it.
FUNNEL = """
name: returning
conversion_window: 2h
window: 1m
stages:
  - {name: product, event_types: [Product Viewed], timeout: 45m}
  - {name: cart, event_types: [Product Added], where: {price: {gt: 0}}}
  - {name: checkout, event_types: [Checkout Started], timeout: 15m}
  - {name: payment, event_types: [Payment Info Entered], timeout: 10m}
  - {name: order, event_types: [Order Completed], where: {total: {gt: 0}}}
segments:
  device: {source: context.device_type, cap: 6}
  payment_method: {source: property.payment_method, cap: 8}
abandonment: [product, cart, checkout, payment]
"""
RETURN_AFTER = timedelta(minutes=33)


def returning_visitors() -> tuple[Dataset, int]:
    """Two rounds of generated visits, the second 33 minutes after the first and made by the
    first round's visitors (the same anonymous id, so the same message key and partition):
    the dataset, and how many of its messages are the first round's."""
    start = datetime.now(UTC) - timedelta(hours=6)
    first = generate(seed=2028, minutes=8, sessions_per_second=1.5, start=start)
    later = generate(seed=2029, minutes=8, sessions_per_second=1.5, start=start + RETURN_AFTER)
    visitors = list(dict.fromkeys(e["session_id"] for e in first.arrivals))
    returning = list(dict.fromkeys(e["session_id"] for e in later.arrivals))
    visitor_of = dict(zip(returning, visitors, strict=False))
    back = [
        e | {"session_id": visitor_of.get(e["session_id"], e["session_id"])} for e in later.arrivals
    ]
    assert {e["event_id"] for e in first.arrivals}.isdisjoint(e["event_id"] for e in back)
    # Every return comes after the first round's last event: nothing of it is late.
    assert max(at_ms(e) for e in first.arrivals) < min(at_ms(e) for e in back) - 120_000
    dataset = Dataset(first.arrivals + back, later.closing_ms, first.sessions + later.sessions)
    return dataset, len(first.arrivals)


async def test_returning_visitors_are_cut_into_sessions_as_the_oracle_cuts_them(
    settings: Settings, tmp_path: Path
) -> None:
    dataset, first_round = returning_visitors()
    traffic = ShapedTraffic("segment", dataset, preset_path("segment"))
    funnel_file = tmp_path / "returning.yaml"
    funnel_file.write_text(FUNNEL)
    config = settings.model_copy(
        update={"tracking_plan": "preset:segment", "funnels": (funnel_file,)}
    )
    funnel = load_funnel(funnel_file)
    rows = plan_rows(traffic.plan_dir, traffic.documents())
    expected = compute([funnel], rows, dataset.final_watermark_ms)
    sessions = {a["session_id"] for a in expected.abandonments.values()}
    assert any(s.endswith("#2") for s in sessions)
    assert any("#" not in s for s in sessions)
    # The cut changes the numbers: the visitor followed whole would convert some returns.
    uncut = compute(
        [funnel],
        [r | {"session_id": r["session_id"].split("#")[0]} for r in rows],
        dataset.final_watermark_ms,
    )
    assert uncut.windows != expected.windows
    assert len(expected.windows) > 20
    await ensure_topic_plan(config, topic_plan(config))
    messages = traffic.messages(config)
    rng = random.Random(28)
    process = worker(config, tmp_path, "w1")
    try:
        process.start()
        # Every first visit applied and stored, then SIGKILL: identities restored mid-way.
        await produce(config, messages[:first_round])
        wait_processed(process, config, first_round)
        process.kill()
        await produce(config, messages[first_round:])
        await send_to_partitions(config, traffic.closing(config))
        process.start()
        await asyncio.sleep(rng.uniform(1.0, 3.0))
        process.kill()  # somewhere in the returning visits
        killed_at = time.monotonic()
        unread = await unread_input(config)
        process.start()
        await first_event_after(process, killed_at, unread)
        published = await wait_published(config, expected, [process])
    finally:
        process.stop()
    assert all(published.final.values())
    assert_same("windows", expected.windows, published.windows)
    assert_same("segments", expected.segments, published.segments)
    assert_same("abandonments", expected.abandonments, published.abandonments)
