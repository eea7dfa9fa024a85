"""Windows stage: merge every partition's partials into cohort window stats, revised until final.

Reads ``funnel.partials`` (one partition, so one merger sees every partition's records in
order): partials carry a partition's whole counts for a window and *replace* its previous one
(so a partition that re-sends after a restart changes nothing), progress records carry its
watermark; lifecycle records (a unit partition's whole figures, replacing its previous ones
too) go to :mod:`streamer.pipeline.lifecycle`. After each progress record the merger
publishes a revision of every window that changed, and the final record of every window
whose cohorts are all decided in every partition (window end + the funnel's longest step
timeout behind every partition's watermark). State lives in the ``window-merge`` table, one
record per window and partition (the partial as received) plus a small one per window for
its revision: a partial is stored once, not the whole window again. A window published final
is never published again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamer.errors import OutputRefusedError
from streamer.events import SegmentStats, StageStats, SurveyStats, TimeToConvert, WindowStats
from streamer.formatting import utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.satisfaction import SCORE_RANGE, scores_by_subject
from streamer.funnel.session import NEVER
from streamer.funnel.windows import (
    TIME_TO_CONVERT_BUCKETS_MS,
    StepCounts,
    WindowCounts,
    fold_segments,
    look_ms,
    merge_partials,
)
from streamer.metrics import LANDING_OUTCOMES, Metrics, campaign_dimension
from streamer.pipeline.detector import DetectorStage
from streamer.pipeline.input_order import ContiguousInput, InputMessage, install_contiguous_input
from streamer.pipeline.lifecycle import LifecycleAggregator
from streamer.pipeline.messages import SendFn
from streamer.pipeline.tables import Deliveries, confirmed_table, stopping_the_worker_on
from streamer.pipeline.topics import record_topic
from streamer.settings import Settings

__all__ = ["WindowMerger", "install", "show_answers", "survey_stats", "window_stats"]

log = logging.getLogger(__name__)

# The detector: a funnel, the watermarks to judge it at (its looks: window boundaries and the
# looks between them, in order) and every cohort window held.
JudgeFn = Callable[[FunnelDefinition, Sequence[int], Mapping[int, WindowCounts]], Awaitable[Any]]
# Revisions of windows not final yet are for people watching (a panel refreshes every 15-30 s):
# at most one per this interval. On a backlog every open window changes every second, and
# building each one's record every second cost 4% of the worker.
REVISION_INTERVAL_S = 5.0
# At most this many windows' looks are judged after a jump of the watermark (a long outage).
MAX_JUDGED_PER_JUMP = 1440
# Multi-day funnels (docs/funnel-semantics.md, "Multi-day windows"): a window stays open for
# days, so on top of the interval above each window is revised at most once per period of
# watermark: its life (window + finality lag) holds about REVISIONS_PER_WINDOW of them (a
# 14-day funnel's hourly windows: once an hour, 337 revisions and the final record).
MULTI_DAY_MS = 86_400_000
REVISIONS_PER_WINDOW = 336


def revision_period_ms(funnel: FunnelDefinition) -> int:
    """Watermark time between two revisions of one window: 0 (only ``REVISION_INTERVAL_S``)
    unless the funnel's cohorts take a day or more to be decided; then the longer of its window
    and its finality lag / ``REVISIONS_PER_WINDOW``."""
    lag = funnel.finality_lag_ms
    if lag < MULTI_DAY_MS:
        return 0
    return max(funnel.window_ms, -(-lag // REVISIONS_PER_WINDOW))


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _stage_stats(
    name: str,
    counts: StepCounts,
    *,
    histogram: bool,
    last: bool,
    final: bool,
    units: bool = False,
) -> StageStats:
    decided = counts.converted + counts.dropped
    time_to_convert = None
    if histogram and counts.converted:
        bounds: list[float | None] = [ms / 1000 for ms in TIME_TO_CONVERT_BUCKETS_MS]
        buckets = list(zip([*bounds, None], counts.time_to_convert_buckets, strict=True))
        # The median is the ceil(n/2)-th smallest conversion: the first bucket whose running
        # count reaches half; it lies above the bound before it.
        running, above, median = 0, 0.0, None
        for bound, n in buckets:
            running += n
            if 2 * running >= counts.converted:
                median = bound
                break
            above = bound or 0.0  # only the last bound is None (+Inf), never passed
        time_to_convert = TimeToConvert(
            sum_seconds=counts.time_to_convert_ms_sum / 1000,
            count=counts.converted,
            buckets=buckets,
            mean_seconds=counts.time_to_convert_ms_sum / counts.converted / 1000,
            median_at_least_seconds=above,
            median_at_most_seconds=median,
        )
    return StageStats(
        stage=name,
        entered=counts.entered,
        converted=counts.converted,
        dropped=counts.dropped,
        excluded=counts.excluded,
        open=0 if last else counts.open,
        units=counts.units if units else None,
        final=final,
        conversion_ratio=_ratio(counts.converted, decided),
        drop_off_ratio=_ratio(counts.dropped, decided),
        dropped_value=round(counts.dropped_value, 2),
        time_to_convert=time_to_convert,
    )


def survey_stats(funnel: FunnelDefinition, counts: WindowCounts) -> list[SurveyStats]:
    """A window's answers per survey, stage and segment value (docs/satisfaction.md), from
    counts whose segment values are folded as its stages' (:func:`fold_segments`)."""
    kinds = [survey.kind for survey in funnel.surveys]
    out = []
    for (survey, stage, dim, value), scores in sorted(
        scores_by_subject(counts.answers, kinds).items()
    ):
        low, high = SCORE_RANGE[scores.kind]
        nps = scores.nps()
        satisfied = scores.satisfied_share()
        out.append(
            SurveyStats(
                survey=funnel.surveys[survey].name,
                kind=scores.kind,
                stage=funnel.stages[stage].name if stage >= 0 else "none",
                dimension=funnel.segments[dim].name if dim >= 0 else None,
                value=value if dim >= 0 else None,
                answers=scores.answers,
                low=scores.low,
                distribution={str(s): scores.counts.get(s, 0) for s in range(low, high + 1)},
                satisfied_share=None if satisfied is None else round(satisfied, 6),
                nps=None if nps is None else round(nps, 4),
            )
        )
    return out


def window_stats(
    funnel: FunnelDefinition,
    start_ms: int,
    partitions: int,
    counts: WindowCounts,
    *,
    watermark_ms: int,
    revision: int = 0,
) -> WindowStats:
    """The record of one cohort window as of ``watermark_ms`` (the lowest partition's)."""
    folded = fold_segments(counts, [segment.cap for segment in funnel.segments])
    names = [stage.name for stage in funnel.stages]
    end_ms = start_ms + funnel.window_ms
    last = len(names) - 1
    final = [
        end_ms + (funnel.step_timeout_ms(k) if k < last else 0) <= watermark_ms
        for k in range(len(names))
    ]

    def stages(steps: list[StepCounts], histogram: bool) -> list[StageStats]:
        # Units per stage only: a window keeps no units per segment value (spec: "Uniques").
        return [
            _stage_stats(
                name,
                step,
                histogram=histogram,
                last=k == last,
                final=final[k],
                units=histogram and funnel.uniques,
            )
            for k, (name, step) in enumerate(zip(names, steps, strict=True))
        ]

    return WindowStats(
        window_id=f"{funnel.name}/{start_ms}",
        revision=revision,
        final=all(final),
        funnel=funnel.name,
        window_start=utc_datetime(start_ms),
        window_end=utc_datetime(end_ms),
        partitions=partitions,
        stages=stages(folded.stages, True),
        segments=[
            SegmentStats(
                dimension=funnel.segments[dim].name, value=value, stages=stages(steps, False)
            )
            for (dim, value), steps in sorted(folded.segments.items())
        ],
        answers=survey_stats(funnel, folded),
    )


@dataclass
class _Window:
    """A pending window in memory: every partition's latest partial, and the merge of them
    (kept until a part changes: revisions and the detector read it)."""

    funnel: FunnelDefinition
    start: int
    revision: int = -1
    revised_at_ms: int = NEVER  # the watermark of its latest revision
    parts: dict[str, tuple[list[Any], WindowCounts]] = field(default_factory=dict)
    stored_revision: bool = False  # its revision record exists in the table
    _merged: WindowCounts | None = None
    _folded: WindowCounts | None = None

    @property
    def decided_at(self) -> int:
        """The watermark at which every cohort of the window is decided."""
        return self.start + self.funnel.window_ms + self.funnel.finality_lag_ms

    @property
    def final_at(self) -> int:
        """The watermark at which it is published final and forgotten: the first window
        boundary at or after ``decided_at``, which the detector judges before (it reads the
        window final there)."""
        return self.start + self.funnel.window_ms + self.funnel.judged_final_lag_ms

    def take(self, partition: str, record: dict[str, Any]) -> None:
        """Partition ``partition``'s partial record replaces its previous one."""
        counts = WindowCounts.from_json(record["counts"])
        self.parts[partition] = (_version(record), counts)
        self._merged = self._folded = None

    def merged(self) -> WindowCounts:
        if self._merged is None:
            self._merged = merge_partials(
                len(self.funnel.stages), (counts for _, counts in self.parts.values())
            )
        return self._merged

    def folded(self) -> WindowCounts:
        if self._folded is None:
            caps = [segment.cap for segment in self.funnel.segments]
            self._folded = fold_segments(self.merged(), caps)
        return self._folded


# A window final at a publish: its key, the window, its record (None: nothing was published,
# its counts are input volume only) and its merged counts.
_Final = tuple[str, _Window, WindowStats | None, WindowCounts]


class _FoldedView(Mapping[int, WindowCounts]):
    """Window start -> merged and folded counts, computed when the detector reads a window
    (it reads the young ones, the newly final ones and those its accumulated spans reach,
    not every window held)."""

    def __init__(self, windows: dict[int, _Window]) -> None:
        self._windows = windows

    def __getitem__(self, start: int) -> WindowCounts:
        return self._windows[start].folded()

    def __iter__(self) -> Iterator[int]:
        return iter(self._windows)

    def __len__(self) -> int:
        return len(self._windows)


def _window_key(funnel: str, start: int) -> str:
    return f"{funnel}:{start:015d}"


def _part_key(window_key: str, partition: str) -> str:
    return f"part:{window_key}:{partition}"


def _revision_key(window_key: str) -> str:
    return f"pending:{window_key}"


def _version(record: dict[str, Any]) -> list[Any]:
    """A partial's (owner generation, input offsets, watermark); absent before versions."""
    return list(record.get("version", [0, 0, 0]))


class WindowMerger:
    def __init__(
        self,
        *,
        funnels: tuple[FunnelDefinition, ...],
        source_partitions: int,
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        send_window: SendFn,
        confirm_windows: Callable[[], Awaitable[None]] | None = None,
        revision_interval_s: float = REVISION_INTERVAL_S,
        monotonic: Callable[[], float] = time.monotonic,
        judge: JudgeFn | None = None,
        lifecycle_cohort_weeks: int = 26,
    ) -> None:
        self._funnels = {funnel.name: funnel for funnel in funnels}
        # Lifecycle funnels' records (whole figures per unit partition): summed apart.
        self.lifecycle = LifecycleAggregator(
            funnels=[funnel.name for funnel in funnels if funnel.lifecycle is not None],
            table=table,
            metrics=metrics,
            cohort_weeks=lifecycle_cohort_weeks,
        )
        self._source_partitions = source_partitions
        # User funnels are counted by unit tasks, reporting as partitions n + source_partitions
        # (streamer.pipeline.units): their watermark, behind the session tasks', holds too.
        units = any(funnel.follows == "user" for funnel in funnels)
        self._reporting = source_partitions * 2 if units else source_partitions
        self._table = table
        self._metrics = metrics
        self._send_window = send_window
        self._confirm_windows = confirm_windows
        self._revision_interval = revision_interval_s
        self._monotonic = monotonic
        self._judge = judge
        self._changed: set[str] = set()  # windows with a partial since their last revision
        # In memory, rebuilt from the table after every assignment: the pending windows
        # ("funnel:start" -> window), the partitions' progress, the watermark last published at.
        self._windows: dict[str, _Window] | None = None
        self._progress: dict[str, int] = {}
        self._generations: dict[str, int] = {}  # partition -> owner generation of its progress
        self._published_watermark = NEVER
        self._revised_at = -float("inf")
        self._decoded: dict[str, Any] = {}  # the small records (progress, marks), decoded

    def reset(self) -> None:
        """Forget the in-memory view (a rebalance may have changed the table under us)."""
        self._windows = None
        self._changed.clear()
        self._decoded.clear()
        self.lifecycle.reset()

    def _load(self) -> dict[str, _Window]:
        if self._windows is None:
            windows: dict[str, _Window] = {}
            for key in list(self._table.keys()):
                kind, _, rest = key.partition(":")
                if kind == "part":
                    window_key, partition = rest.rsplit(":", 1)
                    raw = self._table.get(key)
                    window = self._window(windows, window_key)
                    if raw is not None and window is not None:
                        window.take(partition, orjson.loads(raw))
                elif kind == "pending":
                    self._load_revision(windows, key, rest)
            self._windows = windows
            self._progress = self._get("progress", {})
            self._generations = self._get("generations", {})
            self._published_watermark = NEVER  # re-examine every window once
        return self._windows

    def _window(self, windows: dict[str, _Window], window_key: str) -> _Window | None:
        """The pending window ``window_key`` of ``windows``, made if new (None: a funnel not
        run any more)."""
        window = windows.get(window_key)
        if window is None:
            funnel_name, start = window_key.rsplit(":", 1)
            funnel = self._funnels.get(funnel_name)
            if funnel is None:
                return None
            window = windows[window_key] = _Window(funnel, int(start))
        return window

    def _load_revision(self, windows: dict[str, _Window], key: str, window_key: str) -> None:
        raw = self._table.get(key)
        window = self._window(windows, window_key)
        if raw is None or window is None:
            return
        pending = orjson.loads(raw)
        window.revision, window.stored_revision = int(pending["revision"]), True
        window.revised_at_ms = int(pending.get("at", NEVER))  # absent before multi-day bounds
        # Stored before partials had records of their own: every partition's counts were in
        # this one record. Split into the new layout once.
        for partition, counts in pending.get("parts", {}).items():
            record = {"kind": "partial", "funnel": window.funnel.name, "start": window.start,
                      "partition": int(partition), "counts": counts,
                      "version": pending.get("versions", {}).get(partition, [0, 0, 0])}  # fmt: skip
            self._table[_part_key(window_key, partition)] = orjson.dumps(record)
            window.take(partition, record)
        if "parts" in pending:  # stored again without them: split once, not at every load
            self._store_revision(window_key, window)

    def _store_revision(self, window_key: str, window: _Window) -> None:
        self._table[_revision_key(window_key)] = orjson.dumps(
            {"start": window.start, "revision": window.revision, "at": window.revised_at_ms}
        )
        window.stored_revision = True

    def _get(self, key: str, default: Any) -> Any:
        if key in self._decoded:
            return self._decoded[key]
        raw = self._table.get(key)
        if raw is None:
            return default
        value = self._decoded[key] = orjson.loads(raw)
        return value

    def _put(self, key: str, value: Any) -> None:
        self._table[key] = orjson.dumps(value)
        self._decoded[key] = value

    def _delete(self, key: str) -> None:
        del self._table[key]
        self._decoded.pop(key, None)

    def _drop(self, windows: dict[str, _Window], window_key: str) -> None:
        """Forget a pending window: its partition records and its revision record. From the
        view ``windows`` the caller works on (a rebalance may reset the merger while it
        awaits, and the next record reloads the view from the table)."""
        window = windows.pop(window_key)
        self._changed.discard(window_key)
        for partition in window.parts:
            del self._table[_part_key(window_key, partition)]
        if window.stored_revision:
            del self._table[_revision_key(window_key)]

    def _mark_final(self, window: _Window) -> None:
        """Windows of the funnel up to this one are done: a partial for one is a late copy."""
        key = f"final:{window.funnel.name}"
        self._put(key, max(window.start + 1, self._get(key, NEVER)))

    async def process(self, value: bytes) -> list[WindowStats]:
        windows = self._load()
        record = orjson.loads(value)
        if record.get("kind") == "start":
            self._start_funnel(record)
            return []
        if record.get("kind") == "lifecycle":
            self.lifecycle.take(value)
            return []
        if record.get("kind") == "progress":
            partition = str(record["partition"])
            watermark, generation = int(record["watermark"]), int(record.get("generation", 0))
            known = int(self._generations.get(partition, 0))
            # A new owner (restart, rebalance) restarts from its checkpoint, which may be
            # behind what the previous owner reported: its windows are final only once it
            # has got there again (a funnel it took up counts them only from there).
            if generation > known or (
                generation == known and watermark > int(self._progress.get(partition, NEVER))
            ):
                self._progress[partition] = watermark
                self._put("progress", self._progress)
                if generation > known:
                    self._generations[partition] = generation
                    self._put("generations", self._generations)
            return await self._publish()
        funnel = self._funnels.get(str(record.get("funnel")))
        if funnel is None:
            log.warning("partial for unknown funnel %r ignored", record.get("funnel"))
            return []
        start = int(record["start"])
        if start < int(self._get(f"final:{funnel.name}", NEVER)):
            self._metrics.late_partials.inc()  # re-sent after a restart: already final here
            return []
        window_key = _window_key(funnel.name, start)
        window = self._window(windows, window_key)
        assert window is not None
        partition = str(record["partition"])
        held = window.parts.get(partition)
        if held is not None and _version(record) < held[0]:
            self._metrics.late_partials.inc()  # an older view of the partition: kept the newer
            return []
        self._table[_part_key(window_key, partition)] = value  # replaces its previous
        window.take(partition, record)
        self._changed.add(window_key)
        return []

    def _start_funnel(self, record: dict[str, Any]) -> None:
        """A partition took up a funnel added to a running worker: its counts of that funnel
        are whole from window ``from`` on (the windows already final there at the hand-over
        were never counted). The funnel is held until every partition has said so, then
        starts at the latest of their windows: an earlier window would lack some partition's
        sessions (the detector has history's cohorts from ``streamer backfill``)."""
        windows = self._load()
        funnel = self._funnels.get(str(record.get("funnel")))
        if funnel is None or any(
            self._get(f"{state}:{funnel.name}", None) is not None for state in ("started", "final")
        ):
            return  # a funnel this merger already runs: a partition restarting, nothing new
        key = f"start:{funnel.name}"
        starts = self._get(key, {})
        starts[str(record["partition"])] = int(record["from"])
        self._put(key, starts)
        if len(starts) < self._source_partitions:
            return
        begin = max(starts.values())
        for window_key, window in list(windows.items()):
            if window.funnel is funnel and window.start < begin:
                self._drop(windows, window_key)
        self._put(f"final:{funnel.name}", max(begin, self._get(f"final:{funnel.name}", NEVER)))
        self._put(f"started:{funnel.name}", begin)
        self._delete(key)
        log.info(
            "funnel %s: every partition took it up; its windows start %s",
            funnel.name,
            _start_text(begin),
        )

    def _held(self, funnel: FunnelDefinition) -> bool:
        """A funnel some partitions have taken up and others not yet (see ``_start_funnel``)."""
        return (
            f"start:{funnel.name}" in self._decoded
            or self._table.get(f"start:{funnel.name}") is not None
        )

    def _watermark(self) -> int:
        progress = self._progress
        if len(progress) < self._reporting:
            return NEVER  # a partition never reported: nothing is final yet
        return min(progress.get(str(p), NEVER) for p in range(self._reporting))

    async def _publish(self) -> list[WindowStats]:
        """Final records of the windows every partition has decided; revisions of changed
        ones at most once per ``revision_interval_s`` (a progress record comes several times
        a second per partition, and a revision is for people watching, not for correctness)."""
        windows = self._load()
        watermark = self._watermark()
        now = self._monotonic()
        revise = bool(self._changed) and now - self._revised_at >= self._revision_interval
        if watermark == self._published_watermark and not revise:
            return []
        self._published_watermark = watermark
        if revise:
            self._revised_at = now
        if self._judge is not None and watermark > NEVER:
            await self._judge_up_to(watermark, windows)
        published = []
        # Final windows to forget once their records are on the broker (stats None: nothing
        # to publish).
        finals: list[_Final] = []
        for key in self._due(windows, watermark, revise):
            window = windows[key]
            funnel, start = window.funnel, window.start
            counts = window.merged()
            if not counts.answers and all(step.is_empty() for step in counts.stages):
                # Input volume only (events that moved no session into or out of a stage, and
                # no survey answer): nothing to publish; the tracking check has read it.
                self._changed.discard(key)
                if window.final_at <= watermark:
                    finals.append((key, window, None, counts))
                continue
            revision = window.revision + 1
            stats = window_stats(
                funnel,
                start,
                self._source_partitions,
                counts,
                watermark_ms=watermark,
                revision=revision,
            )
            await self._send_window(stats.window_id.encode(), stats.model_dump_json().encode())
            published.append(stats)
            self._changed.discard(key)
            if stats.final:
                finals.append((key, window, stats, counts))
            else:
                window.revision, window.revised_at_ms = revision, watermark
                self._store_revision(key, window)
        await self._forget_finals(windows, finals, published=bool(published))
        return published

    def _due(self, windows: dict[str, _Window], watermark: int, revise: bool) -> list[str]:
        """The windows to publish now, in key order: those final at ``watermark`` and, when
        revising, those changed (a multi-day funnel's: once its ``revision_period_ms`` has
        passed since its latest revision); none of a funnel held back (see ``_held``)."""
        held = {name: self._held(funnel) for name, funnel in self._funnels.items()}
        periods = {name: revision_period_ms(funnel) for name, funnel in self._funnels.items()}
        due = []
        for key, window in windows.items():
            name = window.funnel.name
            if held[name]:
                continue
            if window.final_at <= watermark or (
                revise
                and key in self._changed
                and watermark >= window.revised_at_ms + periods[name]
                and watermark < window.decided_at  # decided: its final record comes next
            ):
                due.append(key)
        return sorted(due)

    async def _forget_finals(
        self, windows: dict[str, _Window], finals: list[_Final], *, published: bool
    ) -> None:
        """Drop the final windows from the state, each counted in the metrics once."""
        if published and finals and self._confirm_windows is not None:
            # A final record on the broker before the state that forgets its window: killed
            # in between, the window is published final again (same id and content), never
            # dropped unpublished.
            await self._confirm_windows()
        for key, window, final_stats, counts in finals:
            self._drop(windows, key)
            self._mark_final(window)
            if final_stats is not None:
                self._record(window.funnel, final_stats, counts)

    async def _judge_up_to(self, watermark: int, windows: dict[str, _Window]) -> None:
        """Let the detector judge every look (window boundaries and the looks between them,
        ``look_ms``) the watermark passed since the last time, with every window held (each
        partition's counts reflect at least this watermark). Before final windows are
        dropped: the detector reads them once."""
        assert self._judge is not None
        for funnel in self._funnels.values():
            if self._held(funnel):
                continue
            size, look = funnel.window_ms, look_ms(funnel.window_ms)
            latest = watermark - watermark % look
            judged_key = f"judged:{funnel.name}"
            last = int(self._get(judged_key, NEVER))
            if latest <= last:
                continue
            earliest = latest - MAX_JUDGED_PER_JUMP * size
            held = {w.start: w for w in windows.values() if w.funnel is funnel}
            if last == NEVER:
                # A first start judges from the end of the first window it holds, not from
                # wherever the watermark stands when this runs (how far a first burst of
                # input got by then is chance): the same boundaries as a replay of its input.
                if not held:
                    continue  # nothing of it yet (a funnel just added may be held back soon)
                first = max(min(held) + size, earliest)
            else:
                first = max(last + look, earliest)
            first += -first % look  # on the grid of looks (a mark stored before them is too)
            await self._judge(funnel, range(first, latest + 1, look), _FoldedView(held))
            self._put(judged_key, latest)

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
            metrics.funnel_excluded.labels(funnel=funnel.name, step=step).inc(stage.excluded)
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
        show_answers(metrics, funnel, stats)
        # Landing bounce by campaign: mismatched messaging shows as one campaign's bounce.
        campaign = campaign_dimension(funnel)
        for segment in stats.segments if campaign is not None else ():
            if segment.dimension == campaign and len(segment.stages) > 1:
                first = segment.stages[0]
                for outcome, count in zip(
                    LANDING_OUTCOMES, (first.converted, first.dropped), strict=True
                ):
                    metrics.landing_outcomes.labels(
                        funnel=funnel.name, campaign=segment.value, outcome=outcome
                    ).inc(count)


def show_answers(metrics: Metrics, funnel: FunnelDefinition, stats: WindowStats) -> None:
    """The survey gauges of a final window (docs/satisfaction.md): every score of every
    survey and stage (0 when none gave it); the figures of the subjects with answers."""
    if not funnel.surveys:
        return
    given = {(row.survey, row.stage): row for row in stats.answers if row.dimension is None}
    for survey in funnel.surveys:
        low, high = SCORE_RANGE[survey.kind]
        for stage in ("none", *(s.name for s in funnel.stages)):
            row = given.get((survey.name, stage))
            for score in range(low, high + 1):
                n = row.distribution.get(str(score), 0) if row is not None else 0
                metrics.survey_answers.labels(
                    funnel=funnel.name, survey=survey.name, stage=stage, score=score
                ).set(n)
    for row in stats.answers:
        headline = row.nps if row.kind == "nps" else row.satisfied_share
        labels = {
            "funnel": funnel.name,
            "survey": row.survey,
            "stage": row.stage,
            "dimension": row.dimension or "",
            "value": row.value or "",
        }
        if headline is not None:
            metrics.survey_score.labels(**labels, figure=row.kind).set(headline)
        metrics.survey_score.labels(**labels, figure="low").set(row.low / row.answers)


def install(
    app: Any,
    settings: Settings,
    metrics: Metrics,
    funnels: tuple[FunnelDefinition, ...],
    detector: DetectorStage | None = None,
) -> WindowMerger:
    """Wire the merger: ``funnel.partials`` -> ``window-merge`` table -> ``funnel.windows``,
    and the detector once per window of watermark."""
    partials = record_topic(app, settings.partials_topic, partitions=1)
    windows = record_topic(app, settings.windows_topic, partitions=1)

    table = confirmed_table(app, "window-merge", partitions=1)
    sent_windows = Deliveries()

    async def confirm_writes() -> None:
        await table.confirm_sent()
        await sent_windows.confirm()
        if detector is not None:
            await detector.confirm_sent()

    merger = WindowMerger(
        funnels=funnels,
        source_partitions=settings.topic_partitions,
        table=table,
        metrics=metrics,
        send_window=sent_windows.sender(windows),
        confirm_windows=sent_windows.confirm,
        judge=detector.judge if detector is not None else None,
        lifecycle_cohort_weeks=settings.lifecycle_cohort_weeks,
    )

    ordered = install_contiguous_input(
        app,
        settings,
        table=table,
        topic=settings.partials_topic,
        stage="windows",
        apply=_merging(merger, metrics, confirm_writes),
        metrics=metrics,
    )
    app.agent(partials, name="windows")(_windows_agent(app, ordered))

    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        merger.reset()

    app.on_partitions_assigned.connect(on_assigned)
    return merger


def _merging(
    merger: WindowMerger, metrics: Metrics, confirm_writes: Callable[[], Awaitable[None]]
) -> Callable[[InputMessage], Awaitable[None]]:
    """Apply one partial record: merge it (a bad one counted and skipped), then wait until
    the state writes and records it caused are on the broker."""

    async def apply(message: InputMessage) -> None:
        try:
            await merger.process(message.value or b"")
        except OutputRefusedError:
            raise
        except Exception:  # a bad record must not stop the merger (and lose the rest)
            metrics.merge_errors.inc()
            log.exception("window merger could not process a record; skipped")
        await confirm_writes()

    return apply


def _windows_agent(app: Any, ordered: ContiguousInput) -> Callable[[Any], Awaitable[None]]:
    """The windows stage's Faust agent over ``funnel.partials``."""

    async def windows_agent(stream: Any) -> None:
        # Acked only once handled and its state writes and output records are on the
        # broker: a commit flushes Faust's send buffer for at most 0.1 s, so a worker killed
        # after the commit could otherwise lose a partition's part of a window, which no one
        # sends again (the chaos test saw the last window never final), and a record the
        # broker refused would be lost without a trace. A worker stopped mid-record reads it
        # again (the merger's state makes that harmless); it is never acked half done. Records
        # Faust skipped are read directly (a missing partial would make a window final
        # without a partition's counts: the chaos test saw one).
        async for event in stream.noack().events():
            async with stopping_the_worker_on(
                app, "windows stage could not write its outputs", OutputRefusedError
            ):
                await ordered.deliver(InputMessage.of(event.message))
            event.ack()

    return windows_agent


def _start_text(start_ms: int) -> str:
    """Where a funnel's windows start, for a log line: a time, or "with the first event" for
    the sentinel that means "from the beginning" (never a raw -2**62)."""
    if start_ms <= NEVER:
        return "with the first event"
    return "at " + utc_datetime(start_ms).isoformat()
