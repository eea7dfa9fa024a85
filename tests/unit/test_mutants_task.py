"""The task around the state machine: forgetting sessions, checkpoints, restore and the adoption
of an added funnel's catch-up, pinned where the mutation run (docs/mutation-testing.md) found
them free to change. Funnel ``shop`` of funnel_helpers: landing (timeout 30m by default), cart
(10m), checkout (5m), order; conversion window 1h, windows of 1 minute.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

from streamer.funnel.session import NEVER, CompiledFunnel, Progress
from streamer.funnel.task import Checkpoint, Offer, Task
from tests.support.funnels import MIN, ev, funnel

LONG = CompiledFunnel(funnel(name="long"))
# The same stages in a 10-minute conversion window: every step's deadline is capped at 10m.
SHORT = CompiledFunnel(funnel(name="short", conversion_window="10m"))


def stored(saved: Checkpoint) -> list[tuple[str, list[Any]]]:
    """The sessions of a checkpoint as the adapter reads them back (JSON)."""
    return [(sid, orjson.loads(orjson.dumps(value))) for sid, value in saved.sessions.items()]


def restored(task: Task, into: Task, stored_funnels: list[str] | None = None) -> Task:
    saved = task.checkpoint(full=True)
    into.restore(saved.watermark_ms, stored(saved), saved.windows, stored_funnels)
    return into


def test_a_session_is_forgotten_once_at_rest_and_past_the_retention_after_its_last_event() -> None:
    task = Task((LONG,), 0, retention_ms=60 * MIN)
    task.offer("s", ev(0, "page_view"))
    task.advance(1)
    task.advance(31 * MIN)  # landing dropped at 30m: at rest, but its last event is 31m old
    assert task.sessions["s"].progress[0].at_rest
    task.advance(60 * MIN)  # exactly the retention: not past it
    assert "s" in task.sessions
    task.advance(60 * MIN + 1)
    assert "s" not in task.sessions
    assert task.checkpoint().deleted_sessions == {"s"}


def test_a_session_decided_when_the_watermark_is_at_the_end_of_its_retention_is_kept() -> None:
    task = Task((LONG,), 0, retention_ms=31 * MIN)
    task.offer("s", ev(0, "page_view"))
    task.advance(1)
    task.advance(31 * MIN)  # wakes for the landing deadline (30m): 0 + 31m is not past 31m
    assert task.sessions["s"].progress[0].at_rest
    assert "s" in task.sessions
    task.advance(31 * MIN + 1)
    assert "s" not in task.sessions


def test_open_sessions_count_the_attempts_at_each_stage_but_the_last() -> None:
    task = Task((LONG,), 0, retention_ms=RETENTION)
    for sid in ("a", "b", "c"):
        task.offer(sid, ev(0, "page_view"))
    task.advance(1)
    assert +task.open_sessions == Counter({(0, 0): 3})
    task.offer("a", ev(MIN, "add_to_cart"))
    task.offer("b", ev(MIN, "add_to_cart"))
    task.offer("b", ev(2 * MIN, "checkout_started"))
    task.advance(2 * MIN + 1)
    assert +task.open_sessions == Counter({(0, 0): 1, (0, 1): 1, (0, 2): 1})
    task.offer("b", ev(3 * MIN, "order_placed"))  # completed: the last stage holds nothing
    task.advance(3 * MIN + 1)
    assert +task.open_sessions == Counter({(0, 0): 1, (0, 1): 1})
    task.advance(11 * MIN + 1)  # a's cart step dropped at 11m
    assert +task.open_sessions == Counter({(0, 0): 1})
    task.advance(30 * MIN + 1)  # c's landing step dropped at 30m
    assert +task.open_sessions == Counter()


def test_a_session_at_rest_with_events_still_buffered_is_not_forgotten() -> None:
    task = Task((LONG,), 0, retention_ms=MIN)
    task.offer("s", ev(0, "page_view", landing=False))  # no stage: the session stays at rest
    task.advance(1)
    task.offer("s", ev(10 * MIN, "page_view"))  # buffered: the watermark is not past it
    task.advance(2 * MIN)  # past the retention after 0, with the 10m event still waiting
    assert task.sessions["s"].buffered() == [ev(10 * MIN, "page_view")]
    task.advance(10 * MIN + 1)
    assert task.windows[(0, 10 * MIN)].stages[0].entered == 1


def test_an_incremental_checkpoint_holds_only_what_changed_since_the_last() -> None:
    task = Task((LONG,), 0, retention_ms=60 * MIN)
    task.offer("s", ev(0, "page_view"))
    task.advance(1)
    first = task.checkpoint()
    assert set(first.sessions) == {"s"}
    assert set(first.windows) == {(0, 0)}
    second = task.checkpoint()
    assert second.sessions == {}
    assert second.windows == {}
    assert set(task.checkpoint(full=True).sessions) == {"s"}


def test_a_restored_task_counts_its_open_sessions_per_stage() -> None:
    task = Task((LONG,), 0, retention_ms=60 * MIN)
    for sid in ("a", "b", "c"):
        task.offer(sid, ev(0, "page_view"))
    task.offer("c", ev(MIN, "add_to_cart"))
    task.advance(2 * MIN)
    again = restored(task, Task((LONG,), 0, retention_ms=60 * MIN))
    assert again.open_sessions == Counter({(0, 0): 2, (0, 1): 1})


def test_sessions_stored_by_a_task_with_fewer_funnels_start_the_new_ones_fresh() -> None:
    task = Task((SHORT,), 0, retention_ms=60 * MIN)
    task.offer("s", ev(0, "page_view"))
    task.advance(1)
    again = restored(task, Task((SHORT, LONG), 0, retention_ms=60 * MIN))
    progress = again.sessions["s"].progress
    assert len(progress) == 2
    assert progress[0].attempt is not None
    assert progress[0].attempt.deadline_ms == 10 * MIN  # landing, capped at the 10m window
    assert progress[1] == Progress()


def test_stored_progress_is_matched_to_funnels_by_name_not_by_position() -> None:
    task = Task((LONG, SHORT), 0, retention_ms=60 * MIN)
    task.offer("s", ev(0, "page_view"))
    task.advance(1)
    again = restored(task, Task((SHORT, LONG), 0, retention_ms=60 * MIN), ["long", "short"])
    short, long = again.sessions["s"].progress
    assert short.attempt is not None
    assert long.attempt is not None
    assert short.attempt.deadline_ms == 10 * MIN
    assert long.attempt.deadline_ms == 30 * MIN


def test_events_offered_after_a_restore_join_the_buffered_ones_at_the_same_time() -> None:
    task = Task((LONG,), 0, retention_ms=60 * MIN)
    task.advance(5 * MIN)
    task.offer("s", ev(10 * MIN, "page_view"))
    task.offer("s", ev(10 * MIN, "add_to_cart"))
    again = restored(task, Task((LONG,), 0, retention_ms=60 * MIN))
    assert again.offer("s", ev(10 * MIN, "checkout_started")) is Offer.ACCEPTED
    assert again.offer("s", ev(10 * MIN, "order_placed")) is Offer.ACCEPTED
    assert len(again.checkpoint().sessions["s"][1]) == 4  # the four buffered, in order
    again.advance(11 * MIN)
    # one instant holding every stage: through the funnel at once (spec, example 5)
    counts = again.windows[(0, 10 * MIN)].stages
    assert [s.entered for s in counts] == [1, 1, 1, 1]
    assert [s.converted for s in counts] == [1, 1, 1, 0]


# --- adopting the catch-up of an added funnel ------------------------------------------------
W = 10 * MIN + 30_000  # the watermark both tasks stand at: 10m30s
RETENTION = 5 * MIN
EVENTS = [  # (session, event, user): s0 first, so it is the first session of the catch-up
    ("s0", ev(8 * MIN, "page_view", landing=False), None),  # no stage: at rest in both funnels
    ("s1", ev(0, "page_view"), "u1"),
    ("s1", ev(MIN, "add_to_cart"), "u1"),
    ("s2", ev(0, "page_view"), None),
    ("s3", ev(2 * MIN, "page_view"), None),
]


def catch_up(*extra: tuple[str, Any, str | None]) -> Task:
    """The added funnel ``long`` alone over the same input, stopped at W."""
    history = Task((LONG,), 0, retention_ms=RETENTION)
    for sid, event, user in [*EVENTS, *extra]:
        history.offer(sid, event, user)
    history.advance(W)
    return history


def test_an_added_funnel_is_adopted_into_sessions_the_task_had_already_forgotten() -> None:
    before = Task((SHORT,), 0, retention_ms=RETENTION)
    for sid, event, user in EVENTS:
        before.offer(sid, event, user)
    before.advance(9 * MIN)
    task = restored(before, Task((SHORT, LONG), 0, retention_ms=RETENTION), ["short"])
    task.advance(W)  # short drops s1 and s2 at 10m; at rest and 5m past their last event
    assert set(task.sessions) == {"s0", "s3"}

    task.adopt(catch_up(), [1])

    assert set(task.sessions) == {"s0", "s1", "s2", "s3"}
    s1 = task.sessions["s1"]
    assert s1.progress[0] == Progress()
    attempt = s1.progress[1].attempt
    assert attempt is not None
    assert (attempt.stage, attempt.reached_ms, attempt.deadline_ms) == (1, MIN, 11 * MIN)
    assert (s1.user_id, s1.last_event_ms, s1.started_ms) == ("u1", MIN, 0)
    assert s1.buffered() == []
    assert task.offer("s1", ev(MIN, "add_to_cart")) is Offer.DUPLICATE  # its ids came along
    # short: s3 open at landing (s1, s2 dropped); long: s1 at cart, s2 and s3 at landing
    assert task.open_sessions == Counter({(0, 0): 1, (1, 0): 2, (1, 1): 1})
    assert task.windows[(1, 0)].stages[0].entered == 2
    assert task.windows[(1, MIN)].stages[1].entered == 1
    assert task.windows[(1, 2 * MIN)].stages[0].entered == 1

    saved = task.checkpoint()
    assert {"s0", "s1", "s2", "s3"} <= set(saved.sessions)
    assert saved.deleted_sessions == set()  # s1 and s2 live again
    assert {(1, 0), (1, MIN), (1, 2 * MIN)} <= set(saved.windows)

    # and the adopted attempt goes on: checkout at 10m36s is within cart's 11m deadline
    task.offer("s1", ev(W + 6_000, "checkout_started"))
    task.advance(W + 7_000)
    assert task.windows[(1, MIN)].stages[1].converted == 1
    assert "s1" in task.checkpoint().sessions


def test_adopting_into_a_task_without_the_sessions_takes_only_those_with_something_open() -> None:
    task = Task((SHORT, LONG), 0, retention_ms=RETENTION)
    task.advance(W)
    # s4: landing at 5m, and a cart event at 20m still buffered at W
    history = catch_up(
        ("s4", ev(5 * MIN, "page_view"), None), ("s4", ev(20 * MIN, "add_to_cart"), None)
    )
    assert "s0" in history.sessions  # at rest, not yet past the retention after 8m

    task.adopt(history, [1])

    assert set(task.sessions) == {"s1", "s2", "s3", "s4"}  # s0 has nothing open
    assert task.sessions["s4"].buffered() == [ev(20 * MIN, "add_to_cart")]
    assert task.buffered_events == 1
    task.advance(20 * MIN + 1)
    assert task.windows[(1, 5 * MIN)].stages[0].converted == 1
    assert task.windows[(1, 20 * MIN)].stages[1].entered == 1
    assert task.sessions["s4"].progress[0] == Progress()
    assert task.sessions["s4"].started_ms == 5 * MIN
    assert task.sessions["s4"].last_event_ms == 20 * MIN
    assert task.watermark_ms > NEVER


def test_a_catch_up_stopped_at_another_watermark_is_refused() -> None:
    task = Task((SHORT, LONG), 0, retention_ms=RETENTION)
    task.advance(W - 1)
    with pytest.raises(AssertionError, match=r"^the catch-up must stop at our watermark$"):
        task.adopt(catch_up(), [1])


def test_abandonment_and_retraction_notices_carry_the_user_and_the_cart() -> None:
    task = Task((CompiledFunnel(funnel(abandonment=["cart"])),), 0, retention_ms=RETENTION)
    task.offer("s", ev(0, "page_view"), "u1")
    task.offer("s", ev(MIN, "add_to_cart", cart_value=30.0, currency="EUR"), "u1")
    task.advance(11 * MIN + 1)  # cart's deadline: min(1m + 10m, 0 + 1h) = 11m
    [notice] = task.drain().abandonments
    assert (notice.session_id, notice.user_id, notice.order_ms) == ("s", "u1", None)
    assert (notice.abandoned.abandoned_ms, notice.abandoned.retractable_until_ms) == (
        11 * MIN,
        60 * MIN,
    )
    assert (notice.abandoned.cart_value, notice.abandoned.currency) == (30.0, "EUR")
    task.offer("s", ev(20 * MIN, "order_placed"))  # within the hour: retracts it
    task.advance(20 * MIN + 1)
    [retraction] = task.drain().abandonments
    assert (retraction.session_id, retraction.user_id, retraction.order_ms) == ("s", "u1", 20 * MIN)
    assert retraction.abandoned == notice.abandoned


def test_a_funnel_added_at_restore_counts_the_buffered_events_it_releases() -> None:
    before = Task((SHORT,), 0, retention_ms=RETENTION)
    before.offer("s", ev(0, "page_view"))
    before.advance(1)  # s is released (counted as new at 0): not new any more
    before.advance(5 * MIN)
    before.offer("s", ev(10 * MIN, "page_view"))  # buffered in the checkpoint
    task = restored(before, Task((SHORT, LONG), 0, retention_ms=RETENTION), ["short"])
    assert (1, 10 * MIN) not in task.windows  # long did not exist when the event was read
    task.advance(10 * MIN + 1)
    # long's entry at 10m makes long's window, with long's four stages
    counts = task.windows[(1, 10 * MIN)]
    assert [s.entered for s in counts.stages] == [1, 0, 0, 0]
    assert counts.volume == {}
    # short: 10m is its attempt's deadline (inclusive): the event is only activity, and the
    # step drops at 10m once the watermark is past it; no second entry
    assert task.sessions["s"].progress[0].ended_ms == 10 * MIN
    assert task.windows[(0, 0)].stages[0].dropped == 1


def test_drain_publishes_each_changed_window_and_releases_it_once_final() -> None:
    task = Task((LONG,), 3, retention_ms=60 * MIN)
    task.offer("s", ev(0, "page_view"))
    task.advance(1)
    [partial] = task.drain().partials
    assert (partial.funnel, partial.window_start_ms, partial.window_end_ms) == ("long", 0, MIN)
    assert partial.partition == 3
    assert partial.counts.stages[0].entered == 1
    # final once W >= s + w + the longest step timeout (spec, "Final"): 0 + 1m + 30m
    task.advance(31 * MIN - 1)  # the landing step dropped at 30m: the window changed
    assert [p.window_start_ms for p in task.drain().partials] == [0]
    assert (0, 0) in task.windows
    task.advance(31 * MIN)
    assert task.drain().partials == []
    assert (0, 0) not in task.windows
    saved = task.checkpoint()
    assert (0, 0) not in saved.windows
    assert saved.deleted_windows == {(0, 0)}


def test_a_session_wakes_at_the_earliest_wake_of_its_funnels() -> None:
    views = CompiledFunnel(
        funnel(
            name="views",
            stages=[
                {"name": "view", "event_type": "product_view"},
                {"name": "cart", "event_type": "add_to_cart"},
            ],
            segments={},
        )
    )
    task = Task((LONG, views), 0, retention_ms=60 * MIN)
    task.offer("s", ev(0, "page_view"))  # opens long only; views stays at rest
    task.advance(1)
    task.advance(30 * MIN + 1)
    assert task.windows[(0, 0)].stages[0].dropped == 1
    assert task.sessions["s"].progress[0].at_rest


def test_the_latest_sixteen_event_ids_of_a_session_are_remembered() -> None:
    task = Task((LONG,), 0, retention_ms=60 * MIN)
    for n in range(17):
        assert task.offer("s", ev(MIN + n, "product_view", f"e{n}")) is Offer.ACCEPTED
    for n in range(1, 17):  # e1..e16: the latest sixteen
        assert task.offer("s", ev(MIN + n, "product_view", f"e{n}")) is Offer.DUPLICATE
    assert task.offer("s", ev(MIN, "product_view", "e0")) is Offer.ACCEPTED  # forgotten


def test_volume_counts_every_accepted_event_by_source_and_type() -> None:
    task = Task((LONG,), 0, retention_ms=60 * MIN)
    task.offer("a", ev(0, "page_view"))
    task.offer("b", ev(1, "page_view"))
    task.offer("a", ev(2, "add_to_cart"), source="checkout")
    assert task.windows[(0, 0)].volume == {("", "page_view"): 2, ("checkout", "add_to_cart"): 1}


def test_a_forgotten_session_offered_again_is_stored_not_deleted() -> None:
    task = Task((LONG,), 0, retention_ms=MIN)
    task.offer("s", ev(0, "page_view", landing=False))
    task.advance(1)
    task.checkpoint()
    task.advance(MIN + 1)  # at rest and past the retention: forgotten
    assert "s" not in task.sessions
    task.offer("s", ev(2 * MIN, "page_view"))
    saved = task.checkpoint()
    assert "s" in saved.sessions
    assert saved.deleted_sessions == set()
