from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from streamer.funnel.definition import load_funnel
from streamer.settings import Settings
from tests.compare import assert_same
from tests.core_run import run_core
from tests.integration.pipeline_run import first_event_after, preload, wait_published, worker
from tests.traffic import generate

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"


@pytest.mark.parametrize("mode", ["chaos", "rebalance", "broker"])
async def test_tmp(settings: Settings, tmp_path: Path, mode: str, local_broker) -> None:
    data = generate(seed=20261124, minutes=30, sessions_per_second=2.5)
    expected = run_core(
        [load_funnel(CHECKOUT)], data.oracle_events(), data.final_watermark_ms, lateness_ms=120_000
    )
    config = settings.model_copy(update={"topic_partitions": 4})
    await preload(config, data)
    p = worker(config, tmp_path, "w0")
    p.start()
    t = time.monotonic()
    try:
        if mode == "chaos":
            rng = random.Random(7)
            for _ in range(3):
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                p.kill()
                k = time.monotonic()
                p.start()
                print("restart", await first_event_after(p, k))
        elif mode == "rebalance":
            q = worker(config, tmp_path, "w1")
            await asyncio.sleep(2)
            q.start()
            await asyncio.sleep(8)
            q.stop()
        else:
            await asyncio.sleep(2)
            local_broker.down()
            await asyncio.sleep(3)
            local_broker.up()
        pub = await wait_published(config, expected, [p], timeout=180)
    finally:
        p.stop()
    print(mode, "run", time.monotonic() - t)
    assert_same("windows", expected.windows, pub.windows)
    assert_same("segments", expected.segments, pub.segments)
    assert_same("abandonments", expected.abandonments, pub.abandonments)
