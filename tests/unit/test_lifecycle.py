"""The lifecycle core (streamer/funnel/lifecycle.py) against the SQL oracle
(tests/oracle/lifecycle.py, written from docs/lifecycle.md) on generated months of users, at
watermarks inside and past the data, through a store and restore; docs/lifecycle.md's worked
example; the declaration's errors naming file, line and field."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamer.funnel.definition import (
    FunnelDefinitionError,
    LifecycleDeclaration,
    load_funnel,
    stored_field,
)
from streamer.funnel.lifecycle import DAY_MS, Lifecycle, UserRecord, iso_week
from streamer.funnel.session import StoredEvent
from tests.oracle.lifecycle import lifecycle_figures
from tests.support.traffic import generate_lifecycle

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy/funnels/lifecycle/lifecycle.yaml"
# A Thursday, so the first cohort week starts before the data.
START_MS = int(datetime(2026, 1, 1, 9, 30, tzinfo=UTC).timestamp() * 1000)


def _declaration() -> LifecycleDeclaration:
    found = load_funnel(SHIPPED).lifecycle
    assert found is not None
    return found


def _stored(event: dict[str, Any], declaration: LifecycleDeclaration) -> StoredEvent:
    """The event as the worker's decoder stores it: the fields the lifecycle reads, flattened."""
    fields: dict[str, Any] = {}
    for source in (declaration.value_from, declaration.channel_from):
        kind, _, name = source.partition(".")
        holder = event["properties"] if kind == "property" else event["context"]
        if name in holder:
            fields[stored_field(source)] = holder[name]
    return StoredEvent(event["at_ms"], event["event_id"], event["event_type"], fields)


def _figures(core: Lifecycle) -> dict[str, Any]:
    """The core's figures in the oracle's shape."""
    horizons = range(len(core.declaration.horizon_days))
    return {
        "acquisition": {
            key: (
                c.users,
                c.buyers,
                tuple(c.value_cents),
                tuple(core.value_final(key[0], i) for i in horizons),
            )
            for key, c in core.acquisition.items()
            if c.users
        },
        "buyers": {
            week: (
                c.buyers,
                tuple(c.repeaters),
                tuple(core.repeat_final(week, i) for i in horizons),
                c.advocates,
                c.churned,
            )
            for week, c in core.buyer_cohorts.items()
        },
        "first_purchase": {
            channel: (tuple(h.buckets), h.sum_ms)
            for channel, h in core.first_purchase.items()
            if h.count
        },
    }


def _restored(core: Lifecycle) -> Lifecycle:
    """A new core from what a checkpoint stores: the figures and every user's record as JSON."""
    again = Lifecycle(
        core.declaration,
        {
            unit: UserRecord.from_json(orjson.loads(orjson.dumps(r.to_json())))
            for unit, r in core.users.items()
        },
    )
    again.restore(orjson.loads(orjson.dumps(core.to_json())))
    return again


def _diff(core: dict[str, Any], sql: dict[str, Any]) -> list[str]:
    out = []
    for part in ("acquisition", "buyers", "first_purchase"):
        for key in sorted(set(core[part]) | set(sql[part]), key=str):
            if core[part].get(key) != sql[part].get(key):
                out.append(f"{part} {key}: core {core[part].get(key)} sql {sql[part].get(key)}")
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_figure_equals_the_oracle_over_months(seed: int) -> None:
    declaration = _declaration()
    rng = random.Random(seed)
    events = generate_lifecycle(seed=seed, users=1000, days=150, start_ms=START_MS)
    # Event-time order, an instant's events in any order (as a unit task may release them).
    events.sort(key=lambda e: (e["at_ms"], rng.random()))
    last_ms = events[-1]["at_ms"]
    cuts = sorted({START_MS + rng.randrange(last_ms - START_MS) for _ in range(4)})
    cuts.append(last_ms + 200 * DAY_MS)  # past every horizon: every figure final
    core = Lifecycle(declaration)
    position = 0
    compared = 0
    for cut in cuts:
        while position < len(events) and events[position]["at_ms"] < cut:
            event = events[position]
            core.apply(event["unit"], _stored(event, declaration))
            position += 1
        core.advance(cut)
        core = _restored(core)  # a store and restore at every cut changes nothing
        sql = lifecycle_figures(events, declaration, cut)
        assert _diff(_figures(core), sql) == [], f"at {cut}"
        compared += 1
    final = _figures(core)
    assert all(all(flags) for *_, flags in final["acquisition"].values())
    assert compared == len(cuts)
    # The data reaches every kind of figure (else the comparison proves little).
    buyers = final["buyers"].values()
    assert sum(b[0] for b in buyers) > 200
    assert all(sum(b[1][i] for b in buyers) > 0 for i in range(3))
    assert sum(b[3] for b in buyers) > 0
    assert sum(b[4] for b in buyers) > 0
    assert {"other", "unknown", "search"} <= {ch for _, ch in final["acquisition"]}


def _event(at_ms: int, event_type: str, **fields: Any) -> StoredEvent:
    return StoredEvent(at_ms, f"{event_type}-{at_ms}-{sorted(fields.items())}", event_type, fields)


def worked_example() -> tuple[int, list[tuple[str, StoredEvent]]]:
    """docs/lifecycle.md, "A worked example": its week's Monday and its users' events."""
    monday = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
    hour = 3_600_000
    feed = [
        # ana: first visit through search, orders 2 h later and again exactly 30 days after
        ("ana", _event(monday, "page_view", **{"context.channel": "search"})),
        ("ana", _event(monday + 2 * hour, "order_placed", value=40.0)),
        ("ana", _event(monday + 2 * hour + 30 * DAY_MS, "order_placed", value=10.0)),
        # ben: first instant names two channels (search wins: the smallest), orders 1 ms
        # past 30 days after his first, reviews at his first order's instant (not counted)
        ("ben", _event(monday + hour, "page_view", **{"context.channel": "social"})),
        ("ben", _event(monday + hour, "page_view", **{"context.channel": "search"})),
        ("ben", _event(monday + 3 * DAY_MS, "order_placed", value=25.5)),
        ("ben", _event(monday + 3 * DAY_MS, "review_submitted")),
        ("ben", _event(monday + 33 * DAY_MS + 1, "order_placed", value="n/a")),
        # cy: visits through a channel not declared, never orders
        ("cy", _event(monday + DAY_MS, "page_view", **{"context.channel": "tv"})),
    ]
    return monday, feed


def test_the_worked_example_of_docs_lifecycle() -> None:
    """docs/lifecycle.md, "A worked example": the numbers the page states."""
    declaration = _declaration()
    monday, feed = worked_example()
    core = Lifecycle(declaration)
    for unit, event in feed:
        core.apply(unit, event)
    core.advance(monday + 200 * DAY_MS)
    week = (monday, "search")
    assert iso_week(monday) == "2026-W10"
    assert core.acquisition[week].users == 2
    assert core.acquisition[week].buyers == 2
    # value within 30 days of the first visit: ana 40 (her 10 is 30 d 2 h after), ben 25.50
    assert core.acquisition[week].value_cents == [6550, 7550, 7550]
    assert core.acquisition[(monday, "other")].users == 1
    cohort = core.buyer_cohorts[monday]
    assert (cohort.buyers, cohort.repeaters) == (2, [1, 2, 2])
    assert (cohort.advocates, cohort.churned) == (0, 2)
    assert core.first_purchase["search"].buckets[:4] == [0, 1, 0, 1]  # 2 h and 3 d
    # The same numbers from SQL.
    rows = [
        {
            "unit": unit,
            "event_type": e.event_type,
            "at_ms": e.at_ms,
            "properties": {k: v for k, v in e.fields.items() if "." not in k},
            "context": {k.split(".", 1)[1]: v for k, v in e.fields.items() if "." in k},
        }
        for unit, e in feed
    ]
    assert _diff(_figures(core), lifecycle_figures(rows, declaration, monday + 200 * DAY_MS)) == []


def test_churn_counts_at_its_day_and_returns_when_the_buyer_orders_again() -> None:
    declaration = _declaration()  # churn_days 60
    monday = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)
    core = Lifecycle(declaration)
    core.apply("ana", _event(monday + 5_000, "order_placed", value=1))
    churn_day_ms = monday + 61 * DAY_MS  # the end of day 60 after the order's day
    core.advance(churn_day_ms - 1)
    assert core.buyer_cohorts[monday].churned == 0
    core.advance(churn_day_ms)
    assert core.buyer_cohorts[monday].churned == 1
    core.apply("ana", _event(churn_day_ms + 10, "order_placed", value=1))
    assert core.buyer_cohorts[monday].churned == 0
    assert core.churn_due == {(monday, monday // DAY_MS + 61 + 61): 1}


def test_a_user_record_is_small() -> None:
    record = UserRecord(
        2**42, "a-channel-of-sixteen", 120, 2**42, 9_999_999, 99_999_999, 2**42, True
    )
    assert len(orjson.dumps(record.to_json())) <= 110


@pytest.mark.parametrize(
    ("follows", "text", "line", "message"),
    [
        ("session", "lifecycle:\n  channels: [a]\n", 8, "lifecycle: a lifecycle counts users"),
        ("user", "lifecycle:\n  channels: [search, other]\n", 9, "lifecycle.channels"),
        (
            "user",
            "lifecycle:\n  channels: [a]\n  horizon_days: [60, 30]\n",
            10,
            "lifecycle.horizon_days: horizons must rise",
        ),
        ("user", "lifecycle:\n  channels: [a]\n  churn_days: 0\n", 10, "lifecycle.churn_days"),
        (
            "user",
            "lifecycle:\n  channels: [a]\n  advocacy: [page_view]\n",
            10,
            "lifecycle.advocacy.0: 'page_view' is a visit",
        ),
    ],
)
def test_declaration_errors_name_the_file_line_and_field(
    tmp_path: Path, follows: str, text: str, line: int, message: str
) -> None:
    head = (
        f"name: life\nfollows: {follows}\nconversion_window: 90d\nwindow: 1d\nstages:\n"
        "  - {name: visit, event_type: page_view}\n  - {name: order, event_type: order_placed}\n"
    )
    path = tmp_path / "life.yaml"
    path.write_text(head + text)
    with pytest.raises(FunnelDefinitionError) as caught:
        load_funnel(path)
    assert f"{path}:{line}: {message}" in str(caught.value)


def test_off_unless_declared() -> None:
    assert all(f.lifecycle is None for f in _default_funnels())


def _default_funnels() -> list[Any]:
    from streamer.funnel.definition import load_funnels

    return list(load_funnels([ROOT / "deploy/funnels"]))


def test_a_worker_given_the_shipped_lifecycle_runs_it_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The figures are published now (tests/unit/test_lifecycle_publish.py): the start-up
    warning that said they were not is gone."""
    from streamer.app import worker_events
    from streamer.settings import Settings

    settings = Settings(funnels=(ROOT / "deploy/funnels/lifecycle",))
    with caplog.at_level("WARNING", logger="streamer.app"):
        funnels, _ = worker_events(settings)
    assert [f.lifecycle is not None for f in funnels] == [True]
    assert "lifecycle" not in caplog.text


@pytest.mark.parametrize("retention_days", [90, 1])
def test_a_unit_task_feeds_its_users_events_to_the_lifecycle_through_restores(
    tmp_path: Path, retention_days: int
) -> None:
    """The shipped lifecycle funnel in a unit task (streamer.funnel.task.Task), events offered
    by user and released by watermark steps, the task restored from its checkpoints at random
    steps (some on a unit store on disk, behind a cache of 5 records): every figure equals the
    SQL oracle's. With a retention of 1 day the task forgets users long before their repeat
    orders and churn: their lifecycle records, kept apart, must not be forgotten with them."""
    from streamer.funnel.session import CompiledFunnel
    from streamer.funnel.task import Checkpoint, Task
    from streamer.pipeline.sessions.unit_store import UnitStore

    definition = load_funnel(SHIPPED)
    declaration = _declaration()
    funnels = (CompiledFunnel(definition),)
    rng = random.Random(retention_days)
    events = generate_lifecycle(seed=5, users=300, days=120, start_ms=START_MS)
    events.sort(key=lambda e: (e["at_ms"], rng.random()))
    store = UnitStore(tmp_path / "p0", cache_units=5)

    def new_task(on_disk: bool) -> Task:
        return Task(
            funnels,
            0,
            retention_ms=retention_days * DAY_MS,
            lifecycle_users=store.lifecycle_users if on_disk else None,
        )

    # What a checkpoint log would hold: the latest figures, every record as last stored.
    log_figures: dict[str, Any] = {}
    log_users: dict[str, dict[str, list[Any]]] = {}

    def stored_in_log(saved: Checkpoint) -> None:
        log_figures.update(orjson.loads(orjson.dumps(saved.lifecycle)))
        for name, records in orjson.loads(orjson.dumps(saved.lifecycle_users)).items():
            log_users.setdefault(name, {}).update(records)

    task, was_on_disk = new_task(False), False
    restores = forgotten = 0
    steps = 0
    position = 0
    while position < len(events):
        watermark = events[position]["at_ms"] + rng.randrange(DAY_MS)
        while position < len(events) and events[position]["at_ms"] < watermark:
            event = events[position]
            task.offer(event["unit"], _stored(event, declaration))
            position += 1
        task.advance(watermark)
        forgotten = max(forgotten, len({e["unit"] for e in events[:position]}) - len(task.sessions))
        steps += 1
        if rng.random() < 0.2:
            saved = task.checkpoint(full=rng.random() < 0.2)
            stored_in_log(saved)
            store.commit({}, (), {})
            if rng.random() < 0.5:
                on_disk = rng.random() < 0.5
                sessions = {u: s.encodable() for u, s in task.sessions.items()}
                windows = {k: c.to_json() for k, c in task.windows.items()}
                # The store holds the records as of its last commit only if a task on disk
                # made them; else they come from the log, as when a worker rebuilds its store.
                from_log = not (on_disk and was_on_disk)
                task, was_on_disk = new_task(on_disk), on_disk
                task.restore(
                    saved.watermark_ms, orjson.loads(orjson.dumps(sessions)).items(), windows
                )
                task.restore_lifecycle(log_figures, log_users if from_log else {})
                restores += 1
    end = events[-1]["at_ms"] + 200 * DAY_MS
    task.advance(end)
    (core,) = task.lifecycles.values()
    sql = lifecycle_figures(events, declaration, end)
    assert _diff(_figures(core), sql) == []
    assert restores >= 3
    if retention_days == 1:
        assert forgotten > 100  # users forgotten by the task, still counted by the lifecycle


def test_the_checkpoint_log_restores_the_lifecycle_with_and_without_its_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A unit task's checkpoints as the committer writes them (delta records in the state
    table, user records in records of their own: a small chunk size makes many), restored by
    ``restore_runtime`` from the log alone, into a store rebuilt from it, and into a store the
    log vouches for that takes only the newer deltas: each time the figures of the task never
    stopped, and the SQL oracle's at the end."""
    from streamer.funnel.session import CompiledFunnel
    from streamer.funnel.task import Task
    from streamer.pipeline.sessions import checkpoint_log
    from streamer.pipeline.sessions.runtime import restore_runtime
    from streamer.pipeline.sessions.unit_store import UnitStore

    declaration = _declaration()
    funnels = (CompiledFunnel(load_funnel(SHIPPED)),)
    names = ["lifecycle"]
    rng = random.Random(8)
    events = generate_lifecycle(seed=8, users=200, days=100, start_ms=START_MS)
    events.sort(key=lambda e: (e["at_ms"], rng.random()))
    task = Task(funnels, 0, retention_ms=DAY_MS)
    table: dict[str, bytes] = {}
    seq = 0

    def restored(generation: int, store: UnitStore | None, **meta: Any) -> Lifecycle:
        table[checkpoint_log.meta_key(0)] = orjson.dumps(
            {"log": [0, seq], "generation": generation, "funnels": names, **meta}
        )
        runtime, _ = restore_runtime(
            table, 0, funnels, retention_ms=DAY_MS, topics=("units",), store=store
        )
        (core,) = runtime.task.lifecycles.values()
        return core

    store = UnitStore(tmp_path / "p0", cache_units=7)
    small = 2_000  # bytes: user records spread over many delta records
    position = 0
    halfway = len(events) // 2
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_log, "DELTA_CHUNK_BYTES", small)
        while position < len(events):
            watermark = events[position]["at_ms"] + rng.randrange(3 * DAY_MS)
            while position < len(events) and events[position]["at_ms"] < watermark:
                event = events[position]
                task.offer(event["unit"], _stored(event, declaration))
                position += 1
            task.advance(watermark)
            for record in checkpoint_log.encode_delta(task.checkpoint(), names):
                table[checkpoint_log.delta_key(0, seq)] = record
                seq += 1
            if position >= halfway and not store.meta:
                # A restore into an empty store: rebuilt from the log (and committed).
                assert _figures(restored(7, store)) == _figures(task.lifecycles["lifecycle"])
                assert store.meta["log"] == [0, seq]
            if rng.random() < 0.1:  # from the log alone, into memory
                assert _figures(restored(7, None)) == _figures(task.lifecycles["lifecycle"])
    (core,) = task.lifecycles.values()
    assert seq > 2 * len(events) // 1000
    # Another owner wrote the rest of the log after the store's owner: the store is kept.
    caplog.set_level("INFO", logger="streamer.pipeline.sessions.runtime")
    kept = restored(9, store, owners=[[7, 0], [9, store.meta["log"][1]]])
    assert "units on disk kept" in caplog.text
    assert _figures(kept) == _figures(core)
    end = events[-1]["at_ms"] + 200 * DAY_MS
    for each in (kept, core):
        each.advance(end)
    assert _diff(_figures(kept), lifecycle_figures(events, declaration, end)) == []
