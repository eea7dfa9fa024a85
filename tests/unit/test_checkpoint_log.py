"""The sessions stage's state log: checkpoints write delta records (not one write per session),
a restore replays them in order, compaction rewrites the whole state once the deltas outweigh
it, and leftovers of a write-out cut short or of the first edition's layout are handled."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamer.pipeline import sessions as sessions_module
from tests.unit.helpers import Harness, make_harness, valid_event

STEPS = ("page_view", "product_view", "add_to_cart", "checkout_started")


def event(session: int, step: int, second: int) -> bytes:
    fields: dict[str, Any] = {
        "event_id": f"e-{session}-{step}",
        "event_type": STEPS[step],
        "session_id": f"s-{session}",
        "occurred_at": f"2026-11-22T11:5{step}:{second:02d}Z",
    }
    body = valid_event(**fields)
    if STEPS[step] in ("page_view", "product_view", "checkout_started"):
        for name in ("quantity", "price"):
            body.pop(name)
    if STEPS[step] == "page_view":
        for name in ("product_id", "cart_value", "currency"):
            body.pop(name)
        body["page"] = "/"
    return orjson.dumps(body)


def state_of(harness: Harness) -> tuple[dict[str, Any], dict[Any, Any]]:
    task = harness.stage.runtimes[0].task
    return (
        {sid: state.to_json() for sid, state in task.sessions.items()},
        {key: counts.to_json() for key, counts in task.windows.items()},
    )


def restored(table: dict[str, bytes]) -> Harness:
    again = make_harness()
    again.table.update(table)
    again.stage.ensure(0)
    return again


def log_keys(table: dict[str, bytes]) -> list[str]:
    return sorted(key for key in table if key.startswith("d:0:"))


async def feed(harness: Harness, sessions: range, step: int) -> None:
    for session in sessions:
        message = harness.message(event(session, step, session % 60), key=f"s-{session}".encode())
        await harness.process(message)


async def test_restore_replays_the_deltas_and_compaction_keeps_the_log_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessions_module, "MIN_COMPACTION_BYTES", 4_000)
    harness = make_harness()
    for step in range(len(STEPS)):
        for batch in range(3):
            await feed(harness, range(batch * 10, batch * 10 + 10), step)
            await harness.stage.checkpoint(0)
            meta = orjson.loads(harness.table["t:0"])
            first, next_seq = meta["log"]
            # The table holds exactly the live range: older deltas are deleted by compaction.
            assert log_keys(harness.table) == [f"d:0:{seq:012d}" for seq in range(first, next_seq)]
            assert state_of(restored(harness.table)) == state_of(harness)
    assert first > 0, "the log was compacted at least once"
    assert len(harness.stage.runtimes[0].task.sessions) == 30


async def test_deltas_of_a_write_out_cut_short_are_dropped_and_never_reused() -> None:
    harness = make_harness()
    await feed(harness, range(5), 0)
    await harness.stage.checkpoint(0)
    # A write-out that died after its delta record and before its meta record.
    harness.table["d:0:000000000001"] = b'{"s":{"ghost":[]},"ds":[],"w":{},"dw":[]}'
    again = restored(harness.table)
    assert state_of(again) == state_of(harness)  # the ghost is not part of the state
    again.offset = harness.offset
    await feed(again, range(5, 8), 0)
    await again.stage.checkpoint(0)
    meta = orjson.loads(again.table["t:0"])
    assert meta["log"][0] >= 2  # a full record past the leftover
    assert "ghost" not in again.table["d:0:000000000002"].decode()
    assert log_keys(again.table) == [f"d:0:{seq:012d}" for seq in range(*meta["log"])]
    assert state_of(restored(again.table)) == state_of(again)


async def test_the_first_editions_layout_is_read_then_rewritten_as_a_log() -> None:
    harness = make_harness()
    await feed(harness, range(4), 0)
    await harness.stage.checkpoint(0)
    sessions, _ = state_of(harness)
    meta = orjson.loads(harness.table["t:0"])
    legacy = {f"s:0:{sid}": orjson.dumps(state) for sid, state in sessions.items()}
    del meta["log"]
    legacy["t:0"] = orjson.dumps(meta)
    again = restored(legacy)
    assert state_of(again)[0] == sessions
    await again.stage.checkpoint(0)
    assert not [key for key in again.table if key.startswith("s:")]
    assert state_of(restored(again.table))[0] == sessions
