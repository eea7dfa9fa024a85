"""What a worker shows of a user funnel (``follows: user``) on the real broker, default settings:
its live gauge of open units comes from the unit tasks, ``/funnel`` and the final-window
gauges from the merged windows, all equal to the SQL oracle's numbers; a session funnel
configured beside it keeps its own.

The user funnel is listed before the session funnel on purpose: the sessions stage counts the
session funnels only, the unit stage the user funnels only, each by its own index.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from streamer.app import topic_plan
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.settings import Settings
from streamer.testing import WorkerProcess, metric, produce, scrape_metrics
from tests.oracle import OracleResult, compute
from tests.support.compare import assert_same, latest_windows, window_numbers
from tests.support.pipeline_run import send_closing, wait_published, worker
from tests.support.traffic import Dataset, generate_users, product_cart_order_yaml

pytestmark = pytest.mark.integration

USER_FUNNEL = product_cart_order_yaml("users", by_user=True)
SESSION_FUNNEL = """\
name: browse
conversion_window: 30m
window: 10m
stages:
  - {name: view, event_types: [product_view]}
  - {name: cart, event_types: [add_to_cart]}
"""
# The first closing events come this long after the last event: the user funnel's attempts
# (4 h) are still open there, the session funnel's (30 min) partly.
OPEN_AFTER_MS = 10 * 60_000


@cache
def dataset() -> Dataset:
    return generate_users(
        seed=29, users=300, minutes=20, later_hours=(0.5, 3.0), closing_after_hours=5
    )


def definitions(tmp_path: Path) -> tuple[Path, ...]:
    paths = (tmp_path / "users.yaml", tmp_path / "browse.yaml")
    for path, text in zip(paths, (USER_FUNNEL, SESSION_FUNNEL), strict=True):
        path.write_text(text)
    return paths


def oracle(
    funnels: tuple[FunnelDefinition, ...], closing_ms: int, lateness_ms: int
) -> OracleResult:
    """Both funnels as the worker stands once it has read everything up to closing events at
    ``closing_ms``: the session tasks' watermark is the lateness behind them, the unit tasks'
    (their fronts the session tasks' watermarks) twice the lateness."""
    users, browse = funnels
    events = dataset().oracle_events()
    result = compute([users], events, closing_ms - 2 * lateness_ms)
    by_session = compute([browse], events, closing_ms - lateness_ms)
    for part in ("windows", "segments", "abandonments", "final"):
        getattr(result, part).update(getattr(by_session, part))
    return result


def open_per_stage(expected: OracleResult, funnel: FunnelDefinition) -> dict[str, int]:
    """Attempts undecided now at each stage: the open ones of every cohort window (a unit is in
    one attempt at a time)."""
    return {
        stage.name: sum(
            numbers["open"]
            for (name, _, at), numbers in expected.windows.items()
            if name == funnel.name and at == stage.name
        )
        for stage in funnel.stages
    }


async def wait_windows(config: Settings, expected: OracleResult, process: WorkerProcess) -> None:
    """Until the newest revision of every window is the oracle's (input stopped: nothing
    changes after)."""
    deadline = time.monotonic() + 180
    while True:
        process.assert_running()
        records = await read_topic(config, config.windows_topic)
        published, _ = window_numbers(latest_windows(value for _, value in records).values())
        if published == expected.windows:
            return
        if time.monotonic() > deadline:
            assert_same("windows", expected.windows, published)
        await asyncio.sleep(2)


def funnel_page(process: WorkerProcess) -> dict[str, Any]:
    url = process.metrics_url.removesuffix("/metrics") + "/funnel"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def last_window(expected: OracleResult, funnel: FunnelDefinition) -> list[dict[str, int]]:
    """The newest cohort window's numbers per stage, as ``/funnel`` shows them."""
    start = max(s for name, s, _ in expected.windows if name == funnel.name)
    rows = []
    for index, stage in enumerate(funnel.stages):
        numbers = expected.windows.get((funnel.name, start, stage.name), {})
        row = {"stage": stage.name, "entered": numbers.get("entered", 0)}
        if index < len(funnel.stages) - 1:
            row.update({k: numbers.get(k, 0) for k in ("converted", "dropped", "open")})
        rows.append(row)
    return rows


def shown(summary: dict[str, Any], funnel: FunnelDefinition) -> list[dict[str, int]]:
    keys = ("stage", "entered", "converted", "dropped", "open")
    return [
        {k: row[k] for k in keys if k in row}
        for row in summary[funnel.name]["last_window"]["stages"]
    ]


async def test_a_user_funnel_s_gauges_and_page_come_from_its_unit_tasks(
    settings: Settings, tmp_path: Path
) -> None:
    paths = definitions(tmp_path)
    funnels = tuple(load_funnel(path) for path in paths)
    users, browse = funnels
    config = settings.model_copy(update={"funnels": paths})
    lateness_ms = round(config.allowed_lateness_seconds * 1000)
    data = dataset()
    last_ms = max(e["at_ms"] for e in data.oracle_events())
    await ensure_topic_plan(config, topic_plan(config, funnels))
    await produce(config, data.messages(config))
    process = worker(config, tmp_path, "views")
    try:
        process.start()
        # 1. Input stopped 10 minutes after the last event: units open at every stage.
        closing_ms = last_ms + OPEN_AFTER_MS
        await send_closing(config, closing_ms)
        expected = oracle(funnels, closing_ms, lateness_ms)
        open_units = open_per_stage(expected, users)
        assert open_units["product"] > 20, open_units
        assert open_units["cart"] > 5, open_units
        await wait_windows(config, expected, process)
        values = scrape_metrics(process.metrics_url)
        for funnel in funnels:
            gauges = {
                stage.name: metric(
                    values, "streamer_funnel_sessions_open", funnel=funnel.name, stage=stage.name
                )
                for stage in funnel.stages
            }
            assert gauges == open_per_stage(expected, funnel), funnel.name
        summary = funnel_page(process)
        assert shown(summary, users) == last_window(expected, users)
        assert shown(summary, browse) == last_window(expected, browse)
        # The unit tasks are partitions N..2N-1 of the per-partition gauges.
        lags = {
            dict(labels)["partition"]
            for (name, labels), _ in values.items()
            if name == "streamer_watermark_lag_seconds"
        }
        assert lags == {str(p) for p in range(2 * config.topic_partitions)}

        # 2. Closing events 5 hours later: every window final, counted in the counters.
        await send_closing(config, data.closing_ms, tag="-final")
        expected = oracle(funnels, data.closing_ms, lateness_ms)
        published = await wait_published(config, expected, [process])
        assert_same("windows", expected.windows, published.windows)
        values = scrape_metrics(process.metrics_url)
        # An event is counted by type once (by the session tasks), not again by the unit tasks.
        sources = {config.clickstream_topic, config.checkout_topic}
        accepted = sum(
            value
            for (name, labels), value in values.items()
            if name == "streamer_events_total"
            and dict(labels)["outcome"] == "accepted"
            and dict(labels)["topic"] in sources
        )
        by_type = sum(
            v for (name, _), v in values.items() if name == "streamer_events_by_type_total"
        )
        assert by_type == accepted > 0
    finally:
        process.stop()
    for funnel in funnels:
        for index, stage in enumerate(funnel.stages):
            rows = sorted(
                (start, numbers)
                for (name, start, at), numbers in expected.windows.items()
                if name == funnel.name and at == stage.name
            )
            entered = metric(
                values,
                "streamer_funnel_sessions_entered_total",
                funnel=funnel.name,
                stage=stage.name,
            )
            assert entered == sum(numbers["entered"] for _, numbers in rows)
            assert (
                metric(
                    values, "streamer_funnel_sessions_open", funnel=funnel.name, stage=stage.name
                )
                == 0
            )
            if index == len(funnel.stages) - 1:
                continue
            step = funnel.step_names[index]
            # The ratio gauges show the newest final window in which the step was decided.
            decided = [n for _, n in rows if n["converted"] + n["dropped"]]
            newest = decided[-1]
            ratio = newest["converted"] / (newest["converted"] + newest["dropped"])
            gauge = metric(
                values, "streamer_funnel_step_conversion_ratio", funnel=funnel.name, step=step
            )
            assert gauge == pytest.approx(ratio), (funnel.name, step)
    print(
        f"\nuser funnel views: {len(data.arrivals)} events; open units at 10 min "
        f"{open_units}; {len(expected.windows)} window stages final, gauges equal to the oracle"
    )
