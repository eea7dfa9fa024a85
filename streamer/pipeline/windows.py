"""Windows stage: merge every partition's partials into final window stats.

Reads ``funnel.partials`` (one partition: a few records per window, so one merger sees them
all), keeps pending windows and each source partition's watermark in the ``window-merge``
table, and publishes a window to ``funnel.windows`` once every source partition's watermark
has passed its end. The first partial of a partition for a window wins (a partition re-emits
after a restore); a window already published is never published again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

from streamer.events import SegmentStats, StageStats, TimeToConvert, WindowStats
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.windows import (
    TIME_TO_CONVERT_BUCKETS_MS,
    StepCounts,
    WindowCounts,
    fold_segments,
    merge_partials,
)
from streamer.metrics import Metrics

__all__ = ["WindowMerger", "window_stats"]

log = logging.getLogger(__name__)

SendFn = Callable[[bytes | None, bytes], Awaitable[Any]]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _stage_stats(name: str, counts: StepCounts, *, histogram: bool) -> StageStats:
    decided = counts.converted + counts.dropped
    time_to_convert = None
    if histogram and counts.converted:
        bounds: list[float | None] = [ms / 1000 for ms in TIME_TO_CONVERT_BUCKETS_MS]
        time_to_convert = TimeToConvert(
            sum_seconds=counts.time_to_convert_ms_sum / 1000,
            count=counts.converted,
            buckets=list(zip([*bounds, None], counts.time_to_convert_buckets, strict=True)),
        )
    return StageStats(
        stage=name,
        entered=counts.entered,
        converted=counts.converted,
        dropped=counts.dropped,
        conversion_ratio=_ratio(counts.converted, decided),
        drop_off_ratio=_ratio(counts.dropped, decided),
        dropped_value=round(counts.dropped_value, 2),
        time_to_convert=time_to_convert,
    )


def window_stats(
    funnel: FunnelDefinition, start_ms: int, partitions: int, counts: WindowCounts
) -> WindowStats:
    folded = fold_segments(counts, [segment.cap for segment in funnel.segments])
    names = [stage.name for stage in funnel.stages]
    return WindowStats(
        window_id=f"{funnel.name}/{start_ms}",
        funnel=funnel.name,
        window_start=datetime.fromtimestamp(start_ms / 1000, tz=UTC),
        window_end=datetime.fromtimestamp((start_ms + funnel.window_ms) / 1000, tz=UTC),
        partitions=partitions,
        stages=[
            _stage_stats(name, step, histogram=True)
            for name, step in zip(names, folded.stages, strict=True)
        ],
        segments=[
            SegmentStats(
                dimension=funnel.segments[dim].name,
                value=value,
                stages=[
                    _stage_stats(name, step, histogram=False)
                    for name, step in zip(names, steps, strict=True)
                ],
            )
            for (dim, value), steps in sorted(folded.segments.items())
        ],
    )


class WindowMerger:
    def __init__(
        self,
        *,
        funnels: tuple[FunnelDefinition, ...],
        source_partitions: int,
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        send_window: SendFn,
    ) -> None:
        self._funnels = {funnel.name: funnel for funnel in funnels}
        self._source_partitions = source_partitions
        self._table = table
        self._metrics = metrics
        self._send_window = send_window

    def _get(self, key: str, default: Any) -> Any:
        raw = self._table.get(key)
        return orjson.loads(raw) if raw is not None else default

    def _put(self, key: str, value: Any) -> None:
        self._table[key] = orjson.dumps(value)

    async def process(self, value: bytes) -> list[WindowStats]:
        record = orjson.loads(value)
        if record.get("kind") == "progress":
            progress = self._get("progress", {})
            partition = str(record["partition"])
            if int(record["watermark"]) > int(progress.get(partition, -(2**62))):
                progress[partition] = int(record["watermark"])
                self._put("progress", progress)
            return await self._publish_complete(progress)
        funnel = self._funnels.get(str(record.get("funnel")))
        if funnel is None:
            log.warning("partial for unknown funnel %r ignored", record.get("funnel"))
            return []
        if int(record["end"]) <= int(self._get(f"final:{funnel.name}", -(2**62))):
            return []  # re-emitted after a restore; this window is published already
        key = f"pending:{funnel.name}:{int(record['start']):015d}"
        pending = self._get(key, {"start": int(record["start"]), "parts": {}})
        pending["parts"].setdefault(str(record["partition"]), record["counts"])  # first wins
        self._put(key, pending)
        return []

    async def _publish_complete(self, progress: dict[str, int]) -> list[WindowStats]:
        if len(progress) < self._source_partitions:
            return []
        complete_until = min(progress[str(p)] for p in range(self._source_partitions))
        published = []
        for key in sorted(k for k in list(self._table.keys()) if k.startswith("pending:")):
            _, funnel_name, _ = key.split(":", 2)
            funnel = self._funnels.get(funnel_name)
            pending = self._get(key, None)
            if funnel is None or pending is None:
                continue
            start = int(pending["start"])
            if start + funnel.window_ms > complete_until:
                continue
            counts = merge_partials(
                len(funnel.stages),
                (WindowCounts.from_json(part) for part in pending["parts"].values()),
            )
            stats = window_stats(funnel, start, self._source_partitions, counts)
            await self._send_window(stats.window_id.encode(), stats.model_dump_json().encode())
            del self._table[key]
            self._put(f"final:{funnel.name}", start + funnel.window_ms)
            self._record(funnel, stats, counts)
            published.append(stats)
        return published

    def _record(self, funnel: FunnelDefinition, stats: WindowStats, counts: WindowCounts) -> None:
        metrics = self._metrics
        metrics.windows_closed.labels(funnel=funnel.name).inc()
        metrics.last_window_end.labels(funnel=funnel.name).set(stats.window_end.timestamp())
        for index, stage in enumerate(stats.stages):
            metrics.funnel_entered.labels(funnel=funnel.name, stage=stage.stage).inc(stage.entered)
            if index == len(stats.stages) - 1:
                continue
            step = funnel.step_names[index]
            metrics.funnel_converted.labels(funnel=funnel.name, step=step).inc(stage.converted)
            metrics.funnel_dropped.labels(funnel=funnel.name, step=step).inc(stage.dropped)
            if stage.conversion_ratio is not None and stage.drop_off_ratio is not None:
                metrics.step_conversion_ratio.labels(funnel=funnel.name, step=step).set(
                    stage.conversion_ratio
                )
                metrics.step_drop_off_ratio.labels(funnel=funnel.name, step=step).set(
                    stage.drop_off_ratio
                )
            raw = counts.stages[index]
            metrics.time_to_convert.observe_buckets(
                funnel.name, step, raw.time_to_convert_buckets, raw.time_to_convert_ms_sum
            )
