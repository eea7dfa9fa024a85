"""The funnel on a real broker, checked against the independent batch oracle.

One generated dataset (thousands of sessions, several segments, shuffled arrival within the
allowed lateness, and late events beyond it) goes through 1 partition and 1 worker, and
through 4 partitions and 2 workers; both must publish exactly the oracle's window stats.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.dlq import parse_dead_letters
from streamer.events import WindowStats
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.replay import replay_events, send_ticks
from streamer.settings import Settings
from streamer.simulate import TrafficModel
from streamer.testing import WorkerProcess, free_port, metric, scrape_metrics
from tests import oracle
from tests.integration.conftest import processed

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"
LATENESS_S = 1800  # the whole dataset spans less than this: only the planted late events are late


def dataset(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(on-time events in a shuffled arrival order, late events to send after them)."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(hours=1)
    sessions = list(
        TrafficModel().sessions(seed=seed, count=2000, start=start, sessions_per_second=5)
    )
    on_time = [event for session in sessions for event in session]
    rng.shuffle(on_time)
    late = []
    for session in rng.sample([s for s in sessions if len(s) >= 3], 25):
        first = datetime.fromisoformat(session[0]["occurred_at"].replace("Z", "+00:00"))
        late.append(
            {
                **session[1],
                "event_id": session[1]["event_id"] + "-late",
                "occurred_at": (first - timedelta(minutes=45)).isoformat(),
            }
        )
    return on_time, late


def expected(on_time: list[dict[str, Any]]) -> tuple[oracle.Counts, oracle.Segments]:
    sessions: dict[str, list[dict[str, Any]]] = {}
    for event in on_time:
        at = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
        sessions.setdefault(event["session_id"], []).append(
            {**event, "t": round(at.timestamp() * 1000)}
        )
    return oracle.compute(oracle.load(CHECKOUT), sessions)


def wait(predicate: Any, workers: list[WorkerProcess], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            worker.assert_running()
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n---\n".join(w.log_tail(40) for w in workers)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def total(workers: list[WorkerProcess], name: str, **labels: str) -> float:
    return sum(metric(scrape_metrics(w.metrics_url), name, **labels) for w in workers)


@pytest.mark.parametrize(("partitions", "worker_count"), [(1, 1), (4, 2)])
async def test_windows_equal_the_oracle(
    settings: Settings, tmp_path: Path, partitions: int, worker_count: int
) -> None:
    from streamer.app import topic_plan

    on_time, late = dataset(seed=42)
    counts, segments = expected(on_time)
    config = settings.model_copy(
        update={
            "topic_partitions": partitions,
            "funnels": (CHECKOUT,),
            "tick_interval_seconds": 0,
            "allowed_lateness_seconds": LATENESS_S,
            "store": "memory",
        }
    )
    await ensure_topic_plan(config, topic_plan(config))
    workers = [
        WorkerProcess(
            config.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / f"w{i}"}),
            tmp_path / f"worker{i}.log",
        )
        for i in range(worker_count)
    ]
    try:
        for worker in workers:
            worker.start()
        wait(
            lambda: (
                [
                    metric(
                        scrape_metrics(w.metrics_url),
                        "streamer_assigned_partitions",
                        topic=config.events_topic,
                    )
                    for w in workers
                ].count(0)
                == 0
                and total(workers, "streamer_assigned_partitions", topic=config.events_topic)
                == partitions
            ),
            workers,
            60,
            "every worker to own partitions",
        )

        await replay_events(config, on_time)
        await replay_events(config, late)
        sent = len(on_time) + len(late)
        wait(
            lambda: sum(processed(scrape_metrics(w.metrics_url), config) for w in workers) >= sent,
            workers,
            120,
            "ingest to process everything",
        )
        # Every normalized event must be in funnel.events before the closing tick follows it.
        deadline = time.monotonic() + 60
        while (
            len(await read_topic(config, config.events_topic)) < sent
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(0.5)
        newest = max(
            datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")) for e in on_time
        )
        await send_ticks(config, round((newest + timedelta(days=1)).timestamp() * 1000))

        expected_windows = {start for start, rows in counts.items() if any(any(r) for r in rows)}
        published: dict[int, WindowStats] = {}

        async def collect() -> bool:
            for _, value in await read_topic(config, config.windows_topic):
                stats = WindowStats.model_validate_json(value or b"")
                assert stats.window_id not in {s.window_id for s in published.values()} or (
                    published[round(stats.window_start.timestamp() * 1000)] == stats
                )
                published[round(stats.window_start.timestamp() * 1000)] = stats
            return set(published) >= expected_windows

        deadline = time.monotonic() + 120
        while not await collect():
            assert time.monotonic() < deadline, (
                f"{len(published)} of {len(expected_windows)} windows published\n"
                + "\n---\n".join(w.log_tail(30) for w in workers)
            )
            await asyncio.sleep(1)
        await asyncio.sleep(2)  # nothing more may come
        raw_windows = await read_topic(config, config.windows_topic)
        assert len(raw_windows) == len(expected_windows), "a window was published twice"

        assert set(published) == expected_windows
        for start in sorted(expected_windows):
            stats = published[start]
            assert stats.partitions == partitions
            got = [[s.entered, s.converted, s.dropped] for s in stats.stages]
            assert got == counts[start], f"window {stats.window_id}"
            got_segments = {
                (s.dimension, s.value): [[x.entered, x.converted, x.dropped] for x in s.stages]
                for s in stats.segments
            }
            assert got_segments == segments.get(start, {}), f"segments of {stats.window_id}"

        letters, _ = parse_dead_letters(await read_topic(config, config.dlq_topic))
        assert sorted(letter.reason.value for letter in letters) == ["late"] * len(late)
        assert {
            orjson.loads(base64.b64decode(letter.payload_base64))["event_id"] for letter in letters
        } == {e["event_id"] for e in late}

        # /metrics agrees with the windows topic (summed over the workers).
        funnel_total = [sum(counts[s][k][0] for s in counts) for k in range(6)]
        for index, stage in enumerate(
            ["landing", "product_view", "cart", "checkout", "payment", "order"]
        ):
            assert (
                total(
                    workers,
                    "streamer_funnel_sessions_entered_total",
                    funnel="checkout",
                    stage=stage,
                )
                == funnel_total[index]
            )
        dropped_cart = sum(counts[s][2][2] for s in counts)
        assert (
            total(
                workers,
                "streamer_funnel_sessions_dropped_total",
                funnel="checkout",
                step="cart->checkout",
            )
            == dropped_cart
        )
        assert total(workers, "streamer_funnel_sessions_open", funnel="checkout", stage="cart") == 0
    finally:
        for worker in workers:
            worker.stop()
