"""The real OTTO sample (../shared/datasets/otto-sample), replayed through Kafka in its own
event time, gives the same stage counts as a plain batch count over the file."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamer.events import WindowStats
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.replay import otto_events, replay_events, send_ticks
from streamer.settings import Settings
from streamer.testing import WorkerProcess, scrape_metrics
from tests.integration.conftest import processed

ROOT = Path(__file__).resolve().parents[2]
OTTO_FUNNEL = ROOT / "deploy/funnels/replay/otto.yaml"
MONTH_MS = 30 * 86_400_000


def otto_file() -> Path:
    shared = Path(os.environ.get("STREAMER_SHARED_DIR", ROOT.parent / "shared"))
    path = shared / "datasets/otto-sample/sessions.jsonl"
    if not path.is_file():
        pytest.fail(
            f"the OTTO sample is missing: expected {path} (the shared/ folder beside the "
            "checkout, or STREAMER_SHARED_DIR). This test needs the real data and does not skip."
        )
    return path


def batch_stage_counts(path: Path) -> Counter[str]:
    """Written from the README's rules, straight over the file: per session, attempts start at
    a click; a cart after it, then an order after that cart, each within 30 days of the
    attempt's start (no stage timeouts in this funnel); after an order the next click starts
    a new attempt."""
    reached: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        session = orjson.loads(line)
        events = sorted(enumerate(session["events"]), key=lambda item: (item[1]["ts"], item[0]))
        want, start = "clicks", None
        for _, event in events:
            if start is not None and event["ts"] > start + MONTH_MS:
                break  # the attempt ran out of time (the data spans less than a month)
            if event["type"] != want:
                continue
            if want == "clicks":
                start, want = event["ts"], "carts"
                reached["product_view"] += 1
            elif want == "carts":
                want = "orders"
                reached["cart"] += 1
            else:
                reached["order"] += 1
                want, start = "clicks", None
    return reached


async def test_otto_sample_stage_counts_match_a_batch_count(
    settings: Settings, tmp_path: Path
) -> None:
    from streamer.app import topic_plan

    path = otto_file()
    events = sorted(otto_events(path), key=lambda e: (e["occurred_at"], e["event_id"]))
    assert len(events) == 862  # the file's README: 800 clicks, 52 carts, 10 orders
    assert Counter(e["event_type"] for e in events) == {
        "product_view": 800,
        "add_to_cart": 52,
        "order_placed": 10,
    }
    config = settings.model_copy(
        update={
            "funnels": (OTTO_FUNNEL,),
            "tick_interval_seconds": 0,
            "store": "memory",
            # History from 2022: nothing is late within the replay, nothing too old for ingest.
            "allowed_lateness_seconds": 40 * 86_400.0,
            "max_event_age_seconds": 20 * 365 * 86_400.0,
        }
    )
    await ensure_topic_plan(config, topic_plan(config))
    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        await replay_events(config, events)
        deadline = time.monotonic() + 90
        while processed(scrape_metrics(worker.metrics_url), config) < len(events):
            worker.assert_running()
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.3)
        while len(await read_topic(config, config.events_topic)) < len(events):
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.3)
        newest = max(e["occurred_at"] for e in events)
        await send_ticks(config, newest + 2 * MONTH_MS)
        streamed: Counter[str] = Counter()
        expected = batch_stage_counts(path)
        while True:
            streamed.clear()
            for _, value in await read_topic(config, config.windows_topic):
                for stage in WindowStats.model_validate_json(value or b"").stages:
                    streamed[stage.stage] += stage.entered
            if streamed == expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert expected["product_view"] >= 20
    assert expected["order"] >= 1
    assert streamed == expected
