"""User funnels (``follows: user``) end to end on the real broker, default settings: users on
two devices whose sessions land on different partitions, the worker killed with SIGKILL three
times and a second worker joining and leaving while input flows; the final windows (per stage
and per segment) and abandonments equal the SQL oracle's, nothing dead-lettered.

The path (docs/decisions/0008-user-funnels-pipeline.md): session tasks release each event in
event-time order, give it its unit by the identity rules and forward it to ``funnel.units``
keyed by unit; unit tasks count the user funnels.
"""

from __future__ import annotations

import asyncio
import random
from functools import cache
from pathlib import Path

import pytest

from streamer.app import topic_plan
from streamer.dlq import parse_dead_letters
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.settings import Settings
from streamer.testing import produce
from tests.oracle import OracleResult, compute
from tests.support.compare import assert_same
from tests.support.pipeline_run import (
    send_closing,
    wait_assigned,
    wait_published,
    wait_reading,
    worker,
)
from tests.support.traffic import (
    Dataset,
    generate_users,
    product_cart_order_yaml,
    users_across_partitions,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4
# Product to cart to order over hours: a user browses on one device and buys on the other.
USER_FUNNEL = product_cart_order_yaml("users", by_user=True)


@cache
def dataset() -> Dataset:
    return generate_users(
        seed=20261207, users=900, minutes=30, later_hours=(0.5, 3.0), closing_after_hours=5
    )


def funnel(tmp_path: Path) -> FunnelDefinition:
    path = tmp_path / "users.yaml"
    path.write_text(USER_FUNNEL)
    return load_funnel(path)


def oracle(definition: FunnelDefinition, settings: Settings) -> OracleResult:
    # The unit tasks' fronts are the session tasks' watermarks, themselves the allowed
    # lateness behind the closing events: every window is long decided by then.
    lateness_ms = round(settings.allowed_lateness_seconds * 1000)
    watermark_ms = dataset().closing_ms - 2 * lateness_ms
    return compute([definition], dataset().oracle_events(), watermark_ms)


@pytest.mark.parametrize(
    "unit_cache",
    [
        None,  # the default: every open unit fits in memory
        # About the setting: 20 units in memory per unit task, far fewer than the open ones
        # (900 users): the others are read back from disk, through the same SIGKILLs.
        20,
    ],
    ids=["default", "units-on-disk"],
)
async def test_a_user_funnel_through_sigkills_and_a_worker_joining_and_leaving(
    settings: Settings, tmp_path: Path, unit_cache: int | None
) -> None:
    definition = funnel(tmp_path)
    config = settings.model_copy(
        update={"topic_partitions": PARTITIONS, "funnels": (tmp_path / "users.yaml",)}
    )
    if unit_cache is not None:
        config = config.model_copy(update={"unit_cache": unit_cache})
    data = dataset()
    across = users_across_partitions(data, PARTITIONS)
    assert across >= 400, f"only {across} users have sessions on two partitions"
    expected = oracle(definition, config)
    assert sum(1 for key in expected.abandonments if "/anon:" not in key) > 20
    await ensure_topic_plan(config, topic_plan(config, (definition,)))
    messages = data.messages(config)
    third = len(messages) // 3
    await produce(config, messages[:third])
    first = worker(config, tmp_path, "first")
    second = worker(config, tmp_path, "second")
    rng = random.Random(29)
    try:
        first.start()
        await wait_reading(first, config)
        # Three SIGKILLs at random moments while input flows: before and around the first
        # checkpoints (5 s), the second third produced after the first restart.
        for kill in range(3):
            await asyncio.sleep(rng.uniform(1.0, 6.0))
            first.kill()
            first.start()
            if kill == 0:
                await produce(config, messages[third : 2 * third])
        await wait_reading(first, config)
        second.start()
        owned = await wait_assigned(second, config)
        await produce(config, messages[2 * third :])
        read_by_second = await wait_reading(second, config)
        second.stop()
        await send_closing(config, data.closing_ms)
        published = await wait_published(config, expected, [first])
    finally:
        first.stop()
        second.stop()
    assert all(published.final.values()), "every window is final"
    assert_same("windows", expected.windows, published.windows)
    assert_same("segments", expected.segments, published.segments)
    assert_same("abandonments", expected.abandonments, published.abandonments)
    letters, unreadable = parse_dead_letters(await read_topic(config, config.dlq_topic))
    assert (letters, unreadable) == ([], 0)
    assert owned > 0, "the second worker never owned an input partition"
    assert read_by_second > 0, "the second worker left without reading any input"
    converted = sum(row.get("converted", 0) for row in expected.windows.values())
    print(
        f"\nuser funnel: {len(data.arrivals)} events, {across} users on two partitions, "
        f"{len(expected.windows)} window stages ({converted} conversions), "
        f"{len(expected.abandonments)} abandonments: equal to the oracle through 3 SIGKILLs "
        f"and a second worker ({owned} partitions, {read_by_second:.0f} events read)"
    )
