"""A unit task restarted on the same disk keeps its units there and reads only the checkpoint
log's newer deltas, when the log vouches for the store; else it rebuilds the store from the log
(docs/decisions/0009-open-units-on-disk.md, step 3). Either way it counts what a task that was
never stopped counts: stopped after any checkpoint, killed between the store's commit and the
log's write-out (an injected fault), or after another owner wrote to the log meanwhile. A
compaction streamed from the store in slices, killed at any of its writes, restores the state
before it or after it (step 5)."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.decode import DecodeLimits
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.funnel.task import Checkpoint
from streamer.metrics import Metrics
from streamer.pipeline.messages import SourceMessage
from streamer.pipeline.sessions import SessionsStage, checkpoint_log, committer
from streamer.pipeline.sessions.checkpoint_log import DeltaEncoder, delta_key, meta_key, read_log
from streamer.pipeline.sessions.unit_store import UnitStore, view_position
from streamer.pipeline.units import UNIT_SOURCE, UnitForwarder
from tests.support.stage_harness import NOW, NOW_MS, Recorder, valid_event

SOURCES = ("clickstream", "checkout")
KEPT = "units on disk kept"  # what the restore logs when it keeps the store

# Attempts time out (wakes), users come back after it, units at rest are forgotten.
USERS_FUNNEL = """\
name: users
follows: user
conversion_window: 20m
stages:
  - {name: product, event_types: [product_view]}
  - {name: cart, event_types: [add_to_cart]}
  - {name: checkout, event_types: [checkout_started]}
"""


async def _nothing() -> None:
    return None


def _stage(
    funnels: tuple[FunnelDefinition, ...],
    table: dict[str, bytes],
    partials: Recorder | None = None,
    **options: Any,
) -> Any:
    defaults: dict[str, Any] = {"send_dead_letter": Recorder()}
    return SessionsStage(
        funnels=funnels,
        table=table,
        metrics=Metrics.create(CollectorRegistry(), source_topics=SOURCES, funnels=funnels),
        limits=DecodeLimits(),
        allowed_lateness_ms=0,
        retention_ms=600_000,
        checkpoint_interval_s=3600,
        send_partial=partials or Recorder(),
        send_abandonment=Recorder(),
        flush_producer=_nothing,
        clock=lambda: NOW,
        **(defaults | options),
    )


@pytest.fixture(scope="module")
def funnel(tmp_path_factory: pytest.TempPathFactory) -> tuple[FunnelDefinition, ...]:
    path = tmp_path_factory.mktemp("funnel") / "users.yaml"
    path.write_text(USERS_FUNNEL)
    return (load_funnel(path),)


@pytest.fixture(scope="module")
async def forwarded() -> list[SourceMessage]:
    """What session tasks forward to one unit partition: 40 users' views, carts and checkouts
    over three hours, each front marker after the events it covers."""
    sent: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []

    async def send(key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
        sent.append((key, value, headers))
        return await Recorder()(key, value)

    sessions = _stage((), {}, topics=SOURCES, units=UnitForwarder(send=send, partitions=1))
    rng = random.Random(31)
    base = NOW_MS - 4 * 3_600_000
    at = base
    for index in range(600):
        at += rng.randrange(0, 40_000)
        user = rng.randrange(40)
        event = valid_event(event_id=f"e-{index}")
        kind = rng.choice(("product_view", "product_view", "add_to_cart", "checkout_started"))
        if kind != "add_to_cart":
            event = {k: v for k, v in event.items() if k not in ("quantity", "cart_value")}
            event["event_type"] = kind
        event |= {"session_id": f"s-{user}-{index // 100}", "user_id": f"u-{user}"}
        event["occurred_at"] = at
        message = SourceMessage("clickstream", 0, index, NOW_MS, b"k", orjson.dumps(event))
        await sessions.process(message, lambda: None)
        if index % 25 == 24:  # the session task's watermark moves: released events go out
            for topic in SOURCES:
                sessions.inputs.observe(topic, 0, at)
            await sessions.mark_idle({}, idle_timeout_s=3600)
            await sessions.publish()
    for topic in SOURCES:
        sessions.inputs.observe(topic, 0, at + 60_000)  # units still open at the end
    await sessions.mark_idle({}, idle_timeout_s=3600)
    await sessions.publish()
    return [
        SourceMessage("units", 0, offset, NOW_MS, key, value, tuple(headers))
        for offset, (key, value, headers) in enumerate(sent)
    ]


def _unit_stage(
    funnel: tuple[FunnelDefinition, ...], table: dict[str, bytes], folder: Path, partials: Recorder
) -> Any:
    return _stage(
        funnel,
        table,
        partials,
        topics=("units",),
        rekeyed_from=(UNIT_SOURCE,),
        units_on_disk=folder,
        unit_cache=3,
    )


async def _counts(
    stage: SessionsStage, partials: Recorder
) -> tuple[dict[Any, Any], dict[str, Any], dict[Any, int]]:
    """The newest partial of each window (as the merger keeps them), the units, the open
    attempts per stage."""
    await stage.publish()
    [runtime] = stage.runtimes.values()
    task = runtime.task
    newest: dict[Any, Any] = {}
    for _, value in partials.sent:
        record = orjson.loads(value)
        if record["kind"] == "partial":
            newest[(record["funnel"], record["start"])] = record["counts"]
    return (
        newest,
        {unit: state.to_json() for unit, state in task.sessions.items()},
        {key: n for key, n in task.open_sessions.items() if n},
    )


async def _run(stage: SessionsStage, messages: list[SourceMessage], checkpoints: set[int]) -> None:
    """Feed ``messages`` (a restored task skips what its checkpoint holds), checkpointing
    after the offsets in ``checkpoints``."""
    for message in messages:
        await stage.process(message, lambda: None)
        if message.offset in checkpoints:
            await stage.checkpoint(0)


def _stop(stage: SessionsStage) -> None:
    """Gone without a last checkpoint, as after a SIGKILL (the disk keeps what was written)."""
    for runtime in stage.runtimes.values():
        assert runtime.store is not None
        runtime.store.close()


@pytest.fixture(scope="module")
async def expected(
    funnel: tuple[FunnelDefinition, ...], forwarded: list[SourceMessage], tmp_path_factory: Any
) -> tuple[Any, ...]:
    partials = Recorder()
    stage = _unit_stage(funnel, {}, tmp_path_factory.mktemp("units"), partials)
    await _run(stage, forwarded, set())
    counts = await _counts(stage, partials)
    _stop(stage)
    assert counts[0]
    assert len(counts[1]) > 3  # more units open than the cache holds
    return counts


@pytest.mark.parametrize("seed", range(6))
async def test_a_restart_on_the_same_disk_keeps_the_units_and_counts_the_same(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    expected: tuple[Any, ...],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    seed: int,
) -> None:
    """Killed after a checkpoint at a random point, twice: each restart keeps the store and
    the final windows, units and open counts are those of the run never stopped."""
    table: dict[str, bytes] = {}
    rng = random.Random(seed)
    stops = sorted(rng.sample(range(100, len(forwarded)), 2))
    checkpoints = set(rng.sample(range(len(forwarded)), 15)) | {stop - 1 for stop in stops}
    caplog.set_level(logging.INFO, logger="streamer.pipeline.sessions.runtime")
    partials = Recorder()
    for stop in (*stops, len(forwarded)):
        stage = _unit_stage(funnel, table, tmp_path, partials)
        await _run(stage, forwarded[:stop], checkpoints)
        if stop < len(forwarded):
            _stop(stage)
    assert caplog.text.count(KEPT) == 2
    assert await _counts(stage, partials) == expected


async def test_a_kill_between_the_store_and_the_log_rebuilds_the_store(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    expected: tuple[Any, ...],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store takes a checkpoint before the log does: the process dies after the store's
    commit and before the log's meta record (an injected fault in the table write). The next
    start finds the store ahead of the log, rebuilds it from the log, and counts exactly."""

    class DiesAtTheMeta(dict[str, bytes]):
        armed = False

        def __setitem__(self, key: str, value: bytes) -> None:
            if self.armed and key == meta_key(0):
                raise SystemExit("killed")  # the records before it are written: cut short
            super().__setitem__(key, value)

    table = DiesAtTheMeta()
    caplog.set_level(logging.INFO, logger="streamer.pipeline.sessions.runtime")
    partials = Recorder()
    stage = _unit_stage(funnel, table, tmp_path, partials)
    half = len(forwarded) // 2
    await _run(stage, forwarded[:half], {100, 200})
    assert stage.runtimes[0].store.meta["log"] == orjson.loads(table[meta_key(0)])["log"]
    table.armed = True
    with pytest.raises(SystemExit):
        await stage.checkpoint(0)
    store_meta = stage.runtimes[0].store.meta
    assert store_meta["log"][1] > orjson.loads(table[meta_key(0)])["log"][1]  # ahead
    _stop(stage)
    table.armed = False
    stage = _unit_stage(funnel, table, tmp_path, partials)
    await _run(stage, forwarded, {half + 50})
    assert KEPT not in caplog.text
    assert await _counts(stage, partials) == expected


async def test_a_store_left_behind_by_another_owner_takes_the_newer_deltas(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    expected: tuple[Any, ...],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Worker A checkpoints and loses the partition; worker B (another disk) restores from
    the log and checkpoints further; A gets it back: it keeps its store and applies B's
    deltas. Then B, whose store A's deltas left behind, gets it back the same way."""
    table: dict[str, bytes] = {}
    caplog.set_level(logging.INFO, logger="streamer.pipeline.sessions.runtime")
    third = len(forwarded) // 4
    partials = Recorder()
    for worker, stop in (("a", third), ("b", 2 * third), ("a", 3 * third), ("b", None)):
        stage = _unit_stage(funnel, table, tmp_path / worker, partials)
        await _run(stage, forwarded[:stop], {stop - 1} if stop else set())
        if stop is not None:
            _stop(stage)
    assert caplog.text.count(KEPT) == 2  # A's and B's second turns
    assert "changed by the 0 newer records" not in caplog.text
    assert await _counts(stage, partials) == expected


def test_the_log_vouches_only_for_a_store_it_holds_every_record_of() -> None:
    funnels = ["users"]
    view = {"log": [0, 5], "generation": 10, "funnels": funnels}
    log = {"log": [0, 5], "generation": 10, "funnels": funnels, "owners": [[10, 0]]}
    assert view_position(view, log, funnels) == 5
    assert view_position(view, {**log, "log": [0, 4]}, funnels) is None  # store ahead
    assert view_position(view, {**log, "log": [6, 9]}, funnels) is None  # compacted since
    assert view_position({}, log, funnels) is None  # no store
    assert view_position(view, {}, funnels) is None  # no log (a new topic)
    assert view_position(view, log, ["users", "other"]) is None  # the funnels changed
    # Another owner wrote after the store's: it restored from position 5 or later, or not.
    later = {"log": [0, 9], "generation": 20, "funnels": funnels}
    assert view_position(view, {**later, "owners": [[10, 0], [20, 5]]}, funnels) == 5
    assert view_position(view, {**later, "owners": [[10, 0], [20, 4]]}, funnels) is None
    assert view_position(view, {**later, "owners": [[20, 5]]}, funnels) is None  # forgotten
    stranger = {**view, "generation": 15}  # another cluster's, or pruned from the owners
    assert view_position(stranger, {**later, "owners": [[10, 0], [20, 5]]}, funnels) is None


def test_reading_the_log_since_a_position_decodes_only_the_newer_deltas() -> None:
    """The deltas before the position are not read (a kept store has them); those of a
    write-out cut short after the live range are found without scanning the table's keys."""

    def delta(unit: str) -> bytes:
        return orjson.dumps({"s": {unit: [1]}, "ds": [], "w": {}, "dw": []})

    table = {
        meta_key(0): orjson.dumps({"log": [0, 2]}),
        delta_key(0, 0): b"not json: never read",
        delta_key(0, 1): delta("u-1"),
        delta_key(0, 2): delta("u-2"),  # cut short: its meta was never written
    }
    stored = read_log(table, 0, {}, since=1)
    assert stored.sessions == {"u-1": [1]}
    assert stored.cut_short == [2]
    assert stored.log_bytes == len(table[delta_key(0, 1)])


async def test_a_compaction_reads_the_units_on_disk_without_filling_the_cache(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    expected: tuple[Any, ...],
    tmp_path: Path,
) -> None:
    """A compaction writes every unit to the log: those on the disk only are taken as stored
    there, not read into the cache (which would hold every unit until the commit); the log it
    leaves restores a task that counts exactly."""
    table: dict[str, bytes] = {}
    partials = Recorder()
    stage = _unit_stage(funnel, table, tmp_path / "a", partials)
    half = len(forwarded) // 2
    await _run(stage, forwarded[:half], {100, 200, half - 1})
    [runtime] = stage.runtimes.values()
    store = runtime.store
    assert store is not None
    units = len(store.sessions)
    assert units > 3 * store.sessions.capacity
    misses, first = store.sessions.misses, runtime.log_next
    runtime.compact_next = True
    await stage.checkpoint(0)
    assert store.sessions.misses == misses
    assert store.sessions.cached <= store.sessions.capacity
    compacted = read_log(table, 0, {"users": 0})
    assert compacted.first == first  # the older deltas are gone
    assert len(compacted.sessions) == units
    _stop(stage)
    stage = _unit_stage(funnel, table, tmp_path / "b", partials)  # a new owner: rebuilt
    await _run(stage, forwarded, set())
    assert await _counts(stage, partials) == expected


async def test_a_rebuilt_store_holds_each_unit_as_the_owner_before_stored_it(
    funnel: tuple[FunnelDefinition, ...], forwarded: list[SourceMessage], tmp_path: Path
) -> None:
    """A new owner rebuilds its store from the log taking each state as the log holds it
    (not decoded and encoded again): the disk holds what the old owner's units encode to."""
    table: dict[str, bytes] = {}
    old = _unit_stage(funnel, table, tmp_path / "a", Recorder())
    await _run(old, forwarded, {100, 300, len(forwarded) - 1})
    units = {unit: state.encodable() for unit, state in old.runtimes[0].task.sessions.items()}
    _stop(old)
    new = _unit_stage(funnel, table, tmp_path / "b", Recorder())
    await _run(new, forwarded[-1:], set())  # restored, then the message skipped (applied)
    store = new.runtimes[0].store
    assert store is not None
    store.close()
    reopened = UnitStore(store.path, cache_units=3)  # nothing cached: every unit from disk
    assert reopened.sessions.encode(sorted(reopened.sessions)) == units
    reopened.close()


def _state(stage: SessionsStage) -> tuple[Any, ...]:
    """Everything a unit task's checkpoint stores: watermark, units, windows, open attempts."""
    task = stage.runtimes[0].task
    return (
        task.watermark_ms,
        {unit: state.to_json() for unit, state in task.sessions.items()},
        {key: counts.to_json() for key, counts in task.windows.items()},
        {key: n for key, n in task.open_sessions.items() if n},
    )


async def _restored(
    funnel: tuple[FunnelDefinition, ...],
    table: dict[str, bytes],
    folder: Path,
    forwarded: list[SourceMessage],
) -> tuple[Any, ...]:
    """The state a unit task restores from ``table`` on ``folder`` (the first message, which
    every checkpoint here reflects, only restores it)."""
    stage = _unit_stage(funnel, table, folder, Recorder())
    await _run(stage, forwarded[:1], set())
    restored = _state(stage)
    _stop(stage)
    return restored


class _DiesAtWrite(dict[str, bytes]):
    """A table whose write number ``dies_at`` (counted from ``arm``) kills the process, as a
    SIGKILL would: what was written before it stays, nothing after it is written."""

    dies_at: int | None = None
    writes = 0

    def arm(self, dies_at: int | None) -> None:
        self.dies_at, self.writes = dies_at, 0

    def _count(self) -> None:
        if self.dies_at is not None:
            if self.writes == self.dies_at:
                raise SystemExit("killed")
            self.writes += 1

    def __setitem__(self, key: str, value: bytes) -> None:
        self._count()
        super().__setitem__(key, value)

    def pop(self, key: str, default: Any = None) -> Any:
        self._count()
        return super().pop(key, default)


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of about 2 units, the producer flushed every 2 of them: a compaction of 22
    units takes several slices."""
    monkeypatch.setattr(checkpoint_log, "DELTA_CHUNK_BYTES", 700)
    monkeypatch.setattr(committer, "COMPACTION_FLUSH_BYTES", 1_400)


async def _compaction_setup(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    folder: Path,
    table: _DiesAtWrite,
) -> tuple[SessionsStage, tuple[Any, ...], dict[str, bytes]]:
    """A unit task halfway, its last 40 messages applied since its last checkpoint: the task,
    its state now (after a compaction) and a copy of the log before it."""
    stage = _unit_stage(funnel, table, folder, Recorder())
    half = len(forwarded) // 2
    await _run(stage, forwarded[:half], {100, 200, half - 41})
    stage.runtimes[0].compact_next = True
    return stage, _state(stage), dict(table)


async def test_a_compaction_of_units_on_disk_is_written_in_bounded_slices(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    tmp_path: Path,
    small_slices: None,
) -> None:
    """A compaction streams every unit from the store's frozen view as parts of one delta,
    each part at most one record's size, the producer flushed whenever 1,400 bytes are
    unflushed; the log it leaves holds exactly the task's state, with the older deltas gone."""
    table = _DiesAtWrite()
    stage, after, _ = await _compaction_setup(funnel, forwarded, tmp_path / "a", table)
    runtime = stage.runtimes[0]
    first, units = runtime.log_next, len(runtime.task.sessions)
    assert units > 20
    unflushed: list[int] = []  # bytes written since the last flush, at each write
    written = {"bytes": 0}
    flushes = {"count": 0}

    class Watched(_DiesAtWrite):
        def __setitem__(self, key: str, value: bytes) -> None:
            written["bytes"] += len(value)
            unflushed.append(written["bytes"])
            super().__setitem__(key, value)

    async def flush() -> None:
        flushes["count"] += 1
        written["bytes"] = 0

    watched = Watched(table)
    stage.committer.table = watched
    stage.committer.flush_producer = flush
    await stage.checkpoint(0)
    parts = sorted(key for key in watched if key.startswith(delta_key(0, first) + ":"))
    sizes = [len(watched[key]) for key in parts]
    assert len(parts) >= 8
    # The head (every window) is a record of its own; the units' at most about 700 bytes.
    assert all(size <= 700 + 400 for size in sizes[1:])  # (one unit may overflow one)
    assert max(unflushed) < 1_400 + max(sizes)  # under the threshold, then one record
    assert flushes["count"] >= len(parts) // 3
    assert orjson.loads(watched[delta_key(0, first)]) == {
        "s": {},
        "ds": [],
        "w": {},
        "dw": [],
        "parts": len(parts),
    }
    assert orjson.loads(watched[meta_key(0)])["log"] == [first, first + 1]
    assert not [key for key in watched if key.startswith("d:") and key < delta_key(0, first)]
    assert not stage.runtimes[0].store.path.with_name("0.frozen").exists()  # closed, deleted
    compacted = read_log(watched, 0, {"users": 0})
    assert len(compacted.sessions) == units
    assert not compacted.stale
    _stop(stage)
    assert await _restored(funnel, dict(watched), tmp_path / "new-owner", forwarded) == after


def test_streamed_records_are_the_records_written_at_once(small_slices: None) -> None:
    """Taking the filled records out as sessions come gives the same records as one call."""
    saved = Checkpoint(windows={(0, 60_000): {"entered": [1]}}, deleted_sessions={"gone"})
    sessions = {f"u-{i}": [[None], "x" * (i % 50), i] for i in range(300)}
    whole = DeltaEncoder(saved, ["users"])
    whole.add(sessions)
    streamed = DeltaEncoder(saved, ["users"])
    records: list[bytes] = []
    for start in range(0, 300, 7):
        streamed.add(dict(list(sessions.items())[start : start + 7]))
        records += streamed.take_done()
    assert len(whole.records()) > 3
    assert records + streamed.records() == whole.records()
    assert b'"ds":["gone"]' in records[0]  # the head, in the first record only
    assert not any(b"gone" in record for record in whole.records()[1:])


async def test_a_kill_at_every_write_of_a_compaction_restores_before_or_after_it(
    funnel: tuple[FunnelDefinition, ...],
    forwarded: list[SourceMessage],
    tmp_path: Path,
    small_slices: None,
) -> None:
    """Killed at each write of a streamed compaction's write-out (every part, its delta, the
    meta, each delete) and restarted on the same disk and by a new owner: the state is the
    one before the compaction's checkpoint until its meta record is written, the one after
    from then on. (The last 40 messages before it were applied since the last checkpoint:
    the two differ.)"""
    table = _DiesAtWrite()
    stage, after, before_log = await _compaction_setup(funnel, forwarded, tmp_path / "x", table)
    first = stage.runtimes[0].log_next
    table.arm(None)
    await stage.checkpoint(0)
    _stop(stage)
    keys = list(table)
    writes = len([key for key in keys if key.startswith(delta_key(0, first))]) + 1  # the meta
    writes += len([key for key in before_log if key.startswith("d:")])  # the deletes
    before = await _restored(funnel, before_log, tmp_path / "before", forwarded)
    assert before != after
    meta_write = writes - len([key for key in before_log if key.startswith("d:")]) - 1
    for dies_at in range(writes + 1):
        table = _DiesAtWrite()
        folder = tmp_path / f"killed-{dies_at}"
        stage, _, _ = await _compaction_setup(funnel, forwarded, folder, table)
        table.arm(dies_at)
        if dies_at < writes:
            with pytest.raises(SystemExit):
                await stage.checkpoint(0)
        else:
            await stage.checkpoint(0)  # not killed: the whole write-out
        _stop(stage)
        table.arm(None)
        expected = before if dies_at <= meta_write else after
        assert await _restored(funnel, table, folder, forwarded) == expected, dies_at
        assert await _restored(funnel, table, tmp_path / f"new-{dies_at}", forwarded) == expected
        again = await _restored(funnel, table, folder, forwarded)  # leftovers dropped or kept
        assert again == expected, dies_at
