"""The current funnel, for people: the last closed window and the last hour, per funnel.

:class:`FunnelView` keeps the recent windows (from ``funnel.windows``: the final record of a
window once there is one, else its newest revision, whose ``open`` sessions are not decided
yet; ``final`` says which it is); every worker
tails that topic (:func:`tail_windows`) so any worker's ``/funnel`` answers the same, and
``streamer funnel show`` prints the same data as a table.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import TopicPartition
from pydantic import ValidationError

from streamer.events import WindowStats
from streamer.funnel.satisfaction import Scores
from streamer.kafka_io import make_consumer, stop_consumer, topic_partitions
from streamer.settings import Settings

__all__ = ["FunnelView", "tail_windows"]

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _aggregate(windows: list[WindowStats]) -> list[dict[str, Any]]:
    names = [stage.stage for stage in windows[-1].stages]
    rows = []
    for index, name in enumerate(names):
        entered = sum(w.stages[index].entered for w in windows)
        converted = sum(w.stages[index].converted for w in windows)
        dropped = sum(w.stages[index].dropped for w in windows)
        row: dict[str, Any] = {"stage": name, "entered": entered}
        units = [w.stages[index].units for w in windows]
        if any(n is not None for n in units):  # funnels with uniques: the windows' sum
            row["units"] = sum(n or 0 for n in units)
        if index < len(names) - 1:
            row.update(
                step=f"{name}->{names[index + 1]}",
                converted=converted,
                dropped=dropped,
                excluded=sum(w.stages[index].excluded for w in windows),
                open=sum(w.stages[index].open for w in windows),
                conversion_ratio=_ratio(converted, converted + dropped),
                drop_off_ratio=_ratio(dropped, converted + dropped),
            )
        rows.append(row)
    return rows


def _answers(windows: list[WindowStats]) -> list[dict[str, Any]]:
    """Funnels with surveys: each survey's answers per stage over the windows (the windows'
    sum; per segment value in the records, not here)."""
    summed: dict[tuple[str, str], Scores] = {}
    for window in windows:
        for row in window.answers:
            if row.dimension is not None:
                continue
            scores = summed.setdefault((row.survey, row.stage), Scores(row.kind))
            for score, n in row.distribution.items():
                if n:
                    scores.add(int(score), n)
    out = []
    for (survey, stage), scores in summed.items():
        nps, satisfied = scores.nps(), scores.satisfied_share()
        out.append(
            {
                "survey": survey,
                "kind": scores.kind,
                "stage": stage,
                "answers": scores.answers,
                "low": scores.low,
                "distribution": {str(s): n for s, n in sorted(scores.counts.items())},
                "satisfied_share": None if satisfied is None else round(satisfied, 4),
                "nps": None if nps is None else round(nps, 2),
            }
        )
    return out


def _span(windows: list[WindowStats]) -> dict[str, Any]:
    """A span's stages, and its answers in funnels with surveys."""
    span: dict[str, Any] = {"stages": _aggregate(windows)}
    answers = _answers(windows)
    if answers:
        span["answers"] = answers
    return span


class FunnelView:
    def __init__(self, keep: int = 5000) -> None:
        self._windows: dict[str, dict[str, WindowStats]] = {}
        self._keep = keep

    def add(self, stats: WindowStats) -> None:
        """Keep the final record of each window once there is one, else its newest revision
        (a replayed older one changes nothing)."""
        windows = self._windows.setdefault(stats.funnel, {})
        known = windows.get(stats.window_id)
        if known is not None and (
            known.final or (known.revision >= stats.revision and not stats.final)
        ):
            return
        windows[stats.window_id] = stats
        while len(windows) > self._keep:
            del windows[min(windows, key=lambda wid: windows[wid].window_start)]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, windows in sorted(self._windows.items()):
            ordered = sorted(windows.values(), key=lambda w: w.window_start)
            last = ordered[-1]
            hour_start = last.window_end.timestamp() * 1000 - HOUR_MS
            last_hour = [w for w in ordered if w.window_end.timestamp() * 1000 > hour_start]
            out[name] = {
                "last_window": {
                    "start": last.window_start.isoformat(),
                    "end": last.window_end.isoformat(),
                    "final": last.final,
                    **_span([last]),
                },
                "last_hour": {
                    "start": last_hour[0].window_start.isoformat(),
                    "end": last.window_end.isoformat(),
                    "windows": len(last_hour),
                    "final": all(w.final for w in last_hour),
                    **_span(last_hour),
                },
            }
        return out


async def tail_windows(settings: Settings, view: FunnelView, stop: asyncio.Event) -> None:
    """Feed ``view`` from the windows topic (from its start) until ``stop`` is set."""
    while not stop.is_set():
        partitions = await topic_partitions(settings, settings.windows_topic)
        if partitions:
            break
        await asyncio.sleep(2)
    else:
        return
    consumer = make_consumer(settings, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        assignment = [TopicPartition(settings.windows_topic, p) for p in partitions]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    try:
                        view.add(WindowStats.model_validate_json(message.value or b""))
                    except ValidationError:
                        log.warning(
                            "unreadable record in %s at offset %d", message.topic, message.offset
                        )
    finally:
        await stop_consumer(consumer)
