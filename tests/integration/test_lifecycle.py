"""The shipped lifecycle funnel (deploy/funnels/lifecycle) on the real broker: generated users
over months of event time as the shop's events, the worker SIGKILLed while input flows; then
every published figure (the sum of each unit partition's latest lifecycle record on
``funnel.partials``, and the ``streamer_lifecycle_*`` gauges the merger shows) equals the SQL
oracle's (tests/oracle/lifecycle.py) over the events the contract accepted, at the unit tasks'
final watermark; the orders the contract refuses (a boolean, null or negative value) are
dead-lettered ``schema_violation``, and one whose value is numeric text counts its number.

Default settings but one: ``max_event_age_seconds``. The users span a year of event time up to
yesterday, and an event older than that setting (7 days) against the broker's timestamp is
refused; producing with the event time as the message timestamp instead would put the messages
past the local broker's 7-day retention, which may delete them before the worker reads them.
"""

from __future__ import annotations

import asyncio
import random
import time
from base64 import b64decode
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.app import topic_plan
from streamer.dlq import parse_dead_letters
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.settings import Settings
from streamer.simulate import topic_for
from streamer.testing import produce
from streamer.worker_process import scrape_metrics
from tests.oracle.lifecycle import FIRST_PURCHASE_BOUNDS_MS, lifecycle_figures
from tests.support.lifecycle_records import (
    count_diff,
    expected_gauges,
    gauge_diff,
    latest_records,
    lifecycle_gauges,
    oracle_counts,
    shop_event,
    summed_records,
)
from tests.support.pipeline_run import send_closing, wait_reading, worker
from tests.support.traffic import generate_lifecycle

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy/funnels/lifecycle/lifecycle.yaml"
DAY_MS = 86_400_000
# Event time: a year of users up to yesterday (first visits over 100 days, orders months on).
YEARS_BACK_DAYS = 380
MAX_EVENT_AGE_DAYS = 400


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_text(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)


def shop_traffic(now_ms: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], set[str]]:
    """The shop's events in event-time order, the oracle's rows of the events the contract
    accepts (an order's numeric text read as its number), the ids of those it refuses."""
    rng = random.Random(20261208)
    start = now_ms - YEARS_BACK_DAYS * DAY_MS
    rows = generate_lifecycle(seed=8, users=400, days=100, start_ms=start)
    rows = [row for row in rows if row["at_ms"] < now_ms - DAY_MS]
    rows.sort(key=lambda row: (row["at_ms"], rng.random()))
    events, accepted, refused = [], [], set()
    for index, row in enumerate(rows):
        if row["event_type"] == "order_placed":
            value = row["properties"].get("value", "missing")
            if value == "missing":  # the contract requires one: this generator's 0
                row["properties"]["value"] = 0
            elif _numeric_text(value):  # "12.50": the contract reads the number
                row = {**row, "properties": {**row["properties"], "value": float(value)}}
            elif not (_is_number(value) and value >= 0):  # true, null, -5: refused
                refused.add(row["event_id"])
        events.append(shop_event(row, index))
        if row["event_id"] not in refused:
            accepted.append(row)
    return events, accepted, refused


async def _lifecycle_records(config: Settings) -> list[Any]:
    """Every lifecycle record on the partials topic so far, decoded."""
    records = [
        orjson.loads(value)
        for _, value in await read_topic(config, config.partials_topic)
        if value is not None
    ]
    return [record for record in records if record.get("kind") == "lifecycle"]


async def wait_lifecycle_records(config: Settings, partitions: range, timeout: float = 90) -> None:
    """Until every unit partition has published a lifecycle record."""
    deadline = time.monotonic() + timeout
    while {r["partition"] for r in await _lifecycle_records(config)} < set(partitions):
        assert time.monotonic() < deadline, "no lifecycle record from some unit partition"
        await asyncio.sleep(0.5)


async def wait_latest_records(
    config: Settings, partitions: range, watermark_ms: int, timeout: float = 180
) -> tuple[dict[tuple[str, int], Any], list[Any]]:
    """Until every unit partition's latest lifecycle record stands at ``watermark_ms``: the
    latest records, and every lifecycle record sent."""
    deadline = time.monotonic() + timeout
    while True:
        records = await _lifecycle_records(config)
        latest = latest_records(records)
        marks = {
            p: latest[("lifecycle", p)]["version"][2]
            for p in partitions
            if ("lifecycle", p) in latest
        }
        if len(marks) == len(partitions) and set(marks.values()) == {watermark_ms}:
            return latest, records
        assert time.monotonic() < deadline, f"records' watermarks {marks}, want {watermark_ms}"
        await asyncio.sleep(1.0)


async def test_every_published_lifecycle_figure_equals_the_oracle_through_a_sigkill(
    settings: Settings, tmp_path: Path
) -> None:
    definition = load_funnel(SHIPPED)
    declaration = definition.lifecycle
    assert declaration is not None
    config = settings.model_copy(
        update={"funnels": (SHIPPED,), "max_event_age_seconds": MAX_EVENT_AGE_DAYS * 86400.0}
    )
    now_ms = int(time.time() * 1000)
    events, accepted, refused = shop_traffic(now_ms)
    closing_ms = events[-1]["occurred_at"] + 3_600_000
    lateness_ms = round(config.allowed_lateness_seconds * 1000)
    # Unit tasks' fronts are the session tasks' watermarks, themselves the lateness behind the
    # closing events: the closing events (visits too) are never below it.
    watermark_ms = closing_ms - 2 * lateness_ms
    sql = oracle_counts(lifecycle_figures(accepted, declaration, watermark_ms))
    await ensure_topic_plan(config, topic_plan(config, (definition,)))
    messages = [
        (topic_for(config, e["event_type"]), e["session_id"].encode(), orjson.dumps(e))
        for e in events
    ]
    half = len(messages) // 2
    await produce(config, messages[:half])
    process = worker(config, tmp_path, "worker")
    rng = random.Random(41)
    try:
        process.start()
        await wait_reading(process, config)
        # Killed once the first owner published figures (halfway through the input): its
        # records must be replaced by the next owner's, not added to.
        units = range(config.topic_partitions, 2 * config.topic_partitions)
        await wait_lifecycle_records(config, units)
        await asyncio.sleep(rng.uniform(0.0, 3.0))
        process.kill()
        process.start()
        await produce(config, messages[half:])
        await send_closing(config, closing_ms)
        latest, sent = await wait_latest_records(config, units, watermark_ms)
        published = summed_records(latest.values())
        assert count_diff(published, sql) == []
        # The gauges: the merger's sum of the same records, newest cohort weeks only.
        want = expected_gauges(
            sql,
            definition.name,
            declaration.horizon_days,
            FIRST_PURCHASE_BOUNDS_MS,
            config.lifecycle_cohort_weeks,
        )
        deadline = time.monotonic() + 60
        while True:
            got = lifecycle_gauges(scrape_metrics(process.metrics_url), definition.name)
            differences = gauge_diff(got, want)
            if not differences or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert differences == []
    finally:
        process.stop()
    # The SIGKILL made a new owner of every partition: its records replaced the first
    # owner's (summed, they would count the partition twice).
    owners = {p: sorted({r["generation"] for r in sent if r["partition"] == p}) for p in units}
    assert all(len(generations) >= 2 for generations in owners.values()), owners
    assert all(latest[("lifecycle", p)]["generation"] == owners[p][-1] for p in units)
    letters, unreadable = parse_dead_letters(await read_topic(config, config.dlq_topic))
    assert unreadable == 0
    refused_ids = {orjson.loads(b64decode(letter.payload_base64))["event_id"] for letter in letters}
    assert refused_ids == refused
    assert {(letter.reason, letter.field) for letter in letters} == {("schema_violation", "value")}
    buyers = sql["buyers"].values()
    assert sum(b[0] for b in buyers) > 100
    assert sum(b[3] for b in buyers) > 0  # churn reached
    assert all(sum(b[1][i] for b in buyers) > 0 for i in range(len(declaration.horizon_days)))
    days = (events[-1]["occurred_at"] - events[0]["occurred_at"]) // DAY_MS
    print(
        f"\nlifecycle: {len(events)} events over {days} days of event time, {len(refused)} "
        f"refused, through a SIGKILL ({len(sent)} lifecycle records, each of {len(units)} "
        "partitions' replaced by a new owner's): "
        f"{sum(b[0] for b in buyers)} buyers in {len(sql['buyers'])} first-order weeks, "
        f"{len(sql['acquisition'])} acquisition cohorts, {len(want)} gauge samples: all "
        "equal to the oracle"
    )
