"""The partition engine against a batch evaluation of the same events."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.engine import PartitionEngine, PartitionMeta
from streamer.funnel.session import Kind, SessionState, StoredEvent, evaluate
from streamer.funnel.windows import WindowCounts, window_start
from tests.unit.funnel_helpers import MIN, ev, funnel

LATENESS = 2 * MIN
F = funnel()


def session_events(rng: random.Random, session: str, start: int) -> list[StoredEvent]:
    at = start
    out = [ev(at, "page_view", f"{session}-0", **{"context.device": rng.choice(["ios", "web"])})]
    for index, kind in enumerate(["add_to_cart", "checkout_started", "order_placed"], start=1):
        if rng.random() < 0.35:
            break
        at += rng.randint(0, 14 * MIN)
        out.append(
            ev(at, kind, f"{session}-{index}", payment_method=rng.choice(["card", "paypal"]))
        )
    return out


def batch_totals(
    funnel_def: FunnelDefinition, sessions: dict[str, list[StoredEvent]]
) -> dict[int, WindowCounts]:
    totals: dict[int, WindowCounts] = {}
    for events in sessions.values():
        for contribution in evaluate(funnel_def, sorted(events), watermark_ms=10**13).contributions:
            start = window_start(contribution.at_ms, funnel_def.window_ms)
            totals.setdefault(start, WindowCounts.empty(len(funnel_def.stages))).apply(
                contribution, 1
            )
    return totals


def arrival_order(
    rng: random.Random, events: list[tuple[str, StoredEvent]]
) -> list[tuple[str, StoredEvent]]:
    """A shuffle in which no event is later than the allowed lateness."""
    pending = sorted(events, key=lambda item: item[1])
    out: list[tuple[str, StoredEvent]] = []
    newest = -(10**13)
    while pending:
        # Pick among events at most `lateness` newer than the oldest pending one, so that the
        # oldest stays on time whatever comes next.
        oldest = pending[0][1].at_ms
        eligible = [i for i, (_, e) in enumerate(pending[:20]) if e.at_ms <= oldest + LATENESS]
        assert pending[0][1].at_ms >= newest - LATENESS
        choice = rng.choice(eligible)
        item = pending.pop(choice)
        newest = max(newest, item[1].at_ms)
        out.append(item)
    return out


def run_engine(
    arrivals: list[tuple[str, StoredEvent]], *, restore_at: int | None = None
) -> tuple[dict[int, WindowCounts], PartitionEngine]:
    engine = PartitionEngine((F,), partition=0, allowed_lateness_ms=LATENESS, retention_ms=5 * MIN)
    table: dict[str, SessionState] = {}
    emitted: dict[int, WindowCounts] = {}

    def collect(partials: list) -> None:  # type: ignore[type-arg]
        for partial in partials:
            assert partial.window_start_ms not in emitted, "a window was emitted twice"
            emitted[partial.window_start_ms] = partial.counts

    for position, (session, event) in enumerate(arrivals):
        if restore_at is not None and position == restore_at:
            meta = PartitionMeta(0, engine.meta.tick_watermark_ms, -(2**62))
            engine = PartitionEngine(
                (F,), partition=0, allowed_lateness_ms=LATENESS, retention_ms=5 * MIN
            )
            for partial in engine.restore(
                meta, [SessionState.from_json(s.to_json()) for s in table.values()]
            ).partials:
                assert partial.window_start_ms in emitted  # a re-emission, never new
        out = engine.on_event(table.get(session), session, event, table.get)
        assert out.accepted, (session, event)
        if out.write is not None:
            table[session] = out.write
        for gone in out.deletes:
            table.pop(gone)
        collect(out.partials)
    final = engine.on_tick(10**13, table.get)
    collect(final.partials)
    return emitted, engine


def _dataset(
    seed: int, count: int
) -> tuple[dict[str, list[StoredEvent]], list[tuple[str, StoredEvent]]]:
    rng = random.Random(seed)
    sessions = {
        f"s{i}": session_events(rng, f"s{i}", rng.randint(0, 60 * MIN)) for i in range(count)
    }
    flat = [(s, e) for s, events in sessions.items() for e in events]
    return sessions, arrival_order(rng, flat)


def _as_json(counts: dict[int, WindowCounts]) -> dict[int, object]:
    return {start: c.to_json() for start, c in counts.items() if not c.is_empty()}


@given(seed=st.integers(0, 10**6))
@settings(max_examples=60, deadline=None)
def test_streaming_equals_batch_for_any_arrival_within_lateness(seed: int) -> None:
    sessions, arrivals = _dataset(seed, 25)
    streamed, engine = run_engine(arrivals)
    assert _as_json(streamed) == _as_json(batch_totals(F, sessions))
    assert sum(engine.open_sessions.values()) == 0


@given(seed=st.integers(0, 10**6), cut=st.floats(0.1, 0.9))
@settings(max_examples=40, deadline=None)
def test_a_restore_mid_stream_changes_nothing(seed: int, cut: float) -> None:
    sessions, arrivals = _dataset(seed, 25)
    restored, _ = run_engine(arrivals, restore_at=int(len(arrivals) * cut))
    assert _as_json(restored) == _as_json(batch_totals(F, sessions))


@given(seed=st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_counts_are_conserved_entered_is_converted_plus_dropped_plus_open(seed: int) -> None:
    rng = random.Random(seed)
    sessions = {f"s{i}": session_events(rng, f"s{i}", rng.randint(0, 30 * MIN)) for i in range(30)}
    watermark = rng.randint(0, 90 * MIN)
    entered: Counter[int] = Counter()
    left: Counter[int] = Counter()
    for events in sessions.values():
        result = evaluate(F, sorted(events), watermark)
        for c in result.contributions:
            if c.kind is Kind.ENTERED:
                entered[c.index] += 1
            else:
                left[c.index] += 1
        if result.open_stage is not None:
            left[result.open_stage] += 1
        else:
            assert result.contributions[-1].index in {len(F.stages) - 1} or any(
                c.kind is Kind.DROPPED for c in result.contributions
            )
    last = len(F.stages) - 1
    for stage in range(last):
        assert entered[stage] == left[stage]


def test_late_events_are_refused_and_duplicates_ignored() -> None:
    engine = PartitionEngine((F,), partition=0, allowed_lateness_ms=LATENESS)
    table: dict[str, SessionState] = {}
    first = engine.on_event(None, "a", ev(10 * MIN, "page_view", "a1"), table.get)
    assert first.accepted
    assert first.write is not None
    table["a"] = first.write
    late = engine.on_event(None, "b", ev(7 * MIN, "page_view", "b1"), table.get)
    assert late.late
    assert not late.accepted
    edge = engine.on_event(None, "c", ev(8 * MIN, "page_view", "c1"), table.get)
    assert edge.accepted  # exactly at the watermark is on time
    again = engine.on_event(table["a"], "a", ev(10 * MIN, "page_view", "a1"), table.get)
    assert again.duplicate


def test_ticks_close_windows_of_an_idle_partition_and_report_progress() -> None:
    engine = PartitionEngine((F,), partition=3, allowed_lateness_ms=LATENESS)
    table: dict[str, SessionState] = {}
    out = engine.on_event(None, "a", ev(0, "page_view", "a1"), table.get)
    table["a"] = out.write  # type: ignore[assignment]
    tick = engine.on_tick(5 * MIN, table.get)
    assert tick.progress_ms == 5 * MIN
    assert [(p.window_start_ms, p.partition) for p in tick.partials] == [(0, 3)]
    assert tick.partials[0].counts.stages[0].entered == 1
    assert engine.open_sessions[(0, 0)] == 1


def test_decided_sessions_are_deleted_after_the_retention() -> None:
    engine = PartitionEngine((F,), partition=0, allowed_lateness_ms=LATENESS, retention_ms=5 * MIN)
    table: dict[str, SessionState] = {}
    for event in [ev(0, "page_view", "a1"), ev(MIN, "add_to_cart", "a2")]:
        out = engine.on_event(table.get("a"), "a", event, table.get)
        table["a"] = out.write  # type: ignore[assignment]
    assert engine.on_tick(11 * MIN + 1, table.get).deletes == []  # dropped now, kept a while
    assert engine.open_sessions[(0, 1)] == 0
    assert engine.on_tick(11 * MIN + 5 * MIN + MIN, table.get).deletes == ["a"]


def test_windows_are_per_funnel_and_partials_carry_segments() -> None:
    by_window: dict[int, int] = defaultdict(int)
    engine = PartitionEngine((F,), partition=0, allowed_lateness_ms=LATENESS)
    table: dict[str, SessionState] = {}
    for i, at in enumerate([0, 30_000, 61_000]):
        out = engine.on_event(
            None, f"s{i}", ev(at, "page_view", f"e{i}", **{"context.device": "ios"}), table.get
        )
        table[f"s{i}"] = out.write  # type: ignore[assignment]
    for partial in engine.on_tick(10 * MIN, table.get).partials:
        by_window[partial.window_start_ms] += partial.counts.stages[0].entered
        assert partial.counts.segments[(0, "ios")][0].entered == partial.counts.stages[0].entered
        assert (
            partial.counts.segments[(1, "unknown")][0].entered == partial.counts.stages[0].entered
        )
    assert dict(by_window) == {0: 2, 60_000: 1}
