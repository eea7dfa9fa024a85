"""A stage's timer: an error while the worker stops is logged, an error while running raises."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

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
