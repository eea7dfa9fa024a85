"""Open units on disk (streamer/pipeline/sessions/unit_store.py): the cache's eviction and
write-back, deletions, the wake index, and what a reopened store holds (a crash loses exactly
what no commit stored)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer.funnel.lifecycle import DAY_MS, Lifecycle, UserRecord
from streamer.funnel.session import NEVER, CompiledFunnel, Progress
from streamer.funnel.task import SessionState, Task
from streamer.pipeline.sessions.unit_store import UnitStore
from tests.oracle.lifecycle import lifecycle_figures
from tests.support.core_run import stored
from tests.support.traffic import generate_lifecycle
from tests.unit.test_core_properties import END, FUNNEL, LATENESS_MS, arrival, sessions
from tests.unit.test_lifecycle import START_MS as LIFECYCLE_START_MS
from tests.unit.test_lifecycle import _declaration as _lifecycle_declaration
from tests.unit.test_lifecycle import _figures as _lifecycle_figures
from tests.unit.test_lifecycle import _stored as _lifecycle_event


def _state(unit_id: str, last_event_ms: int, wake_ms: int = NEVER) -> SessionState:
    state = SessionState(unit_id, [Progress(), Progress()], user_id=f"u-{unit_id}")
    state.last_event_ms = last_event_ms
    state.wake_ms = wake_ms
    return state


def _commit(store: UnitStore, ids: list[str], deleted: Sequence[str] = (), **meta: int) -> None:
    store.commit({unit_id: store.sessions[unit_id].encodable() for unit_id in ids}, deleted, meta)


def _due(store: UnitStore, before_ms: int) -> list[tuple[int, str]]:
    found = []
    while (entry := store.wakes.pop_due(before_ms)) is not None:
        found.append(entry)
    return found


def test_changed_units_stay_cached_until_a_commit_stores_them(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=2)
    for n in range(5):
        store.sessions[f"s{n}"] = _state(f"s{n}", 1000 + n)
    # Nothing is on disk yet: every unit is pinned by the task's dirty set.
    assert store.sessions.evict(pinned={f"s{n}" for n in range(5)}) == 0
    assert store.sessions.cached == 5

    _commit(store, [f"s{n}" for n in range(5)], log=7)
    assert store.sessions.cached == 2  # the two most recently used
    assert len(store.sessions) == 5

    misses = store.sessions.misses
    reloaded = store.sessions["s0"]  # evicted: read back from the disk
    assert store.sessions.misses == misses + 1
    assert reloaded.to_json() == _state("s0", 1000).to_json()
    assert store.sessions["s4"].last_event_ms == 1004
    assert store.sessions.misses == misses + 1  # s4 was still cached


def test_eviction_skips_pinned_units_and_takes_the_least_recently_used(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=2)
    for n in range(4):
        store.sessions[f"s{n}"] = _state(f"s{n}", n)
    _commit(store, [f"s{n}" for n in range(4)])  # cache now s2, s3
    store.sessions["s0"].last_event_ms = 99  # s0 read back and changed: dirty
    store.sessions["s1"]  # read: most recent
    assert store.sessions.evict(pinned={"s0"}) == 2  # s2 and s3 go, s0 is kept
    assert store.sessions["s0"].last_event_ms == 99
    store.sessions["s2"]  # read back
    assert store.sessions.misses >= 2


def test_deleted_units_are_gone_before_and_after_the_commit(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=1)
    for n in range(3):
        store.sessions[f"s{n}"] = _state(f"s{n}", n)
    _commit(store, ["s0", "s1", "s2"])
    del store.sessions["s0"]  # evicted, stored: deleted from the disk at the next commit
    with pytest.raises(KeyError):
        store.sessions["s0"]
    assert "s0" not in store.sessions
    assert len(store.sessions) == 2
    assert sorted(store.sessions) == ["s1", "s2"]
    _commit(store, [], ["s0"])
    assert store.sessions.get("s0") is None
    with pytest.raises(KeyError):
        del store.sessions["s0"]
    store.sessions["s0"] = _state("s0", 5)  # a unit may come back
    assert len(store.sessions) == 3


def test_a_reopened_store_holds_what_the_last_commit_stored(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=10)
    store.sessions["a"] = _state("a", 1, wake_ms=5000)
    store.wakes.move("a", NEVER, 5000)
    store.sessions["b"] = _state("b", 2)
    _commit(store, ["a", "b"], log=3, watermark=2000)
    store.sessions["a"].last_event_ms = 50  # changed, never committed: a crash loses it
    store.sessions["c"] = _state("c", 3)
    store.wakes.move("c", NEVER, 100)
    store.close()

    again = UnitStore(tmp_path / "p0", cache_units=10)
    assert again.meta == {"log": 3, "watermark": 2000, "units": 2}
    assert sorted(again.sessions) == ["a", "b"]
    assert again.sessions["a"].last_event_ms == 1
    assert again.sessions["a"].wake_ms == 5000  # kept beside the state
    assert again.sessions.get("c") is None
    assert _due(again, 10_000) == [(5000, "a")]  # c's wake was never stored


def test_the_wake_index_merges_stored_and_new_entries_in_time_order(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=10)
    for unit_id, wake in (("a", 300), ("b", 100), ("c", 200)):
        store.sessions[unit_id] = _state(unit_id, 0, wake_ms=wake)
        store.wakes.move(unit_id, NEVER, wake)
    _commit(store, ["a", "b", "c"])
    store.wakes.move("a", 300, 150)  # moved earlier, not committed
    store.sessions["a"].wake_ms = 150
    store.sessions["d"] = _state("d", 0, wake_ms=50)
    store.wakes.move("d", NEVER, 50)
    assert _due(store, 160) == [(50, "d"), (100, "b"), (150, "a")]
    assert _due(store, 160) == []  # taken out
    assert _due(store, 1000) == [(200, "c")]  # a's old entry at 300 was removed
    _commit(store, ["a", "d"])
    store.close()
    assert _due(UnitStore(tmp_path / "p0", cache_units=10), 1000) == []


_ops = st.lists(
    st.tuples(
        st.sampled_from(["set", "change", "delete", "read", "commit"]),
        st.integers(0, 7),
        st.integers(0, 10_000),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_ops, capacity=st.integers(1, 4))
def test_the_store_agrees_with_a_dict_through_commits_and_reopening(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int]], capacity: int
) -> None:
    """A model: the live dict (what the task sees) and the committed dict (what a reopened
    store must hold). The cache never changes either, whatever its size."""
    path = tmp_path_factory.mktemp("store") / "p0"
    store = UnitStore(path, cache_units=capacity)
    live: dict[str, int] = {}
    committed: dict[str, int] = {}
    dirty: set[str] = set()
    deleted: set[str] = set()
    for op, n, value in ops:
        unit_id = f"s{n}"
        if op == "set":
            store.sessions[unit_id] = _state(unit_id, value)
            live[unit_id] = value
            dirty.add(unit_id)
            deleted.discard(unit_id)
        elif op == "change" and unit_id in live:
            store.sessions[unit_id].last_event_ms = value
            live[unit_id] = value
            dirty.add(unit_id)
        elif op == "delete" and unit_id in live:
            del store.sessions[unit_id]
            del live[unit_id]
            dirty.discard(unit_id)
            deleted.add(unit_id)
        elif op == "read":
            state = store.sessions.get(unit_id)
            assert (state.last_event_ms if state else None) == live.get(unit_id)
            store.sessions.evict(pinned=dirty)
        elif op == "commit":
            _commit(store, sorted(dirty), sorted(deleted))
            committed = dict(live)
            dirty, deleted = set(), set()
        assert len(store.sessions) == len(live)
    assert {u: store.sessions[u].last_event_ms for u in store.sessions} == live
    store.close()
    reopened = UnitStore(path, cache_units=capacity)
    assert {u: reopened.sessions[u].last_event_ms for u in reopened.sessions} == committed
    reopened.close()


def _published(task: Task) -> list[Any]:
    out = task.drain()
    return [p.to_json() for p in out.partials] + list(out.abandonments)


@given(
    events=sessions(),
    seed=st.integers(0, 1000),
    capacity=st.integers(1, 3),
    commits=st.sets(st.integers(0, 60), max_size=8),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_task_with_its_sessions_on_disk_counts_as_one_in_memory(
    tmp_path_factory: pytest.TempPathFactory,
    events: list[dict[str, Any]],
    seed: int,
    capacity: int,
    commits: set[int],
) -> None:
    """The same arrival through a task in memory and one whose sessions and wakes are on disk
    behind a cache of 1-3 sessions, checkpoints committed at random points (then the cache
    evicts): every drain publishes the same, and the sessions end the same."""
    compiled = (CompiledFunnel(FUNNEL),)
    store = UnitStore(tmp_path_factory.mktemp("task") / "p0", cache_units=capacity)
    in_memory = Task(compiled, 0, retention_ms=20 * 60_000)
    on_disk = Task(
        compiled, 0, retention_ms=20 * 60_000, sessions=store.sessions, wakes=store.wakes
    )
    front = -(2**62)
    for index, event in enumerate([*arrival(events, seed), None]):
        if event is not None:
            front = max(front, event["at_ms"])
            watermark = front - LATENESS_MS
        else:
            watermark = END  # every session decided, then forgotten
        for task in (in_memory, on_disk):
            if event is not None:
                task.offer(event["session_id"], stored(event))
            task.advance(watermark)
        assert _published(on_disk) == _published(in_memory), f"after event {index}"
        if index in commits or event is None:
            in_memory.checkpoint()
            saved = on_disk.checkpoint()
            store.commit(saved.sessions, saved.deleted_sessions, {"event": index})
            assert store.sessions.cached <= capacity
    assert {k: v.to_json() for k, v in on_disk.sessions.items()} == {
        k: v.to_json() for k, v in in_memory.sessions.items()
    }
    store.close()


def test_a_new_unit_is_looked_up_on_the_disk_once(tmp_path: Path) -> None:
    """A task looks a unit up, finds none and sets it: one read of the disk, not two."""
    store = UnitStore(tmp_path / "p0", cache_units=1)
    for n in range(3):
        store.sessions[f"s{n}"] = _state(f"s{n}", n)
    _commit(store, ["s0", "s1", "s2"])
    reads = store.sessions.disk_reads
    assert store.sessions.get("new") is None
    store.sessions["new"] = _state("new", 9)
    assert store.sessions.disk_reads == reads + 1
    assert len(store.sessions) == 4
    # Another lookup in between: the set asks the disk again, and counts right.
    assert store.sessions.get("a") is None
    assert store.sessions.get("b") is None
    store.sessions["a"] = _state("a", 1)
    assert store.sessions.disk_reads == reads + 4
    store.sessions["s0"] = _state("s0", 7)  # stored, evicted: replaced, not a new unit
    assert len(store.sessions) == 5


def test_a_task_offered_a_new_unit_reads_the_disk_once(tmp_path: Path) -> None:
    compiled = (CompiledFunnel(FUNNEL),)
    store = UnitStore(tmp_path / "p0", cache_units=2)
    task = Task(compiled, 0, retention_ms=20 * 60_000, sessions=store.sessions, wakes=store.wakes)
    event = {"session_id": "s-1", "event_id": "e-1", "event_type": "page_view", "at_ms": 1000}
    task.offer("s-1", stored(event))
    assert store.sessions.disk_reads == 1
    assert len(store.sessions) == 1


def test_watermark_steps_with_nothing_stored_due_do_not_scan_the_disk_again(
    tmp_path: Path,
) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=10)
    for n in range(5):
        store.sessions[f"s{n}"] = _state(f"s{n}", 0, wake_ms=1000 + n)
        store.wakes.move(f"s{n}", NEVER, 1000 + n)
    _commit(store, [f"s{n}" for n in range(5)])
    for before in range(100, 1000, 100):  # steps with nothing due: one scan in all
        assert _due(store, before) == []
    assert store.wakes.scans == 1
    assert _due(store, 1002) == [(1000, "s0"), (1001, "s1")]
    assert _due(store, 1002) == []
    assert store.wakes.scans == 2  # from where the first stopped
    store.sessions["s9"] = _state("s9", 0, wake_ms=500)
    store.wakes.move("s9", NEVER, 500)  # not stored yet: found in memory, no scan
    assert _due(store, 1002) == [(500, "s9")]
    assert store.wakes.scans == 2
    _commit(store, ["s9"])  # the disk changed: the next step scans from the start
    assert _due(store, 1003) == [(1002, "s2")]
    assert store.wakes.scans == 3
    assert _due(store, 10_000) == [(1003, "s3"), (1004, "s4")]


def test_the_scan_resumes_where_a_full_load_stopped(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=3000)
    ids = [f"s{n:05d}" for n in range(2500)]  # more than one scan loads (1024)
    for n, unit_id in enumerate(ids):
        store.sessions[unit_id] = _state(unit_id, 0, wake_ms=10 + n)
        store.wakes.move(unit_id, NEVER, 10 + n)
    _commit(store, ids)
    assert _due(store, 10 + len(ids)) == [(10 + n, unit_id) for n, unit_id in enumerate(ids)]
    assert store.wakes.scans == 3


def test_encoding_units_for_a_compaction_leaves_the_cache_as_it_was(tmp_path: Path) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=2)
    states = {f"s{n}": _state(f"s{n}", n, wake_ms=100 + n) for n in range(6)}
    for unit_id, state in states.items():
        store.sessions[unit_id] = state
    _commit(store, list(states))
    store.sessions["s5"].last_event_ms = 55  # cached, changed: encoded as it is now
    del store.sessions["s0"]
    cached, misses = store.sessions.cached, store.sessions.misses
    encoded = store.sessions.encode(sorted(store.sessions))
    assert encoded == {
        unit_id: state.encodable() for unit_id, state in states.items() if unit_id != "s0"
    }
    assert encoded["s5"] == store.sessions["s5"].encodable()
    assert (store.sessions.cached, store.sessions.misses) == (cached, misses)
    with pytest.raises(KeyError):
        store.sessions.encode(["s0"])


# --- lifecycle records: a key space of their own -------------------------------------------


def test_lifecycle_records_outlive_their_unit_and_reach_the_disk_only_by_a_commit(
    tmp_path: Path,
) -> None:
    store = UnitStore(tmp_path / "p0", cache_units=2)
    store.sessions["ana"] = _state("ana", 1000)
    users = store.lifecycle_users("lifecycle")
    users["ana"] = UserRecord(1000, "search", orders=1, first_order_ms=2000, last_order_ms=2000)
    store.lifecycle_users("other_funnel")["ana"] = UserRecord(1000, "email")
    _commit(store, ["ana"], log=1)

    # The unit is forgotten after its retention; its lifecycle record is not.
    del store.sessions["ana"]
    users["ben"] = UserRecord(5000, "social")  # set after the last commit
    store.commit({}, ["ana"], {"log": 2})
    users["cy"] = UserRecord(9000, "direct")  # never committed: a crash loses it
    store.close()

    reopened = UnitStore(tmp_path / "p0", cache_units=2)
    assert "ana" not in reopened.sessions
    found = reopened.lifecycle_users("lifecycle")
    assert sorted(found) == ["ana", "ben"]
    assert found["ana"].to_json() == [1000, "search", 1, 2000, 0, 0, 2000, False]
    assert reopened.lifecycle_users("other_funnel")["ana"].channel == "email"
    assert list(reopened.lifecycle_users("no_such_funnel")) == []


@pytest.mark.parametrize("seed", [1, 2])
def test_a_lifecycle_over_the_store_counts_as_one_in_memory_through_commits_and_reopens(
    tmp_path: Path, seed: int
) -> None:
    """Records behind a cache of 3, committed at random points with the figures beside them,
    the store reopened after some commits (the restart path): the same figures as a core
    keeping every record in a dict, and the SQL oracle's at the end."""
    declaration = _lifecycle_declaration()
    rng = random.Random(seed)
    events = generate_lifecycle(seed=seed, users=150, days=120, start_ms=LIFECYCLE_START_MS)
    events.sort(key=lambda e: (e["at_ms"], rng.random()))
    in_memory = Lifecycle(declaration)
    store = UnitStore(tmp_path / "p0", cache_units=3)
    on_disk = Lifecycle(declaration, store.lifecycle_users("lifecycle"))
    for index, event in enumerate(events):
        stored_event = _lifecycle_event(event, declaration)
        for core in (in_memory, on_disk):
            core.advance(event["at_ms"])
            core.apply(event["unit"], stored_event)
        if rng.random() < 0.05:
            store.commit({}, (), {"log": index, "lifecycle": on_disk.to_json()})
            if rng.random() < 0.3:
                store.close()
                store = UnitStore(tmp_path / "p0", cache_units=3)
                on_disk = Lifecycle(declaration, store.lifecycle_users("lifecycle"))
                on_disk.restore(store.meta["lifecycle"])
        assert len(store.lifecycle_users("lifecycle")._cache) <= 3
    end = events[-1]["at_ms"] + 200 * DAY_MS
    for core in (in_memory, on_disk):
        core.advance(end)
    assert _lifecycle_figures(on_disk) == _lifecycle_figures(in_memory)
    assert _lifecycle_figures(on_disk) == lifecycle_figures(events, declaration, end)
    assert sorted(store.lifecycle_users("lifecycle")) == sorted(in_memory.users)
