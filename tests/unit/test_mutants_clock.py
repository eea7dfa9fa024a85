"""The event-time clock of a worker's tasks (docs/funnel-semantics.md, "The watermark in the
worker"), pinned rule by rule: fronts, idleness, the fallback of an all-idle task, revocation.

Written for the mutation run (docs/mutation-testing.md): before it, InputClock was exercised only
through the pipeline stages, where most of its rules could change without a unit test failing.
"""

from __future__ import annotations

from streamer.funnel.clock import InputClock
from streamer.funnel.session import NEVER

S = 1000
LATENESS = 120 * S  # allowed_lateness_seconds, 120 by default


def clock(*partitions: int, topics: tuple[str, ...] = ("clicks", "orders")) -> InputClock:
    inputs = InputClock(topics, LATENESS)
    for partition in partitions:
        inputs.assign(partition)
    return inputs


def test_a_task_holds_until_every_input_has_a_front() -> None:
    inputs = clock(0)
    assert inputs.watermark(0) is None
    inputs.observe("clicks", 0, 500 * S)
    assert inputs.watermark(0) is None  # orders has not been read yet: it holds the task
    inputs.observe("orders", 0, 400 * S)
    assert inputs.watermark(0) == 400 * S - LATENESS


def test_the_watermark_is_the_lowest_front_of_the_task_minus_the_lateness() -> None:
    inputs = clock(0, 1)
    inputs.observe("clicks", 0, 1000 * S)
    inputs.observe("orders", 0, 700 * S)
    inputs.observe("clicks", 1, 300 * S)
    inputs.observe("orders", 1, 200 * S)
    # partition 1's older inputs do not hold partition 0 back, nor the other way round
    assert inputs.watermark(0) == 580 * S
    assert inputs.watermark(1) == 80 * S


def test_a_front_moves_only_forward_and_observe_says_when_it_moved() -> None:
    inputs = clock(0)
    assert inputs.observe("clicks", 0, 500 * S) is True
    assert inputs.observe("clicks", 0, 500 * S) is False  # the same time: nothing moved
    assert inputs.observe("clicks", 0, 300 * S) is False  # an older event: nothing moved
    assert inputs.fronts_of(0) == {"clicks": 500 * S, "orders": NEVER}
    assert inputs.observe("clicks", 0, 501 * S) is True
    assert inputs.fronts_of(0)["clicks"] == 501 * S


def test_an_input_not_assigned_yet_starts_at_never_and_its_first_event_moves_it() -> None:
    inputs = InputClock(["clicks"], LATENESS)
    assert inputs.fronts_of(3) == {"clicks": NEVER}
    assert inputs.observe("clicks", 3, 10 * S) is True
    assert inputs.observe("clicks", 3, 10 * S) is False


def test_a_restored_task_starts_from_its_checkpointed_fronts() -> None:
    inputs = InputClock(["clicks", "orders"], LATENESS)
    inputs.assign(0, {"clicks": 900 * S, "orders": 800 * S})
    assert inputs.fronts_of(0) == {"clicks": 900 * S, "orders": 800 * S}
    assert inputs.watermark(0) == 680 * S
    assert inputs.observe("clicks", 0, 850 * S) is False  # below the restored front


def test_a_checkpointed_front_of_an_input_not_known_yet_adds_that_input() -> None:
    # the re-key path: a task's inputs are source partitions, named in its checkpoint
    inputs = InputClock([], LATENESS)
    inputs.assign(0, {"clicks/0": 900 * S, "clicks/1": 700 * S})
    assert inputs.topics == ("clicks/0", "clicks/1")
    assert inputs.watermark(0) == 580 * S


def test_an_idle_input_stops_holding_its_task_back() -> None:
    inputs = clock(0)
    inputs.observe("clicks", 0, 1000 * S)
    inputs.observe("orders", 0, 100 * S)
    assert inputs.watermark(0) == -20 * S
    inputs.set_idle("orders", 0, True)
    assert inputs.watermark(0) == 880 * S
    inputs.set_idle("orders", 0, False)  # no longer idle: it holds the task again
    assert inputs.watermark(0) == -20 * S


def test_an_event_read_on_an_idle_input_makes_it_active_again() -> None:
    inputs = clock(0)
    inputs.observe("clicks", 0, 1000 * S)
    inputs.observe("orders", 0, 100 * S)
    inputs.set_idle("orders", 0, True)
    inputs.observe("orders", 0, 150 * S)
    assert not inputs.all_idle(0)
    assert inputs.watermark(0) == 30 * S


def test_idleness_of_an_input_the_task_does_not_have_is_ignored() -> None:
    inputs = clock(0)
    inputs.set_idle("clicks", 7, True)  # partition 7 is not this worker's
    inputs.set_idle("payments", 0, True)  # not an input of the task
    assert inputs.idle == set()


def test_all_idle_only_when_every_input_of_the_task_is() -> None:
    inputs = clock(0, 1)
    assert not inputs.all_idle(0)
    inputs.set_idle("clicks", 0, True)
    assert not inputs.all_idle(0)
    inputs.set_idle("orders", 0, True)
    assert inputs.all_idle(0)
    assert not inputs.all_idle(1)


def test_a_task_whose_inputs_are_all_idle_follows_the_workers_other_inputs() -> None:
    inputs = clock(0, 1)
    inputs.observe("clicks", 0, 1000 * S)
    inputs.observe("orders", 0, 900 * S)
    inputs.observe("clicks", 1, 600 * S)
    inputs.observe("orders", 1, 400 * S)
    inputs.set_idle("clicks", 0, True)
    inputs.set_idle("orders", 0, True)
    # the minimum over every input of the worker that is not idle: partition 1's
    assert inputs.watermark(0) == 280 * S
    inputs.set_idle("orders", 1, True)
    assert inputs.watermark(0) == 480 * S
    assert inputs.watermark(1) == 480 * S


def test_when_every_input_is_idle_time_reaches_the_newest_event_read_and_no_further() -> None:
    inputs = clock(0, 1)
    inputs.observe("clicks", 0, 1000 * S)
    inputs.observe("orders", 0, 900 * S)
    inputs.observe("clicks", 1, 600 * S)
    inputs.observe("orders", 1, 1300 * S)
    for topic in ("clicks", "orders"):
        for partition in (0, 1):
            inputs.set_idle(topic, partition, True)
    assert inputs.watermark(0) == 1180 * S
    assert inputs.watermark(1) == 1180 * S


def test_when_every_input_is_idle_and_none_was_ever_read_the_task_holds() -> None:
    inputs = clock(0)
    inputs.set_idle("clicks", 0, True)
    inputs.set_idle("orders", 0, True)
    assert inputs.watermark(0) is None
    assert clock().watermark(0) is None  # no input at all


def test_reassigning_a_partition_makes_its_inputs_active_again() -> None:
    inputs = clock(0)
    inputs.observe("clicks", 0, 1000 * S)
    inputs.observe("orders", 0, 100 * S)
    inputs.set_idle("orders", 0, True)
    inputs.assign(0, {"clicks": 1000 * S, "orders": 100 * S})
    assert inputs.idle == set()
    assert inputs.watermark(0) == -20 * S


def test_a_revoked_partition_no_longer_holds_the_others_back() -> None:
    inputs = clock(0, 1)
    inputs.observe("clicks", 0, 100 * S)
    inputs.observe("orders", 0, 100 * S)
    inputs.observe("clicks", 1, 1000 * S)
    inputs.observe("orders", 1, 900 * S)
    inputs.set_idle("clicks", 1, True)
    inputs.set_idle("orders", 1, True)
    assert inputs.watermark(1) == -20 * S  # follows partition 0, still assigned
    inputs.set_idle("clicks", 0, True)
    inputs.revoke(0)
    assert inputs.partitions == {1}
    # nothing of partition 0 is kept: neither its fronts nor its idleness
    assert inputs.idle == {("clicks", 1), ("orders", 1)}
    assert {partition for _, partition in inputs.fronts} == {1}
    assert inputs.fronts_of(0) == {"clicks": NEVER, "orders": NEVER}
    assert inputs.watermark(1) == 880 * S  # every input left is idle: the newest read


def test_an_input_added_after_a_revocation_is_added_to_the_remaining_partitions_only() -> None:
    inputs = clock(0, 1, topics=("clicks/0",))
    inputs.revoke(0)
    inputs.add_inputs(["clicks/0", "clicks/1"])
    assert inputs.topics == ("clicks/0", "clicks/1")
    assert set(inputs.fronts) == {("clicks/0", 1), ("clicks/1", 1)}
    assert inputs.watermark(1) is None  # clicks/1 has no front yet: the task holds
    inputs.observe("clicks/0", 1, 500 * S)
    inputs.observe("clicks/1", 1, 400 * S)
    inputs.set_idle("clicks/0", 1, True)
    inputs.set_idle("clicks/1", 1, True)
    assert inputs.watermark(1) == 380 * S


def test_revoking_a_partition_the_clock_does_not_have_changes_nothing() -> None:
    inputs = clock(0)
    inputs.observe("clicks", 0, 500 * S)
    inputs.revoke(5)
    inputs.revoke(5)
    assert inputs.partitions == {0}
    assert inputs.fronts_of(0) == {"clicks": 500 * S, "orders": NEVER}
