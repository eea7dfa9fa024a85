"""User funnels through the pipeline: a session task forwards each released event to its unit
(docs/decisions/0008-user-funnels-pipeline.md). The numbering it gives them is what lets the
unit side skip copies after a restart, so it must not depend on how the watermark moved, nor on
a checkpoint and restore in between; the units are the identity rules'."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.funnel.session import StoredEvent
from streamer.funnel.task import Task, UnitEvent
from tests.support.core_run import units

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
