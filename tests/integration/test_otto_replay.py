"""The real OTTO sample (tests/data/otto-sample, CC-BY 4.0: see its README), replayed through
Kafka in its own event time with the default lateness, gives the SQL oracle's numbers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streamer.app import topic_plan
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan
from streamer.loaders import otto_events, replay_events
from streamer.settings import Settings
from tests.oracle import compute
from tests.support.compare import assert_same
from tests.support.datasets import otto_sample
from tests.support.pipeline_run import send_closing, wait_published, worker
from tests.support.traffic import oracle_event

ROOT = Path(__file__).resolve().parents[2]
OTTO_FUNNEL = ROOT / "deploy/funnels/replay/otto.yaml"
DAY_MS = 86_400_000


@pytest.mark.parametrize("partitions", [1, 4])
async def test_otto_sample_gives_the_oracles_numbers(
    settings: Settings, tmp_path: Path, partitions: int
) -> None:
    events = sorted(otto_events(otto_sample()), key=lambda e: e["occurred_at"])
    assert len(events) == 862  # the file's README: 800 clicks, 52 carts, 10 orders
    assert Counter(e["event_type"] for e in events) == {
        "product_view": 800,
        "add_to_cart": 52,
        "order_placed": 10,
    }
    config = settings.model_copy(
        update={
            "funnels": (OTTO_FUNNEL,),
            "topic_partitions": partitions,
            # History from 2022: the contract's age horizon is about live producers.
            "max_event_age_seconds": 20 * 365 * 86_400.0,
        }
    )
    # Closing events 31 days after the last one, on every partition: the watermark passes
    # every window end plus the 30-day step timeout, so every window is final.
    closing_ms = max(int(e["occurred_at"]) for e in events) + 31 * DAY_MS
    await ensure_topic_plan(config, topic_plan(config))
    await replay_events(config, events)
    await send_closing(config, closing_ms)
    expected = compute(
        [load_funnel(OTTO_FUNNEL)], [oracle_event(e) for e in events], closing_ms - 120_000
    )
    process = worker(config, tmp_path, "otto")
    with process:
        published = await wait_published(config, expected, [process])
    assert_same("windows", expected.windows, published.windows)
    assert_same("abandonments", expected.abandonments, published.abandonments)
    entered = Counter()
    for (_, _, stage), numbers in published.windows.items():
        entered[stage] += numbers["entered"]
    assert entered["product_view"] >= 20
    assert entered["order"] >= 1
