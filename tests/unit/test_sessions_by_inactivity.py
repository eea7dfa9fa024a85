"""Sessions by inactivity (docs/funnel-semantics.md, "Sessions by inactivity"): an identity's
events without a session id are cut into sessions where one comes more than the plan's
``inactivity`` after the previous; the ended session is decided by its step timeouts; the cut
survives a checkpoint and restore anywhere. The generated comparison with the SQL oracle is in
test_sessions_by_inactivity_vs_sql.py."""

from __future__ import annotations

from typing import Any

import orjson

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.inactivity import (
    IDENTITY_MEMORY_MS,
    following_number,
    session_name,
    starts_session,
)
from streamer.funnel.session import NEVER, CompiledFunnel
from streamer.funnel.task import AbandonmentNotice, SessionState, Task
from streamer.funnel.windows import NEW_SESSIONS
from tests.support.funnels import MIN, ev

GAP = 30 * MIN
KEY = "anonymous_id:v1"
# A step timeout (50m) longer than the gap: an attempt outlives the session it started in.
SHOP = CompiledFunnel(
    FunnelDefinition.model_validate(
        {
            "name": "shop",
            "conversion_window": "2h",
            "window": "1m",
            "stages": [
                {"name": "landing", "event_type": "page_view", "timeout": "50m"},
                {"name": "cart", "event_type": "add_to_cart", "timeout": "10m"},
                {"name": "order", "event_type": "order_placed"},
            ],
            "abandonment": ["landing", "cart"],
        }
    )
)
RETENTION = 10 * MIN  # the worker's default: shorter than the gap


def new_task() -> Task:
    return Task((SHOP,), 0, retention_ms=RETENTION)


def offer(task: Task, *events: Any, key: str = KEY) -> None:
    for event in events:
        task.offer(key, event, inactivity_ms=GAP)


def notices(task: Task) -> list[AbandonmentNotice]:
    return task.drain().abandonments


def test_the_rule_a_gap_of_exactly_the_inactivity_stays_in_the_session() -> None:
    assert not starts_session(NEVER, 0, GAP)  # an identity's first event
    assert not starts_session(0, GAP, GAP)
    assert starts_session(0, GAP + 1, GAP)
    assert not starts_session(5, 5, GAP)  # the same instant
    assert following_number(1, 0, GAP + 1) == 2
    assert following_number(4, 0, IDENTITY_MEMORY_MS) == 5
    assert following_number(4, 0, IDENTITY_MEMORY_MS + 1) == 1  # forgotten: starts over
    assert session_name(KEY, 1) == KEY
    assert session_name(KEY, 3) == f"{KEY}#3"


def test_a_visitor_back_after_the_gap_is_a_new_session_and_the_old_one_drops() -> None:
    task = new_task()
    offer(task, ev(0, "page_view"), ev(40 * MIN, "add_to_cart"), ev(41 * MIN, "page_view"))
    task.advance(42 * MIN)
    # Without the cut, cart@40m would convert landing (within its 50m timeout). Cut, the first
    # session gets no more events, and its landing step is open until its own deadline (50m).
    assert notices(task) == []
    assert task.windows[(0, 0)].stages[0].open == 1
    assert task.sessions[f"{KEY}#1@0"].published_id == KEY  # its key: number, last event
    task.advance(50 * MIN + 1)
    (dropped,) = notices(task)
    assert (dropped.session_id, dropped.abandoned.stage) == (KEY, 0)
    assert dropped.abandoned.abandoned_ms == 50 * MIN
    assert task.windows[(0, 0)].stages[0].dropped == 1
    assert task.windows[(0, 0)].stages[0].converted == 0
    task.advance(41 * MIN + 50 * MIN + 1)  # the second session's landing (41m) drops too
    (second,) = notices(task)
    assert second.session_id == f"{KEY}#2"
    assert second.abandoned.attempt_ms == 41 * MIN


def test_a_gap_of_exactly_the_inactivity_converts() -> None:
    task = new_task()
    offer(task, ev(0, "page_view"), ev(GAP, "add_to_cart"))
    task.advance(GAP + 1)
    assert task.windows[(0, 0)].stages[0].converted == 1
    assert set(task.sessions) == {KEY}
    assert task.sessions[KEY].session_number == 1


def test_events_at_one_instant_after_a_gap_all_open_the_new_session() -> None:
    task = new_task()
    offer(task, ev(0, "page_view"), ev(GAP + MIN, "page_view"), ev(GAP + MIN, "add_to_cart"))
    task.advance(GAP + MIN + 1)
    assert task.sessions[KEY].session_number == 2
    counts = task.windows[(0, GAP + MIN)].stages
    assert (counts[0].entered, counts[0].converted, counts[1].entered) == (1, 1, 1)


def test_a_late_event_within_the_lateness_joins_the_sessions_it_falls_between() -> None:
    # 0 and 40m, then 20m arriving late (the watermark not past it yet): released in event-time
    # order with the others, so the gaps are 20m and 20m: one session, cart converts.
    task = new_task()
    offer(task, ev(0, "page_view"), ev(40 * MIN, "add_to_cart"), ev(20 * MIN, "page_view"))
    task.advance(40 * MIN + 1)
    assert task.sessions[KEY].session_number == 1
    assert task.windows[(0, 0)].stages[0].converted == 1
    assert set(task.sessions) == {KEY}


def test_each_cut_counts_a_new_session_in_its_window() -> None:
    task = new_task()
    offer(task, ev(0, "page_view"), ev(40 * MIN, "page_view"), ev(80 * MIN, "page_view"))
    task.advance(80 * MIN + 1)
    assert task.sessions[KEY].session_number == 3
    new = {start: counts.volume.get(NEW_SESSIONS) for (_, start), counts in task.windows.items()}
    assert new == {0: 1, 40 * MIN: 1, 80 * MIN: 1}


def test_a_session_id_is_never_cut_and_stores_what_it_stored_before() -> None:
    task = new_task()
    task.offer("s1", ev(0, "page_view"))
    task.offer("s1", ev(40 * MIN, "add_to_cart"))
    task.advance(40 * MIN + 1)
    assert task.windows[(0, 0)].stages[0].converted == 1
    assert len(task.sessions["s1"].to_json()) == 6


def test_the_identity_outlives_the_retention_so_its_numbering_goes_on() -> None:
    task = new_task()
    offer(task, ev(0, "product_view"))  # no stage: at rest
    task.advance(1)
    task.advance(GAP + 2)  # at rest and past the 10m retention: an identity is kept
    assert task.sessions[KEY].session_number == 1
    offer(task, ev(GAP + 2, "page_view"))
    task.advance(GAP + 3)
    assert task.sessions[KEY].session_number == 2
    task.advance(GAP + 2 + IDENTITY_MEMORY_MS + 1)  # a day without an event: forgotten
    assert KEY not in task.sessions
    offer(task, ev(GAP + 3 + IDENTITY_MEMORY_MS, "page_view"))
    task.advance(GAP + 4 + IDENTITY_MEMORY_MS)
    assert task.sessions[KEY].session_number == 1


def test_an_ended_session_at_rest_leaves_no_state_behind() -> None:
    task = new_task()
    offer(task, ev(0, "product_view"), ev(40 * MIN, "page_view"))  # no stage: at rest
    task.advance(40 * MIN + 1)
    assert set(task.sessions) == {KEY}


def test_an_identitys_state_survives_a_json_round_trip() -> None:
    task = new_task()
    offer(task, ev(0, "page_view"), ev(40 * MIN, "page_view"))
    task.advance(40 * MIN + 1)
    for session_id, state in task.sessions.items():
        raw = orjson.loads(orjson.dumps(state.to_json()))
        again = SessionState.from_json(session_id, raw)
        assert again.to_json() == state.to_json()
        assert again.published_id == state.published_id
    identity = task.sessions[KEY]
    assert (identity.inactivity_ms, identity.session_number, identity.released_ms) == (
        GAP,
        2,
        40 * MIN,
    )
    assert identity.published_id == f"{KEY}#2"


def checkpointed(events: list[Any], split: int, watermarks: list[int]) -> tuple[Task, Task]:
    """Two tasks offered ``events`` (each followed by its watermark): one throughout, one
    checkpointed incrementally through JSON and restored into a new task after ``split``."""
    expected, restored = new_task(), new_task()
    store: dict[str, Any] = {}
    windows: dict[tuple[int, int], Any] = {}
    for index, (event, watermark) in enumerate(zip(events, watermarks, strict=True)):
        for task in (expected, restored):
            offer(task, event)
            task.advance(watermark)
        saved = restored.checkpoint()
        for session_id in saved.deleted_sessions:
            store.pop(session_id, None)
        store.update(orjson.loads(orjson.dumps(saved.sessions)))
        windows.update(saved.windows)
        if index + 1 == split:
            restored = new_task()
            restored.restore(saved.watermark_ms, list(store.items()), windows)
    return expected, restored


def test_a_restore_mid_identity_cuts_the_same_sessions() -> None:
    events = [
        ev(0, "page_view"),
        ev(5 * MIN, "page_view"),
        ev(40 * MIN, "add_to_cart"),  # a new session (35m gap), its cart starts nothing
        ev(41 * MIN, "page_view"),
        ev(45 * MIN, "add_to_cart"),
        ev(80 * MIN, "page_view"),  # a third session
        ev(200 * MIN, "order_placed"),
    ]
    # The watermark lags the events by a minute: some are buffered at each checkpoint.
    watermarks = [max(1, event.at_ms - MIN) for event in events]
    for split in range(1, len(events)):
        expected, restored = checkpointed(events, split, watermarks)
        for task in (expected, restored):
            task.advance(400 * MIN)
        assert {k: v.to_json() for k, v in restored.sessions.items()} == {
            k: v.to_json() for k, v in expected.sessions.items()
        }, split
        assert restored.windows.keys() == expected.windows.keys(), split
        for key, counts in expected.windows.items():
            assert restored.windows[key].to_json() == counts.to_json(), (split, key)


def test_an_added_funnel_catches_up_on_the_same_sessions() -> None:
    """A funnel added to a running worker is rebuilt by a separate task over the same input
    (streamer.pipeline.sessions.catch_up) and adopted: the identities, their cut sessions and
    the ended ones still open are those of a task that always had it."""
    added = CompiledFunnel(SHOP.definition.model_copy(update={"name": "added"}))
    events = [ev(0, "page_view"), ev(40 * MIN, "page_view"), ev(41 * MIN, "add_to_cart")]
    watermark = 45 * MIN

    def fed(funnels: tuple[CompiledFunnel, ...]) -> Task:
        task = Task(funnels, 0, retention_ms=RETENTION)
        offer(task, *events)
        task.advance(watermark)
        return task

    always = fed((SHOP, added))
    before = fed((SHOP,))
    saved = before.checkpoint(full=True)
    task = Task((SHOP, added), 0, retention_ms=RETENTION)
    task.restore(
        saved.watermark_ms,
        [(k, orjson.loads(orjson.dumps(v))) for k, v in saved.sessions.items()],
        saved.windows,
        ["shop"],
    )
    task.adopt(fed((added,)), [1])
    assert set(task.sessions) == {KEY, f"{KEY}#1@0"}
    assert {k: v.to_json() for k, v in task.sessions.items()} == {
        k: v.to_json() for k, v in always.sessions.items()
    }
    assert task.open_sessions == always.open_sessions
