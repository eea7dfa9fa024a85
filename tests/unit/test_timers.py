"""A stage's timer: an error while the worker stops is logged, an error while running raises;
the event-loop monitor measures how long the loop was held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, Histogram

from streamer.metrics import Metrics
from streamer.pipeline import timers
from streamer.pipeline.timers import install_timer


class App:
    """What install_timer uses of a Faust app: should_stop and the timer decorator."""

    def __init__(self) -> None:
        self.should_stop = False
        self.ticks: list[Callable[[], Awaitable[None]]] = []

    def timer(self, interval: float) -> Callable[[Any], Any]:
        assert interval == 1.0
        return self.ticks.append


async def test_a_tick_cut_short_by_a_stop_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App()
    calls: list[str] = []

    async def publish() -> None:
        calls.append("publish")
        app.should_stop = True  # the stop begins while the tick is sending
        raise RuntimeError("Producer service not yet started")

    install_timer(app, 1.0, publish, "sessions.keep_time")
    (tick,) = app.ticks
    assert tick.__name__ == "sessions.keep_time"
    with caplog.at_level("INFO"):
        await tick()
    assert calls == ["publish"]
    assert "cut short by the worker stopping" in caplog.text
    await tick()  # once stopping, the body is not run again
    assert calls == ["publish"]


async def test_a_tick_failing_while_running_raises() -> None:
    app = App()

    async def publish() -> None:
        raise RuntimeError("broker refused")

    install_timer(app, 1.0, publish, "sessions.keep_time")
    with pytest.raises(RuntimeError, match="broker refused"):
        await app.ticks[0]()


class _Consumer:
    """aiokafka's ``position()`` waits until a partition has a valid fetch position, without a
    bound: partition 1 here never gets one."""

    async def highwaters(self, *tps: TopicPartition) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 10)

    async def position(self, tp: TopicPartition) -> int:
        if tp.partition == 1:
            await asyncio.Event().wait()
        return 7


async def test_a_partition_without_a_fetch_position_does_not_hold_the_tick(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(timers, "OFFSETS_TIMEOUT_S", 0.05)
    app = App()
    app.consumer = _Consumer()  # type: ignore[attr-defined]
    tps = [TopicPartition("clickstream", 0), TopicPartition("clickstream", 1)]
    with caplog.at_level("WARNING"):
        offsets = await asyncio.wait_for(timers.consumer_offsets(app, tps), timeout=5)
    assert offsets is not None
    highwaters, positions = offsets
    assert highwaters == {("clickstream", 0): 10, ("clickstream", 1): 10}
    assert positions == {("clickstream", 0): 7}  # partition 1 is asked again next tick
    assert "clickstream[1]: the consumer gave no fetch position" in caplog.text


class _SlowBroker:
    """A consumer whose log-end query the broker answers only when ``answer`` is set, and
    that counts the questions it was asked (each would hold a worker of Faust's consumer
    thread until answered)."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.asked = 0

    async def highwaters(self, *tps: TopicPartition) -> dict[TopicPartition, int]:
        self.asked += 1
        await self.answer.wait()
        return dict.fromkeys(tps, 10)

    async def position(self, tp: TopicPartition) -> int:
        return 7


async def test_an_unanswered_question_is_not_asked_again_until_the_consumer_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers run Faust's consumer calls, fetches among them: ticks (of one timer or of
    two stages') that each asked again while the broker sat on a log-end query took both,
    and the consumer fetched nothing until the request timed out."""
    monkeypatch.setattr(timers, "OFFSETS_TIMEOUT_S", 0.05)
    app = App()
    consumer = app.consumer = _SlowBroker()  # type: ignore[attr-defined]
    tps = [TopicPartition("clickstream", 0)]
    for _ in range(5):  # five ticks while the broker does not answer
        assert await timers.consumer_offsets(app, tps) is None
    assert consumer.asked == 1
    consumer.answer.set()
    await asyncio.sleep(0)  # the late answer arrives
    await asyncio.sleep(0)
    offsets = await timers.consumer_offsets(app, tps)
    assert offsets == ({("clickstream", 0): 10}, {("clickstream", 0): 7})
    assert consumer.asked == 2  # asked again once the first was answered


def _hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # synchronous work: nothing else runs on the loop meanwhile


def _logged(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The lags the monitor logged, in seconds."""
    lines = [r.getMessage() for r in caplog.records]
    assert all(line.startswith("event loop lag: a wake-up due every 0.01s ran ") for line in lines)
    return [float(line.split(" ran ")[1].split("s late")[0]) for line in lines]


def _buckets(histogram: Histogram) -> dict[str, float]:
    """Cumulative observations by bucket bound ("count": all of them)."""
    return {
        sample.labels.get("le", "count"): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if sample.name.endswith(("_bucket", "_count"))
    }


def _late(histogram: Histogram, than: str) -> float:
    """Observations later than the bucket bound ``than``."""
    buckets = _buckets(histogram)
    return buckets["count"] - buckets[than]


async def test_the_loop_lag_monitor_measures_a_held_loop(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics.create(CollectorRegistry())
    lag = metrics.event_loop_lag
    monitor = asyncio.ensure_future(timers.watch_loop_lag(lag, 0.01))
    try:
        await asyncio.sleep(0.2)  # nothing holds the loop
        assert _buckets(lag)["count"] >= 5  # it wakes up, again and again
        before = _late(lag, "0.5")  # (a loaded machine wakes it up late now and then)
        with caplog.at_level("WARNING"):
            _hold_the_loop(1.0)
            await asyncio.sleep(0.05)
    finally:
        monitor.cancel()
    assert _late(lag, "0.5") == before + 1  # the one wake-up due during the stall
    assert _late(lag, "2.0") == 0
    # Late by the stall less what was left of its sleep when it began (under 10 ms).
    assert 0.99 <= max(_logged(caplog)) < 2.0


async def test_the_worst_stall_is_always_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics.create(CollectorRegistry())
    monitor = asyncio.ensure_future(timers.watch_loop_lag(metrics.event_loop_lag, 0.01, 0.25))
    try:
        with caplog.at_level("WARNING"):
            for held_s in (0.5, 0.3, 0.8):  # within the quiet period: the second is not logged
                await asyncio.sleep(0.03)
                _hold_the_loop(held_s)
            await asyncio.sleep(0.03)
    finally:
        monitor.cancel()
    logged = _logged(caplog)
    assert len(logged) == 2
    assert logged[0] >= 0.49
    assert logged[1] >= 0.79


async def test_a_long_stall_logs_the_stack_of_what_holds_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks: list[Callable[[], Awaitable[None]]] = []

    class _TaskApp:
        def task(self, fun: Callable[[], Awaitable[None]]) -> None:
            tasks.append(fun)

    timers.install_loop_lag_monitor(_TaskApp(), Metrics.create(CollectorRegistry()).event_loop_lag)
    monitor = asyncio.ensure_future(tasks[0]())
    try:
        await asyncio.sleep(0.1)
        with caplog.at_level("WARNING"):
            _hold_the_loop(timers.LOOP_STALL_STACK_S * 2)
            await asyncio.sleep(0.1)
    finally:
        monitor.cancel()
    [stack] = [r.getMessage() for r in caplog.records if "event loop held for" in r.getMessage()]
    assert "in _hold_the_loop" in stack
