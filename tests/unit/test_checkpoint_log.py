"""The sessions stage's state log: checkpoints write delta records (not one write per session),
a restore replays them in order, compaction rewrites the whole state once the deltas outweigh
it, and leftovers of a write-out cut short or of the first edition's layout are handled."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.pipeline.messages import SourceMessage
from streamer.pipeline.sessions import checkpoint_log
from tests.support.stage_harness import CHECKOUT, NOW_MS, Harness, make_harness, valid_event

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
    if STEPS[step] == "product_view":
        body.pop("cart_value")
    if STEPS[step] == "checkout_started":
        body.pop("product_id")
    if STEPS[step] == "page_view":
        for name in ("product_id", "cart_value", "currency"):
            body.pop(name)
        body.update(page="/", landing=True)
    return orjson.dumps(body)


def state_of(harness: Harness) -> tuple[dict[str, Any], dict[Any, Any]]:
    task = harness.stage.runtimes[0].task
    return (
        {sid: state.to_json() for sid, state in task.sessions.items()},
        {key: counts.to_json() for key, counts in task.windows.items()},
    )


def restored(
    table: dict[str, bytes], funnels: tuple[FunnelDefinition, ...] | None = None
) -> Harness:
    again = make_harness(funnels=funnels)
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
    monkeypatch.setattr(checkpoint_log, "MIN_COMPACTION_BYTES", 4_000)
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


async def test_a_funnel_added_or_removed_between_restarts_keeps_the_other_funnels_sessions() -> (
    None
):
    checkout = load_funnel(CHECKOUT)
    browse = checkout.model_copy(update={"name": "browse"})  # the same shape: easy to compare
    harness = make_harness(lateness_ms=0)
    sent: list[SourceMessage] = []
    harness.stage.process = recording(harness.stage.process, sent)  # type: ignore[method-assign]
    for step in range(3):
        await feed(harness, range(6), step)
        harness.stage.inputs.observe("checkout", 0, NOW_MS)  # the watermark follows clickstream
    assert not harness.dead_letters.sent
    await harness.stage.checkpoint(0)
    before, windows = state_of(harness)
    assert all(state[0][0] is not None for state in before.values())  # checkout progress

    async def read_range(
        topic: str, partition: int, start: int, end: int
    ) -> tuple[int, list[SourceMessage]]:
        return 0, [m for m in sent if m.topic == topic and start <= m.offset < end]

    async def find_offset(topic: str, partition: int, at_ms: int) -> int:
        return 0

    # A funnel added in front: restored, the sessions keep their checkout progress ...
    grown = make_harness(funnels=(browse, checkout), read_range=read_range, find_offset=find_offset)
    grown.table.update(harness.table)
    grown.stage.ensure(0)
    expected = {sid: [[None, state[0][0]], *state[1:]] for sid, state in before.items()}
    assert state_of(grown)[0] == expected
    assert set(state_of(grown)[1]) == {(1, start) for _, start in windows}
    # ... and browse catches up from the input the checkpoint reflects before the next event.
    grown.offset = harness.offset  # the input goes on where the checkpoint left it
    await feed(grown, range(6), 3)
    assert not grown.dead_letters.sent
    await grown.stage.checkpoint(0)
    assert orjson.loads(grown.table["t:0"])["funnels"] == ["browse", "checkout"]
    assert state_of(restored(grown.table, (browse, checkout))) == state_of(grown)
    after = state_of(grown)[0]
    assert all(state[0][0] == state[0][1] for state in after.values())  # as if always there
    assert after != expected  # checkout moved on

    # The funnel removed again: checkout's progress is what it was with both.
    shrunk = state_of(restored(grown.table, (checkout,)))[0]
    assert shrunk == {sid: [[state[0][1]], *state[1:]] for sid, state in after.items()}


def recording(process: Any, sent: list[SourceMessage]) -> Any:
    async def wrapped(message: SourceMessage, ack: Any) -> Any:
        sent.append(message)
        return await process(message, ack)

    return wrapped


# --- the log as pure code over a mapping (no stage, no Faust) --------------------------------
def test_read_log_replays_deltas_in_order_and_names_what_it_does_not_own() -> None:
    names = {"checkout": 0}
    table = {
        "d:0:000000000001": orjson.dumps(
            {"s": {"a": [1], "b": [2]}, "ds": [], "w": {"checkout:60000": {"n": 1}}, "dw": []}
        ),
        "d:0:000000000002": orjson.dumps(
            {"s": {"b": [3]}, "ds": ["a"], "w": {"gone:0": {"n": 9}}, "dw": ["checkout:60000"]}
        ),
        "d:0:000000000003": b"{}",  # a write-out cut short before its meta
        "d:1:000000000001": b"{}",  # another partition's
        "t:0": orjson.dumps({"log": [1, 3], "offsets": {"clickstream": 7}}),
    }
    log = checkpoint_log.read_log(table, 0, names)
    assert log.sessions == {"b": [3]}
    assert log.windows == {}  # deleted by the second delta; a removed funnel's is left out
    assert (log.first, log.next_seq) == (1, 3)
    assert log.stale == ["d:0:000000000003"]
    assert log.cut_short == [3]
    assert not log.first_edition
    assert log.log_bytes == len(table["d:0:000000000001"]) + len(table["d:0:000000000002"])


def test_read_log_loads_the_first_editions_layout_and_refuses_a_missing_delta() -> None:
    first_edition = {
        "t:0": orjson.dumps({"offsets": {"clickstream": 3}}),
        "s:0:x": orjson.dumps([5]),
        "w:0:checkout:0": orjson.dumps({"n": 2}),
    }
    log = checkpoint_log.read_log(first_edition, 0, {"checkout": 0})
    assert log.first_edition
    assert log.sessions == {"x": [5]}
    assert log.windows == {(0, 0): {"n": 2}}
    with pytest.raises(RuntimeError, match="checkpoint record d:0:000000000000 is missing"):
        checkpoint_log.read_log({"t:0": orjson.dumps({"log": [0, 1]})}, 0, {})
    assert checkpoint_log.read_log({}, 0, {}).meta == {}
