"""A large jump of a task's watermark, taken in steps that let the loop run
(``streamer.pipeline.sessions.stepping``), decides the same as one call of ``Task.advance``,
with what a publish drains between the steps included."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.funnel.definition import load_funnel
from streamer.funnel.session import CompiledFunnel
from streamer.funnel.task import Offer, Task
from streamer.pipeline.sessions import stage as stage_module
from streamer.pipeline.sessions import stepping
from tests.support.core_run import stored
from tests.support.stage_harness import NOW_MS, make_harness, valid_event
from tests.support.traffic import generate

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"
LATENESS_MS = 120_000  # the default allowed lateness
RETENTION_MS = 1_800_000
START = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def _task_before_the_jump() -> Task:
    """A task fed 10 minutes of traffic with the watermark following it, before a jump (3
    hours: the closing events at the end of a backlog, which decide every session)."""
    data = generate(seed=31, minutes=10, sessions_per_second=3, start=START)
    task = Task((CompiledFunnel(load_funnel(CHECKOUT)),), 0, retention_ms=RETENTION_MS)
    front = -(2**62)
    for event in data.oracle_events():
        task.offer(str(event["session_id"]), stored(event))
        front = max(front, int(event["at_ms"]))
        task.advance(front - LATENESS_MS)
    return task


class _Published:
    """What the stage's publishes would have sent: the newest partial per window, and every
    abandonment notice."""

    def __init__(self) -> None:
        self.partials: dict[tuple[str, int], Any] = {}
        self.notices: list[str] = []

    def drain(self, task: Task) -> None:
        out = task.drain()
        for partial in out.partials:
            self.partials[(partial.funnel, partial.window_start_ms)] = partial.counts.to_json()
        self.notices.extend(repr(notice) for notice in out.abandonments)


def _state(task: Task) -> bytes:
    saved = task.checkpoint(full=True)
    windows = {f"{f}/{s}": counts for (f, s), counts in saved.windows.items()}
    return orjson.dumps([saved.watermark_ms, saved.sessions, windows], option=orjson.OPT_SORT_KEYS)


@pytest.mark.parametrize("jump_minutes", [15, 180])  # sessions still kept; all forgotten
async def test_a_jump_in_steps_lets_the_loop_run_and_decides_what_one_jump_does(
    monkeypatch: pytest.MonkeyPatch, jump_minutes: int
) -> None:
    at_once = _task_before_the_jump()
    target_ms = at_once.watermark_ms + jump_minutes * 60_000
    expected = _Published()
    expected.drain(at_once)
    at_once.advance(target_ms)
    expected.drain(at_once)

    stepped = _task_before_the_jump()
    published = _Published()
    published.drain(stepped)
    monkeypatch.setattr(stepping, "YIELD_EVERY_S", 0.0)  # the loop runs after every step
    watermarks: list[int] = []

    async def publish_meanwhile() -> None:  # as the timer's publish does, between two steps
        while True:
            await asyncio.sleep(0)
            watermarks.append(stepped.watermark_ms)
            published.drain(stepped)

    publisher = asyncio.ensure_future(publish_meanwhile())
    await asyncio.sleep(0)
    await stepping.advance_in_steps(stepped, target_ms)
    publisher.cancel()
    published.drain(stepped)

    between = [w for w in watermarks if w < target_ms]
    # A step starts at 1 s of event time and at most doubles: 15 minutes take 10 steps or
    # more, so the loop ran at 9 watermarks or more on the way.
    assert len(set(between)) >= 9, "the loop ran at watermarks on the way"
    assert between == sorted(between)
    assert stepped.watermark_ms == target_ms
    assert published.partials == expected.partials
    assert sorted(published.notices) == sorted(expected.notices)
    assert expected.notices, "the jump decided abandonments"
    assert expected.partials
    assert _state(stepped) == _state(at_once)


async def test_a_small_move_is_one_step() -> None:
    task = _task_before_the_jump()
    target = task.watermark_ms + stepping.FIRST_STEP_MS
    ran: list[int] = []

    async def meanwhile() -> None:
        await asyncio.sleep(0)
        ran.append(task.watermark_ms)

    other = asyncio.ensure_future(meanwhile())
    await stepping.advance_in_steps(task, target)
    assert task.watermark_ms == target
    assert ran == []  # the loop did not run in between: one call, as before
    await other


async def test_a_task_released_during_a_jump_is_left_where_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = _task_before_the_jump()
    target_ms = task.watermark_ms + 180 * 60_000
    monkeypatch.setattr(stepping, "YIELD_EVERY_S", 0.0)
    asked: list[int] = []

    def still_held() -> bool:  # a rebalance releases the task at the first yield
        asked.append(task.watermark_ms)
        return False

    await stepping.advance_in_steps(task, target_ms, still_held)
    assert len(asked) == 1
    assert task.watermark_ms == asked[0] < target_ms


def test_a_move_of_one_step_is_made_at_once_and_a_larger_one_is_left_to_the_steps() -> None:
    task = _task_before_the_jump()
    start = task.watermark_ms
    assert stepping.advance_at_once(task, start + stepping.FIRST_STEP_MS)
    assert task.watermark_ms == start + stepping.FIRST_STEP_MS
    assert not stepping.advance_at_once(task, task.watermark_ms + stepping.FIRST_STEP_MS + 1)
    assert task.watermark_ms == start + stepping.FIRST_STEP_MS  # untouched: the steps' move
    fresh = Task((CompiledFunnel(load_funnel(CHECKOUT)),), 0, retention_ms=RETENTION_MS)
    assert stepping.advance_at_once(fresh, start)  # no watermark yet: nothing to step from
    assert fresh.watermark_ms == start


async def test_the_stage_steps_only_the_moves_larger_than_one_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = make_harness()
    stepped_moves: list[int] = []
    steps = stage_module.advance_in_steps

    async def recording(task: Task, watermark_ms: int, still_held: Any) -> None:
        stepped_moves.append(watermark_ms - task.watermark_ms)
        await steps(task, watermark_ms, still_held)

    monkeypatch.setattr(stage_module, "advance_in_steps", recording)
    first = NOW_MS - 600_000
    step = stepping.FIRST_STEP_MS
    # a first watermark, a move of one step, then one of a step and 1 ms
    times = [first, first + 1, first + 1 + step, first + 2 + 2 * step]
    for index, at_ms in enumerate(times):
        moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        event = valid_event(event_id=f"e-{index}", occurred_at=moment.replace("+00:00", "Z"))
        outcome, _ = await harness.process(harness.message(orjson.dumps(event)))
        assert outcome is Offer.ACCEPTED
        harness.stage.inputs.set_idle("checkout", 0, True)  # the other input holds nothing back
    assert stepped_moves == [step + 1]
    assert harness.stage.runtimes[0].task.watermark_ms == times[-1] - LATENESS_MS
