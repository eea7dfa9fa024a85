"""User funnels through the pipeline: a session task forwards each released event to its unit
(docs/decisions/0008-user-funnels-pipeline.md). The numbering it gives them is what lets the
unit side skip copies after a restart, so it must not depend on how the watermark moved, nor on
a checkpoint and restore in between; the units are the identity rules'."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamer.decode import DecodeLimits
from streamer.funnel.definition import load_funnel
from streamer.funnel.session import StoredEvent
from streamer.funnel.task import Task, UnitEvent
from streamer.metrics import Metrics
from streamer.pipeline.messages import UNIT_HEADER, SourceMessage
from streamer.pipeline.sessions import SessionsStage
from streamer.pipeline.units import UNIT_SOURCE, UnitForwarder
from tests.support.core_run import units
from tests.support.stage_harness import NOW, NOW_MS, Recorder, valid_event

SOURCES = ("clickstream", "checkout")

RETENTION_MS = 10**9


def _events() -> st.SearchStrategy[list[dict[str, Any]]]:
    event = st.fixed_dictionaries(
        {
            "session_id": st.sampled_from(["s1", "s2", "s3"]),
            "at_ms": st.integers(0, 30),
            "user_id": st.sampled_from([None, None, "u", "v"]),
            "event_type": st.sampled_from(["page_view", "add_to_cart"]),
        }
    )
    return st.lists(event, min_size=1, max_size=25).map(
        lambda found: [{**e, "event_id": f"e{i}"} for i, e in enumerate(found)]
    )


def _forwarded(
    events: list[dict[str, Any]], steps: list[int], restore_after: int | None
) -> list[UnitEvent]:
    """Offer ``events`` in order, moving the watermark to each of ``steps`` (in turn, after the
    events offered so far), then past everything; with ``restore_after``, the task is
    checkpointed and restored into a new one after that many events."""
    task = Task((), 0, retention_ms=RETENTION_MS, forwards_units=True)
    out: list[UnitEvent] = []
    pending = sorted(steps)
    for index, e in enumerate(events):
        event = StoredEvent(e["at_ms"], e["event_id"], e["event_type"], {})
        task.offer(e["session_id"], event, e["user_id"])
        if pending and index % 3 == 2:
            task.advance(min(pending.pop(0), min(x["at_ms"] for x in events[index + 1 :] or [e])))
        out.extend(task.drain().forwards)
        if restore_after == index:
            saved = task.checkpoint(full=True)
            task = Task((), 0, retention_ms=RETENTION_MS, forwards_units=True)
            stored = orjson.loads(orjson.dumps(saved.sessions))  # as the state table holds it
            task.restore(saved.watermark_ms, stored.items(), saved.windows)
            task.forwarded = saved.forwarded
    task.advance(10**6)
    return out + task.drain().forwards


@settings(max_examples=300, deadline=None)
@given(_events(), st.lists(st.integers(0, 31), max_size=6), st.integers(-1, 25))
def test_numbering_and_units_do_not_depend_on_the_watermark_steps_nor_a_restore(
    events: list[dict[str, Any]], steps: list[int], restore_after: int
) -> None:
    once = _forwarded(events, [], None)
    again = _forwarded(events, steps, restore_after if restore_after >= 0 else None)
    assert again == once
    assert [f.sequence for f in once] == list(range(len(events)))
    # In event-time order, ties by session and event id; each event's unit by the rules.
    order = sorted(
        range(len(events)),
        key=lambda i: (events[i]["at_ms"], events[i]["session_id"], events[i]["event_id"]),
    )
    expected_units = units(events)
    assert [f.event.event_id for f in once] == [events[i]["event_id"] for i in order]
    assert [f.unit for f in once] == [expected_units[i] for i in order]
    assert [f.user_id for f in once] == [events[i]["user_id"] for i in order]
    assert all(f.event.fields == {} for f in once), "the carried user id stays behind"


def test_a_task_of_session_funnels_forwards_nothing_and_stores_no_identity() -> None:
    task = Task((), 0, retention_ms=RETENTION_MS)
    task.offer("s", StoredEvent(1, "e1", "page_view", {}), "u")
    task.advance(10)
    assert task.drain().forwards == []
    saved = task.checkpoint(full=True)
    assert len(saved.sessions["s"]) == 6
    assert saved.forwarded == 0


USERS_FUNNEL = """\
name: users
follows: user
conversion_window: 1h
stages:
  - {name: product, event_types: [product_view]}
  - {name: cart, event_types: [add_to_cart]}
"""


def _stage(**options: Any) -> SessionsStage:
    funnels = options.pop("funnels")
    table = options.pop("table", {})
    return SessionsStage(
        funnels=funnels,
        table=table,
        metrics=Metrics.create(CollectorRegistry(), source_topics=SOURCES, funnels=funnels),
        limits=DecodeLimits(),
        allowed_lateness_ms=0,
        retention_ms=600_000,
        checkpoint_interval_s=3600,
        send_partial=Recorder(),
        send_dead_letter=Recorder(),
        send_abandonment=Recorder(),
        flush_producer=_nothing,
        clock=lambda: NOW,
        **options,
    )


async def _nothing() -> None:
    return None


async def test_a_unit_task_applies_each_forwarded_event_once_however_often_it_comes(
    tmp_path: Path,
) -> None:
    """A busy user (40 events on two devices, more than a unit's memory of recent event ids):
    the unit task given every forwarded event twice, as a session task restored from an older
    checkpoint sends them again, counts what it counts given them once."""
    path = tmp_path / "users.yaml"
    path.write_text(USERS_FUNNEL)
    user_funnel = (load_funnel(path),)
    sent: list[tuple[bytes | None, bytes, int | None, list[tuple[str, bytes]]]] = []

    async def send(key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
        sent.append((key, value, partition, headers))
        return await Recorder()(key, value)

    sessions = _stage(funnels=(), topics=SOURCES, units=UnitForwarder(send=send, partitions=1))
    base = round(NOW.timestamp() * 1000) - 3_600_000
    for index in range(40):
        event = valid_event(event_id=f"e-{index}")  # add_to_cart, and every other a view:
        if index % 2 == 0:
            event = {k: v for k, v in event.items() if k not in ("quantity", "cart_value")}
            event["event_type"] = "product_view"
        event |= {"session_id": f"device-{index % 2}", "user_id": "u-1"}
        event["occurred_at"] = base + index * 1000
        message = SourceMessage("clickstream", 0, index, NOW_MS, b"k", orjson.dumps(event))
        await sessions.process(message, lambda: None)
    for topic in SOURCES:
        sessions.inputs.observe(topic, 0, base + 3_600_000)
    await sessions.mark_idle({}, idle_timeout_s=3600)
    await sessions.publish()
    events = [m for m in sent if dict(m[3]).get(UNIT_HEADER)]
    markers = [m for m in sent if m not in events]
    assert {key for key, *_ in events} == {b"u-1"}
    assert len(events) == 40

    def unit_messages(copies: int) -> list[SourceMessage]:
        order = events * copies + markers
        return [
            SourceMessage("units", 0, offset, NOW_MS, key, value, tuple(headers))
            for offset, (key, value, _, headers) in enumerate(order)
        ]

    counts = []
    for copies in (1, 2):
        units = _stage(funnels=user_funnel, topics=("units",), rekeyed_from=(UNIT_SOURCE,))
        for message in unit_messages(copies):
            await units.process(message, lambda: None)
        [runtime] = units.runtimes.values()
        counts.append({key: counts.to_json() for key, counts in runtime.task.windows.items()})
    assert counts[0] == counts[1]
    entered = sum(w["stages"][0][0] for w in counts[0].values())
    assert entered > 0


async def test_a_unit_task_with_its_units_on_disk_counts_as_one_in_memory(
    tmp_path: Path,
) -> None:
    """60 users' forwarded events through a unit task with every unit in memory and one that
    keeps 3 in memory (``STREAMER_UNIT_CACHE``) and the rest on disk, with checkpoints along
    the way (each stores the changed units and lets the cache shrink): the same windows and
    the same units at the end; the units on disk are read back as they are needed."""
    path = tmp_path / "users.yaml"
    path.write_text(USERS_FUNNEL)
    user_funnel = (load_funnel(path),)
    sent: list[tuple[bytes | None, bytes, int | None, list[tuple[str, bytes]]]] = []

    async def send(key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
        sent.append((key, value, partition, headers))
        return await Recorder()(key, value)

    sessions = _stage(funnels=(), topics=SOURCES, units=UnitForwarder(send=send, partitions=1))
    base = round(NOW.timestamp() * 1000) - 3_600_000
    for index in range(240):
        user = index % 60
        event = valid_event(event_id=f"e-{index}")
        if index % 3 == 0:  # views and carts of 60 users, interleaved
            event = {k: v for k, v in event.items() if k not in ("quantity", "cart_value")}
            event["event_type"] = "product_view"
        event |= {"session_id": f"s-{user}-{index % 2}", "user_id": f"u-{user}"}
        event["occurred_at"] = base + index * 1000
        message = SourceMessage("clickstream", 0, index, NOW_MS, b"k", orjson.dumps(event))
        await sessions.process(message, lambda: None)
    for topic in SOURCES:
        sessions.inputs.observe(topic, 0, base + 3_600_000)
    await sessions.mark_idle({}, idle_timeout_s=3600)
    await sessions.publish()
    messages = [
        SourceMessage("units", 0, offset, NOW_MS, key, value, tuple(headers))
        for offset, (key, value, _, headers) in enumerate(sent)
    ]
    results = []
    for on_disk in (None, tmp_path / "units"):
        units = _stage(
            funnels=user_funnel,
            topics=("units",),
            rekeyed_from=(UNIT_SOURCE,),
            units_on_disk=on_disk,
            unit_cache=3,
        )
        for offset, message in enumerate(messages):
            await units.process(message, lambda: None)
            if offset % 50 == 49:
                units.committer.snapshot(0)
        units.committer.snapshot(0)
        [runtime] = units.runtimes.values()
        if on_disk is not None:
            assert runtime.store is not None
            assert runtime.store.sessions.cached <= 3
            assert runtime.store.sessions.misses > 0  # units were read back from the disk
        task = runtime.task
        results.append(
            (
                {key: counts.to_json() for key, counts in task.windows.items()},
                {unit: state.to_json() for unit, state in task.sessions.items()},
            )
        )
    assert results[0] == results[1]
    assert len(results[0][1]) > 3  # open units outnumber the cache (the rest went at rest)


async def test_a_user_funnel_added_to_a_running_worker_is_said_to_start_without_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No catch-up rebuilds a user funnel's units (docs/replay.md): a unit task restored with
    a user funnel its checkpoint lacks, and a session task forwarding for the first time, say
    so in a warning naming what starts where; a restart after that says nothing more."""
    path = tmp_path / "users.yaml"
    path.write_text(USERS_FUNNEL)
    users = load_funnel(path)
    more = users.model_copy(update={"name": "more_users"})
    forwarder = UnitForwarder(send=_fronts_only, partitions=1)
    unit_table: dict[Any, Any] = {}
    session_table: dict[Any, Any] = {}
    lives = [((users,), None), ((users, more), forwarder), ((users, more), forwarder)]
    said = []
    for funnels, forwards in lives:
        caplog.clear()
        unit_side = _stage(funnels=funnels, topics=("units",), rekeyed_from=(UNIT_SOURCE,),
                           reports_as=1, table=unit_table)  # fmt: skip
        session_side = _stage(funnels=(), topics=SOURCES, units=forwards, table=session_table)
        for stage in (unit_side, session_side):
            with caplog.at_level(logging.WARNING, logger="streamer"):
                stage.ensure(0)
            await stage.checkpoint(0)
        said.append([r.getMessage() for r in caplog.records if r.levelno == logging.WARNING])
    first, added, again = said
    assert first == []
    assert any("more_users added since the checkpoint start at its watermark" in m for m in added)
    assert any("the first user funnel since the checkpoint" in m for m in added)
    assert again == []


async def _fronts_only(key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
    assert dict(headers).get(UNIT_HEADER) is None, "nothing is forwarded without input"
    return await Recorder()(key, value)
