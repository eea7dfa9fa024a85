"""Deduplicator and ExpiryIndex with explicit times, against a naive reference."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.dedup import Deduplicator
from streamer.funnel.expiry import ExpiryIndex


def test_expiry_index_pops_due_keys_in_deadline_order() -> None:
    index: ExpiryIndex[str] = ExpiryIndex()
    index.schedule(0, "a", 30)
    index.schedule(0, "b", 10)
    index.schedule(1, "c", 5)
    index.schedule(0, "a", 20)  # rescheduled: the old deadline is ignored
    assert index.next_deadline(0) == 10
    assert list(index.pop_due(0, 15)) == ["b"]
    assert list(index.pop_due(0, 25)) == ["a"]
    assert list(index.pop_due(0, 100)) == []
    assert index.pending(1) == 1
    index.cancel(1, "c")
    assert list(index.pop_due(1, 100)) == []
    assert len(index) == 0


def test_dedup_survives_a_restart_through_its_store() -> None:
    store: dict[str, tuple[int, int]] = {}
    first = Deduplicator(store, horizon_ms=1000)
    assert not first.is_duplicate(0, "e1", 100)
    assert not first.is_duplicate(1, "e2", 100)
    restarted = Deduplicator(store, horizon_ms=1000)
    assert restarted.reindex() == 2
    assert restarted.is_duplicate(0, "e1", 500)
    # Expiry after the restart deletes from the partition the key was written in.
    assert not restarted.is_duplicate(0, "e3", 1200)
    assert "e1" not in store
    assert "e2" in store  # partition 1's clock has not moved
    assert not restarted.is_duplicate(1, "e4", 1101)
    assert "e2" not in store


operations = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from("abcdef"), st.integers(0, 5000)),
    max_size=80,
)


@given(ops=operations, horizon=st.integers(1, 3000))
@settings(max_examples=300, deadline=None)
def test_dedup_matches_a_naive_reference(ops: list[tuple[int, str, int]], horizon: int) -> None:
    store: dict[str, tuple[int, int]] = {}
    dedup = Deduplicator(store, horizon_ms=horizon)
    # Reference: per partition clock; a key is known while clock(partition of first sighting)
    # < first sighting + horizon.
    first_seen: dict[str, tuple[int, int]] = {}
    clocks: dict[int, int] = {}
    for partition, event_id, received in ops:
        clocks[partition] = max(clocks.get(partition, received), received)
        for key, (seen_at, seen_partition) in list(first_seen.items()):
            if seen_partition == partition and seen_at + horizon <= clocks[partition]:
                del first_seen[key]
        expected = event_id in first_seen
        if not expected:
            first_seen[event_id] = (received, partition)
        assert dedup.is_duplicate(partition, event_id, received) == expected
        assert set(store) == set(first_seen)
