"""One partition's funnel engine: watermark, session evaluation, open windows, partials. Pure.

The adapter feeds it events and ticks of one partition and gives it a way to load session
states; it answers with what to write, delete, dead-letter and emit. Everything it keeps in
memory (watermark, open-window counts, open-session counts, deadlines) is rebuilt exactly
from the session states by :meth:`PartitionEngine.restore`, so a crash or a rebalance never
loses or double-counts a contribution.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.expiry import ExpiryIndex
from streamer.funnel.session import (
    Contribution,
    Evaluation,
    Kind,
    Retraction,
    SessionState,
    StoredEvent,
    evaluate,
)
from streamer.funnel.windows import Partial, WindowCounts, window_start

__all__ = ["EngineOutput", "PartitionEngine", "PartitionMeta"]

NEVER = -(2**62)


@dataclass
class PartitionMeta:
    """What a partition persists on each tick (the rest is derived from session states)."""

    partition: int
    tick_watermark_ms: int = NEVER
    max_event_ms: int = NEVER


@dataclass
class EngineOutput:
    accepted: bool = False
    late: bool = False
    duplicate: bool = False
    overflow: bool = False
    write: SessionState | None = None
    deletes: list[str] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)
    progress_ms: int | None = None  # the partition's new watermark, when it crossed a window end
    # (funnel index, session, drop) for drops at a funnel's abandonment stages
    abandonments: list[tuple[int, SessionState, Contribution]] = field(default_factory=list)
    retractions: list[tuple[int, SessionState, Retraction]] = field(default_factory=list)


Loader = Callable[[str], SessionState | None]


class PartitionEngine:
    def __init__(
        self,
        funnels: tuple[FunnelDefinition, ...],
        partition: int,
        *,
        allowed_lateness_ms: int,
        retention_ms: int = 600_000,
    ) -> None:
        self.funnels = funnels
        self.partition = partition
        self.lateness_ms = allowed_lateness_ms
        self.retention_ms = retention_ms
        self.meta = PartitionMeta(partition)
        self._windows: dict[tuple[int, int], WindowCounts] = {}
        self._applied: dict[str, tuple[Evaluation, ...]] = {}
        self._deadlines: ExpiryIndex[str] = ExpiryIndex()
        self.open_sessions: Counter[tuple[int, int]] = Counter()  # (funnel, stage) -> sessions
        self._boundary = min(f.window_ms for f in funnels) if funnels else 60_000

    # --- time --------------------------------------------------------------------------
    @property
    def watermark_ms(self) -> int:
        from_events = (
            self.meta.max_event_ms - self.lateness_ms if self.meta.max_event_ms > NEVER else NEVER
        )
        return max(from_events, self.meta.tick_watermark_ms)

    # --- input ---------------------------------------------------------------------------
    def on_event(
        self, state: SessionState | None, session_id: str, event: StoredEvent, load: Loader
    ) -> EngineOutput:
        """Apply one event of ``session_id`` (whose current state is ``state``)."""
        out = EngineOutput()
        if event.at_ms < self.watermark_ms:
            out.late = True
            return out
        state = state or SessionState(session_id, self.partition)
        if state.has(event.event_id):
            out.duplicate = True
            return out
        if len(state.events) >= max(f.max_events_per_session for f in self.funnels):
            out.overflow = True
            return out
        state.add(event)
        self._reevaluate(state, out)
        out.accepted = True
        out.write = state
        self._advance(
            max(self.meta.max_event_ms, event.at_ms), self.meta.tick_watermark_ms, load, out
        )
        return out

    def on_tick(self, watermark_ms: int, load: Loader) -> EngineOutput:
        """A tick asserts that no event older than ``watermark_ms`` will come any more."""
        out = EngineOutput()
        self._advance(
            self.meta.max_event_ms, max(self.meta.tick_watermark_ms, watermark_ms), load, out
        )
        out.progress_ms = self.watermark_ms
        return out

    # --- recovery ------------------------------------------------------------------------
    def restore(self, meta: PartitionMeta, states: Iterable[SessionState]) -> EngineOutput:
        """Rebuild memory from persisted state. Returns, to send again, the partials of recently
        closed windows (the merger keeps the first copy it received of each) and the recent
        abandonments (their ids are deterministic: consumers drop the second copy)."""
        out = EngineOutput()
        self.meta = meta
        self._windows.clear()
        self._applied.clear()
        self._deadlines = ExpiryIndex()
        self.open_sessions.clear()
        states = list(states)
        for state in states:
            if state.events:
                self.meta.max_event_ms = max(self.meta.max_event_ms, state.last_ms)
        watermark = self.watermark_ms
        recent: dict[tuple[int, int], WindowCounts] = {}
        for state in states:
            evaluations = self._evaluate_all(state, watermark)
            self._applied[state.session_id] = evaluations
            for funnel_index, evaluation in enumerate(evaluations):
                funnel = self.funnels[funnel_index]
                for contribution in evaluation.contributions:
                    start = window_start(contribution.at_ms, funnel.window_ms)
                    end = start + funnel.window_ms
                    if end > watermark:
                        self._window(funnel_index, start).apply(contribution, +1)
                    elif end > watermark - self.retention_ms:
                        recent.setdefault(
                            (funnel_index, start), WindowCounts.empty(len(funnel.stages))
                        ).apply(contribution, +1)
                        if self._abandons(funnel_index, contribution):
                            out.abandonments.append((funnel_index, state, contribution))
                if evaluation.open_stage is not None:
                    self.open_sessions[(funnel_index, evaluation.open_stage)] += 1
            self._schedule(state, evaluations)
        out.partials = [
            Partial(
                self.funnels[f].name,
                start,
                start + self.funnels[f].window_ms,
                self.partition,
                counts,
            )
            for (f, start), counts in sorted(recent.items())
            if not counts.is_empty()
        ]
        return out

    # --- internals -----------------------------------------------------------------------
    def _evaluate_all(self, state: SessionState, watermark: int) -> tuple[Evaluation, ...]:
        return tuple(evaluate(funnel, state.events, watermark) for funnel in self.funnels)

    def _window(self, funnel_index: int, start: int) -> WindowCounts:
        counts = self._windows.get((funnel_index, start))
        if counts is None:
            stages = len(self.funnels[funnel_index].stages)
            counts = self._windows[(funnel_index, start)] = WindowCounts.empty(stages)
        return counts

    def _abandons(self, funnel_index: int, contribution: Contribution) -> bool:
        return contribution.kind is Kind.DROPPED and (
            contribution.index in self.funnels[funnel_index].abandonment_stage_indexes
        )

    def _reevaluate(self, state: SessionState, out: EngineOutput) -> tuple[Evaluation, ...]:
        new = self._evaluate_all(state, self.watermark_ms)
        old = self._applied.get(state.session_id)
        for funnel_index, evaluation in enumerate(new):
            funnel = self.funnels[funnel_index]
            before = Counter(old[funnel_index].contributions) if old else Counter()
            after = Counter(evaluation.contributions)
            for contribution, sign in [(c, +1) for c in (after - before).elements()] + [
                (c, -1) for c in (before - after).elements()
            ]:
                start = window_start(contribution.at_ms, funnel.window_ms)
                self._window(funnel_index, start).apply(contribution, sign)
                if sign > 0 and self._abandons(funnel_index, contribution):
                    out.abandonments.append((funnel_index, state, contribution))
            known = set(old[funnel_index].retractions) if old else set()
            for retraction in evaluation.retractions:
                if retraction not in known:
                    out.retractions.append((funnel_index, state, retraction))
            old_open = old[funnel_index].open_stage if old else None
            if old_open != evaluation.open_stage:
                if old_open is not None:
                    self.open_sessions[(funnel_index, old_open)] -= 1
                if evaluation.open_stage is not None:
                    self.open_sessions[(funnel_index, evaluation.open_stage)] += 1
        self._applied[state.session_id] = new
        self._schedule(state, new)
        return new

    def _schedule(self, state: SessionState, evaluations: tuple[Evaluation, ...]) -> None:
        deadlines = [e.next_deadline_ms for e in evaluations if e.next_deadline_ms is not None]
        if deadlines:
            # A step drops once the watermark is *past* its deadline.
            self._deadlines.schedule(self.partition, state.session_id, min(deadlines) + 1)
            return
        self._deadlines.schedule(
            self.partition, state.session_id, self._delete_at(state, evaluations)
        )

    def _delete_at(self, state: SessionState, evaluations: tuple[Evaluation, ...]) -> int:
        """When a decided session may go: its windows closed, plus the re-emit retention."""
        last_window_end = max(
            (
                window_start(c.at_ms, self.funnels[f].window_ms) + self.funnels[f].window_ms
                for f, e in enumerate(evaluations)
                for c in e.contributions
            ),
            default=state.last_ms,
        )
        return max(last_window_end, state.last_ms + 1) + self.retention_ms

    def _advance(
        self, max_event_ms: int, tick_watermark_ms: int, load: Loader, out: EngineOutput
    ) -> None:
        before = self.watermark_ms
        self.meta.max_event_ms = max_event_ms
        self.meta.tick_watermark_ms = tick_watermark_ms
        after = self.watermark_ms
        if after <= before:
            return
        for session_id in list(self._deadlines.pop_due(self.partition, after)):
            state = load(session_id)
            if state is None:
                self._applied.pop(session_id, None)
                continue
            evaluations = self._reevaluate(state, out)
            undecided = any(e.open_stage is not None for e in evaluations)
            if not undecided and self._due_for_deletion(state, evaluations, after):
                self._deadlines.cancel(self.partition, session_id)
                self._applied.pop(session_id, None)
                out.deletes.append(session_id)
        closing = sorted(
            key for key in self._windows if key[1] + self.funnels[key[0]].window_ms <= after
        )
        for funnel_index, start in closing:
            counts = self._windows.pop((funnel_index, start))
            if not counts.is_empty():
                funnel = self.funnels[funnel_index]
                out.partials.append(
                    Partial(funnel.name, start, start + funnel.window_ms, self.partition, counts)
                )
        if window_start(after, self._boundary) > window_start(before, self._boundary) or closing:
            out.progress_ms = after

    def _due_for_deletion(
        self, state: SessionState, evaluations: tuple[Evaluation, ...], watermark: int
    ) -> bool:
        return self._delete_at(state, evaluations) <= watermark

    def open_window_count(self) -> int:
        return len(self._windows)
