"""Run the streaming core (one task) over events in a given arrival order, and report its
numbers in the oracle's shape (``tests/oracle``), so the two engines can be compared.

Which windows are final is read from the system's own records, not worked out here: a stage's
``final`` is the flag of the window record the windows stage publishes
(:func:`streamer.pipeline.merger.window_stats`), and ``released`` the windows the task itself
let go of as decided (:meth:`Task.drain`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import orjson

from streamer.events import WindowStats
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.identity import instant_units
from streamer.funnel.session import NEVER, CompiledFunnel, StoredEvent
from streamer.funnel.task import Offer, Task
from streamer.funnel.windows import UNKNOWN, WindowCounts
from streamer.pipeline.merger import window_stats
from tests.support.compare import time_to_convert_summary


@dataclass
class CoreResult:
    windows: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict)
    segments: dict[tuple[str, int, str, str, str], dict[str, int]] = field(default_factory=dict)
    abandonments: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[tuple[str, int, str], bool] = field(default_factory=dict)
    # Per window: its published record says final (all stages), and the task released it.
    window_final: dict[tuple[str, int], bool] = field(default_factory=dict)
    released: set[tuple[str, int]] = field(default_factory=set)
    late: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    # (funnel, window start, survey, stage or "none", segment or "", value or "", score) -> n
    answers: dict[tuple[str, int, str, str, str, str, int], int] = field(default_factory=dict)


def assert_final_consistent(result: CoreResult) -> None:
    """The task releases exactly the windows whose published record is final."""
    final = {key for key, is_final in result.window_final.items() if is_final}
    assert final == result.released, (
        f"windows final in their record but kept by the task: {sorted(final - result.released)}"
        f"; released by the task but not final: {sorted(result.released - final)}"
    )


def stored(event: dict[str, Any]) -> StoredEvent:
    """An oracle-shaped event dict -> the core's stored event (flattened fields)."""
    fields = dict(event.get("properties") or {})
    context = dict(event.get("context") or {})
    for name, variant in (context.pop("experiments", None) or {}).items():
        fields[f"experiment.{name}"] = variant
    for name, value in context.items():
        fields[f"context.{name}"] = value
    return StoredEvent(int(event["at_ms"]), str(event["event_id"]), event["event_type"], fields)


def units(events: Sequence[dict[str, Any]]) -> list[str]:
    """Each event's unit in a user funnel, as the pipeline's re-key by user decides it (per
    session, instant by instant in event time: :func:`streamer.funnel.identity.instant_units`),
    in the order of ``events``."""
    by_session: dict[str, list[int]] = {}
    for index, event in enumerate(events):
        by_session.setdefault(str(event["session_id"]), []).append(index)
    out = [""] * len(events)
    for session_id, indexes in by_session.items():
        indexes.sort(key=lambda i: int(events[i]["at_ms"]))
        known: str | None = None
        for _, group in groupby(indexes, key=lambda i: int(events[i]["at_ms"])):
            instant = list(group)
            carried = [events[i].get("user_id") or None for i in instant]
            assigned, known = instant_units(session_id, known, carried)
            for i, unit in zip(instant, assigned, strict=True):
                out[i] = unit
    return out


def run_core(
    funnels: Sequence[FunnelDefinition],
    events: Iterable[dict[str, Any]],
    watermark_ms: int,
    *,
    lateness_ms: int = 0,
    retention_ms: int = 10**12,
    inactivity_ms: int | None = None,
) -> CoreResult:
    """Offer ``events`` in the given order; after each, move the watermark to the newest event
    time minus ``lateness_ms``; at the end, to ``watermark_ms``. Events marked ``by_identity``
    are offered as an identity's, cut into sessions by ``inactivity_ms``."""
    compiled = tuple(CompiledFunnel(f) for f in funnels)
    task = Task(compiled, 0, retention_ms=retention_ms)
    result = CoreResult()
    events = list(events)
    follows = {f.follows for f in funnels}
    assert len(follows) <= 1, "one task counts one kind of unit: run session and user funnels apart"
    keys = units(events) if follows == {"user"} else [str(e["session_id"]) for e in events]
    partials: dict[tuple[str, int], WindowCounts] = {}
    front = NEVER
    for key, event in zip(keys, events, strict=True):
        cut = inactivity_ms if event.get("by_identity") else None
        outcome = task.offer(key, stored(event), inactivity_ms=cut)
        if outcome is Offer.LATE:
            result.late.append(event["event_id"])
        elif outcome is Offer.DUPLICATE:
            result.duplicates.append(event["event_id"])
        front = max(front, int(event["at_ms"]))
        task.advance(min(front - lateness_ms, watermark_ms))
        _collect(task, partials, result)
    task.advance(watermark_ms)
    _collect(task, partials, result)
    held = {(compiled[funnel_index].name, start) for funnel_index, start in task.windows}
    result.released = set(partials) - held
    for (funnel_index, start), counts in task.windows.items():
        partials[(compiled[funnel_index].name, start)] = counts
    by_name = {f.name: f for f in funnels}
    for (name, start), counts in partials.items():
        _shape(by_name[name], start, counts, watermark_ms, result)
    return result


def _collect(task: Task, partials: dict[tuple[str, int], WindowCounts], result: CoreResult) -> None:
    out = task.drain()
    for partial in out.partials:
        partials[(partial.funnel, partial.window_start_ms)] = partial.counts
    for notice in out.abandonments:
        funnel = task.funnels[notice.funnel]
        abandoned = notice.abandoned
        stage = funnel.definition.stages[abandoned.stage].name
        key = f"{funnel.name}/{notice.session_id}/{abandoned.attempt_ms}/{stage}"
        if notice.order_ms is not None:
            result.abandonments[key]["retracted_ms"] = notice.order_ms
            continue
        result.abandonments[key] = {
            "funnel": funnel.name,
            "stage": stage,
            "session_id": notice.session_id,
            "attempt_ms": abandoned.attempt_ms,
            "abandoned_ms": abandoned.abandoned_ms,
            "last_activity_ms": abandoned.last_activity_ms,
            "cart_value": abandoned.cart_value or None,
            "segments": {
                funnel.definition.segments[i].name: value
                for i, value in enumerate(abandoned.segments)
                if value is not None
            },
            "retracted_ms": None,
        }


def record_answers(record: WindowStats) -> dict[tuple[str, int, str, str, str, str, int], int]:
    """A published window record's answers keyed as the oracle's ``answers``: (funnel, window
    start ms, survey, stage, dimension or "", value or "", score) -> answers."""
    start = round(record.window_start.timestamp() * 1000)
    return {
        (
            record.funnel,
            start,
            row.survey,
            row.stage,
            row.dimension or "",
            row.value or "",
            int(s),
        ): n
        for row in record.answers
        for s, n in row.distribution.items()
        if n
    }


def _shape(
    funnel: FunnelDefinition,
    start: int,
    counts: WindowCounts,
    watermark_ms: int,
    result: CoreResult,
) -> None:
    last = len(funnel.stages) - 1
    record = window_stats(funnel, start, 1, counts, watermark_ms=watermark_ms)
    result.window_final[(funnel.name, start)] = record.final
    for index, stage in enumerate(funnel.stages):
        step = counts.stages[index]
        if not step.entered:
            continue
        key = (funnel.name, start, stage.name)
        result.windows[key] = {
            "entered": step.entered,
            "converted": step.converted,
            "dropped": step.dropped,
            "excluded": step.excluded,
            "open": 0 if index == last else step.open,
            "ttc_sum_ms": step.time_to_convert_ms_sum,
            "ttc_buckets": list(step.time_to_convert_buckets),
            "dropped_value": round(step.dropped_value, 2),
            **time_to_convert_summary(record.stages[index]),
        }
        if funnel.uniques:
            result.windows[key]["units"] = step.units
        result.final[key] = record.stages[index].final
    # The answers as the published record has them (docs/satisfaction.md).
    result.answers.update(record_answers(record))
    for (dim, value), steps in counts.segments.items():
        for index, stage in enumerate(funnel.stages):
            step = steps[index]
            if not step.entered:
                continue
            name = funnel.segments[dim].name
            result.segments[(funnel.name, start, stage.name, name, value or UNKNOWN)] = {
                "entered": step.entered,
                "converted": step.converted,
                "dropped": step.dropped,
                "excluded": step.excluded,
                "open": 0 if index == last else step.open,
            }


def restored_midway(
    funnels: Sequence[FunnelDefinition],
    arriving: Sequence[dict[str, Any]],
    split: int,
    *,
    lateness_ms: int,
    watermark_ms: int,
) -> tuple[Task, Task]:
    """Two tasks fed ``arriving`` (the watermark following the newest event time minus
    ``lateness_ms``): one throughout, one checkpointed through JSON after ``split`` events
    and restored into a new task, as the stage's table stores it. Both end at
    ``watermark_ms``."""
    compiled = tuple(CompiledFunnel(f) for f in funnels)
    expected = Task(compiled, 0, retention_ms=10**12)
    restored = Task(compiled, 0, retention_ms=10**12)
    front = NEVER
    store: dict[str, Any] = {}
    windows: dict[tuple[int, int], Any] = {}
    for index, event in enumerate(arriving):
        front = max(front, int(event["at_ms"]))
        for task in (expected, restored):
            task.offer(event["session_id"], stored(event))
            task.advance(front - lateness_ms)
        if index + 1 == split:
            saved = restored.checkpoint()
            restored.drain()
            store.update(orjson.loads(orjson.dumps(saved.sessions)))
            windows.update(saved.windows)
            restored = Task(compiled, 0, retention_ms=10**12)
            restored.restore(saved.watermark_ms, list(store.items()), windows)
    for task in (expected, restored):
        task.advance(watermark_ms)
    return expected, restored
