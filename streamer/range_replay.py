"""Replaying a time range of the input topics (``streamer replay --from --to``): the live
worker's core, read-only and deterministic.

:func:`replay_range` reads clickstream and checkout directly (partition assignment, no consumer
group, nothing written to Kafka: live topics, groups and state are untouched, and nothing is
sent to Slack), from the offsets whose broker time is one allowed lateness (and the allowed
clock skew) before ``--from``, up to each partition's first event one lateness past ``--to``
(or its end), and keeps the events whose ``occurred_at`` is in ``[from, to)``. Events of any
age are accepted (no max-age horizon).

:class:`RangeReplay` is the engine, without Kafka: one task holds every session (a task per
partition gives the same numbers: windows merge by summation). Its watermark is, as live, the
minimum of the input partitions' fronts minus the allowed lateness, and reaches ``to`` once
every partition is read: sessions still inside their timeouts at ``to`` stay open and are
reported open, never dropped. User funnels (``follows: user``) are counted as the worker
counts them (docs/decisions/0008-user-funnels-pipeline.md): the session task forwards every
event it releases to its unit, and a second task, keyed by unit, counts them; in one process
the hop is a call, and the unit task moves with the session task's watermark (all it is sent
is below it). Each funnel's detector, then its experiments' guard (docs/experiments.md),
judges every look (window boundaries and the early looks between them) up to ``to`` with the
windows folded as the live merger folds them, so for a range that starts where the live
worker's history starts, the alerts are the live ones, with the same ids.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import TopicPartition

from streamer.decode import DecodeLimits, Rejection
from streamer.decoders import (
    ContractDecoder,
    DecodedEvent,
    EventDecoder,
    Ignored,
    event_decoder,
    needed_fields,
    tracking_plan,
)
from streamer.errors import RangeNotHeldError
from streamer.events import (
    Alert,
    ReplayAbandonments,
    ReplayEvents,
    ReplayFunnel,
    ReplayReport,
    ReplayRun,
    WindowStats,
    to_epoch_ms,
)
from streamer.formatting import utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.detect import AlertDecision, FunnelDetector
from streamer.funnel.experiments import ExperimentGuard
from streamer.funnel.satisfaction import LowScoreDetector
from streamer.funnel.session import NEVER, CompiledFunnel
from streamer.funnel.task import Offer, Task, TaskOutput
from streamer.funnel.windows import (
    WindowCounts,
    fold_segments,
    look_ms,
    merge_partials,
    window_start,
)
from streamer.kafka_io import make_consumer, make_producer, stop_consumer, topic_partitions
from streamer.pipeline.detector import alert_record, tracking_alert_record
from streamer.pipeline.guardrails import experiment_alert_record
from streamer.pipeline.low_scores import judge_low_scores, low_score_alert_record
from streamer.pipeline.merger import window_stats
from streamer.pipeline.units import session_funnels, unit_retention_ms, unit_user, user_funnels
from streamer.plan.compile import CompiledPlan
from streamer.settings import Settings

__all__ = ["RangeReplay", "backfill", "diff_reports", "notify_alerts", "replay_range"]

# Events of any age are replayed; the live worker's other limits apply.
ANY_AGE = timedelta(days=365 * 100)

# Where the worker's unit tasks read forwarded events (their volume's source), by default.
DEFAULT_UNITS_TOPIC: str = Settings.model_fields["units_topic"].default


@dataclass
class _FunnelRun:
    funnel: FunnelDefinition
    index: int
    detector: FunnelDetector
    guard: ExperimentGuard  # the funnel's experiments, judged on the detector's windows
    windows: dict[int, WindowCounts] = field(default_factory=dict)  # not final yet
    finals: dict[int, WindowStats] = field(default_factory=dict)
    final_counts: dict[int, WindowCounts] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    abandoned: Counter[str] = field(default_factory=Counter)
    retracted: Counter[str] = field(default_factory=Counter)
    judged_ms: int = NEVER
    low_scores: LowScoreDetector = field(default_factory=LowScoreDetector)  # surveys' alert


class RangeReplay:
    """The replay engine: offer decoded events with the input they came from, close inputs
    read to their end, then :meth:`report`. Pure: no Kafka, time is the data's."""

    def __init__(
        self,
        funnels: Iterable[FunnelDefinition],
        *,
        start: datetime,
        end: datetime,
        inputs: Iterable[str],
        allowed_lateness_ms: int,
        retention_ms: int,
        partitions: int,
        dashboard_url: str | None = None,
        runbook_url: str | None = None,
        drain: bool = False,
        decoder: EventDecoder | None = None,
        units_topic: str = DEFAULT_UNITS_TOPIC,
    ) -> None:
        self.funnels = tuple(funnels)
        self.start_ms, self.end_ms = to_epoch_ms(start), to_epoch_ms(end)
        # With ``drain``, read on past ``to`` until every cohort window of the range is final.
        lag = max(f.window_ms + f.finality_lag_ms for f in self.funnels)
        self.until_ms = self.end_ms + lag if drain else self.end_ms
        self.lateness_ms = allowed_lateness_ms
        self.partitions = partitions
        self._links = (dashboard_url, runbook_url)
        self.runs = [
            _FunnelRun(funnel, index, FunnelDetector(funnel), ExperimentGuard(funnel))
            for index, funnel in enumerate(self.funnels)
        ]
        by_name = {run.funnel.name: run for run in self.runs}
        # As the worker splits them: the session task counts the session funnels and forwards
        # what it releases to the unit task, which counts the user funnels. Each task's funnel
        # index maps to its run by these lists (without a user funnel: one task, as before).
        users = user_funnels(self.funnels)
        sessions = session_funnels(self.funnels)
        self.task = Task(
            tuple(CompiledFunnel(f) for f in sessions),
            0,
            retention_ms=retention_ms,
            forwards_units=bool(users),
        )
        self._session_runs = [by_name[f.name] for f in sessions]
        self._unit_runs = [by_name[f.name] for f in users]
        self.unit_task: Task | None = None
        if users:
            self.unit_task = Task(
                tuple(CompiledFunnel(f) for f in users),
                0,
                retention_ms=unit_retention_ms(retention_ms, users),
            )
        # The unit task counts forwarded events' volume under the units topic, as live.
        self.units_topic = units_topic
        # As the worker decodes, events of any age apart (the built-in contract by default).
        self.decoder = decoder or ContractDecoder(
            DecodeLimits(max_age=ANY_AGE), needed_fields(self.funnels)
        )
        self._grid_ms = math.gcd(*(look_ms(f.window_ms) for f in self.funnels))  # every look
        self.fronts: dict[str, int] = dict.fromkeys(inputs, NEVER)
        self.finished: set[str] = set()
        self.counts: Counter[str] = Counter()

    @classmethod
    def configured(
        cls,
        settings: Settings,
        funnels: tuple[FunnelDefinition, ...],
        plan: CompiledPlan | None,
        *,
        start: datetime,
        end: datetime,
        inputs: Iterable[str],
        drain: bool = False,
    ) -> RangeReplay:
        """The engine as ``settings`` configure the worker (lateness, retention, partitions,
        links), decoding by ``plan`` (None: the built-in contract), events of any age."""
        limits = dataclasses.replace(DecodeLimits.of(settings), max_age=ANY_AGE)
        return cls(
            funnels,
            start=start,
            end=end,
            inputs=inputs,
            allowed_lateness_ms=round(settings.allowed_lateness_seconds * 1000),
            retention_ms=round(settings.session_retention_seconds * 1000),
            partitions=settings.topic_partitions,
            dashboard_url=settings.dashboard_url,
            runbook_url=settings.runbook_url,
            drain=drain,
            decoder=event_decoder(plan, limits, needed_fields(funnels)),
            units_topic=settings.units_topic,
        )

    # --- input ---------------------------------------------------------------------------
    def offer(
        self, input_name: str, topic: str, raw: bytes | None, received_at: datetime
    ) -> DecodedEvent | Rejection | Ignored:
        """One message of ``input_name`` (``topic/partition``) received at ``received_at``,
        decoded as the worker does; what it decoded to."""
        return self.offer_decoded(
            input_name, topic, self.decoder.decode(raw, topic=topic, received_at=received_at)
        )

    def offer_decoded(
        self, input_name: str, topic: str, decoded: DecodedEvent | Rejection | Ignored
    ) -> DecodedEvent | Rejection | Ignored:
        """``offer`` of a message its caller decoded already (by this engine's decoder)."""
        self.counts["read"] += 1
        if isinstance(decoded, Rejection):
            self.counts["rejected"] += 1
            return decoded
        if isinstance(decoded, Ignored):
            self.counts["ignored"] += 1
            return decoded
        stored = decoded.event
        if stored.at_ms > self.fronts.get(input_name, NEVER):
            self.fronts[input_name] = stored.at_ms
        in_range = self.start_ms <= stored.at_ms < self.end_ms
        # Past ``to`` (--drain) every event is read: only attempts that started before ``to``
        # are reported, and a user funnel's unit may go on in a session that starts later.
        drained = not in_range and self.end_ms <= stored.at_ms < self.until_ms
        if not (in_range or drained):
            self.counts["out_of_range"] += 1
            return decoded
        outcome = self.task.offer(
            decoded.session_id, stored, decoded.user_id, topic, decoded.inactivity_ms
        )
        if outcome is Offer.ACCEPTED:
            self.counts["in_range" if in_range else "drained"] += 1
        else:
            self.counts["duplicate" if outcome is Offer.DUPLICATE else "late"] += 1
        return decoded

    def finish(self, input_name: str) -> None:
        """``input_name`` is read up to ``to`` (plus the lateness): it holds nothing back."""
        self.finished.add(input_name)

    @property
    def watermark_ms(self) -> int:
        active = [front for name, front in self.fronts.items() if name not in self.finished]
        if not active:
            return self.until_ms
        low = min(active)
        return NEVER if low == NEVER else min(self.until_ms, low - self.lateness_ms)

    def advance(self) -> None:
        """Move the watermark as far as the inputs allow, one look at a time (window
        boundaries and the detector's looks between them: it judges each, as the live merger
        does)."""
        watermark = self.watermark_ms
        if watermark == NEVER or watermark <= self.task.watermark_ms:
            return
        grid, current = self._grid_ms, self.task.watermark_ms
        first = self.start_ms - self.start_ms % grid if current == NEVER else current
        for boundary in range((first // grid + 1) * grid, watermark + 1, grid):
            self._step(boundary)
        if watermark > self.task.watermark_ms:
            self._step(watermark)

    def _step(self, watermark_ms: int) -> None:
        self.task.advance(watermark_ms)
        out = self.task.drain()
        self._collect(out, self._session_runs)
        if self.unit_task is not None:
            # The hop, in release order: everything the session task released is below its
            # watermark, so the unit task takes the same step and nothing is late there.
            for forward in out.forwards:
                unit = forward.unit
                if forward.event.at_ms >= self.end_ms and unit not in self.unit_task.sessions:
                    continue  # drained: a unit first seen past ``to`` has no attempt to decide
                self.unit_task.offer(unit, forward.event, unit_user(unit), self.units_topic)
            self.unit_task.advance(watermark_ms)
            self._collect(self.unit_task.drain(), self._unit_runs)
        for run in self.runs:
            self._judge(run, watermark_ms)

    def _collect(self, out: TaskOutput, runs: list[_FunnelRun]) -> None:
        """One task's output: ``runs`` are its funnels' runs, by the task's funnel index."""
        for partial in out.partials:
            run = next(r for r in runs if r.funnel.name == partial.funnel)
            start = partial.window_start_ms
            if start not in run.finals and start < self.end_ms:  # drained: no new cohorts
                run.windows[start] = partial.counts
        for notice in out.abandonments:
            run = runs[notice.funnel]
            if window_start(notice.abandoned.attempt_ms, run.funnel.window_ms) >= self.end_ms:
                continue  # drained: an attempt that started past ``to`` is not in the range
            stage = run.funnel.stages[notice.abandoned.stage].name
            (run.retracted if notice.order_ms is not None else run.abandoned)[stage] += 1

    def _judge(self, run: _FunnelRun, watermark_ms: int) -> None:
        funnel = run.funnel
        boundary = watermark_ms % funnel.window_ms == 0
        if (
            watermark_ms % look_ms(funnel.window_ms) == 0
            and run.judged_ms < watermark_ms <= self.end_ms  # alerts as of --to
        ):
            run.judged_ms = watermark_ms
            caps = [segment.cap for segment in funnel.segments]
            # An early look reads the windows' slices only, which folding leaves as they are.
            folded = (
                {start: fold_segments(c, caps) for start, c in run.windows.items()}
                if boundary
                else run.windows
            )
            for decision in run.detector.evaluate(watermark_ms, folded):
                if isinstance(decision, AlertDecision):
                    step = decision.alert_id.split("/")[1]
                    run.alerts.append(alert_record(funnel, step, decision, *self._links))
                else:
                    run.alerts.append(tracking_alert_record(funnel, decision, *self._links))
            # As the worker's detector stage: the guard after the detector, on its windows, at
            # window boundaries only.
            for guarded in run.guard.evaluate(watermark_ms, folded) if boundary else ():
                run.alerts.append(experiment_alert_record(funnel, guarded, *self._links))
            if funnel.surveys and boundary:  # the low-score alert too (docs/satisfaction.md)
                for low in judge_low_scores(funnel, run.low_scores, watermark_ms, folded):
                    run.alerts.append(low_score_alert_record(funnel, low, *self._links))
        horizon = funnel.window_ms + funnel.judged_final_lag_ms  # judged final, then let go
        for start in [s for s in run.windows if s + horizon <= watermark_ms]:
            counts = run.final_counts[start] = run.windows.pop(start)
            run.finals[start] = self._stats(run, start, counts, watermark_ms)

    def _stats(
        self, run: _FunnelRun, start: int, counts: WindowCounts, watermark_ms: int
    ) -> WindowStats:
        return window_stats(run.funnel, start, self.partitions, counts, watermark_ms=watermark_ms)

    # --- output ----------------------------------------------------------------------------
    def report(self, run_info: ReplayRun | None = None) -> ReplayReport:
        """Once every input is finished: the numbers as of ``to``."""
        self.advance()
        funnels = []
        for run in self.runs:
            funnel = run.funnel
            windows = dict(run.finals)
            for start, counts in run.windows.items():
                windows[start] = self._stats(run, start, counts, self.until_ms)
            for start in [s for s, w in windows.items() if _volume_only(w)]:
                del windows[start]  # nothing to show (as live)
            total = merge_partials(
                len(funnel.stages), [*run.final_counts.values(), *run.windows.values()]
            )
            totals = window_stats(
                funnel, self.start_ms, self.partitions, total, watermark_ms=self.until_ms
            ).model_copy(
                update={
                    "window_id": f"{funnel.name}/{self.start_ms}-{self.end_ms}",
                    "window_end": utc_datetime(self.end_ms),
                    "final": not run.windows,
                }
            )
            funnels.append(
                ReplayFunnel(
                    funnel=funnel.name,
                    totals=totals,
                    windows=[windows[s] for s in sorted(windows)],
                    abandonments=[
                        ReplayAbandonments(
                            stage=stage,
                            abandoned=run.abandoned[stage],
                            retracted=run.retracted[stage],
                        )
                        for stage in funnel.abandonment
                    ],
                    alerts=run.alerts,
                    warming_up=sorted(
                        step for step, warm in run.detector.warming_up().items() if warm
                    ),
                )
            )
        seen = self.counts
        return ReplayReport(
            range_from=utc_datetime(self.start_ms),
            range_to=utc_datetime(self.end_ms),
            drained_to=utc_datetime(self.until_ms) if self.until_ms > self.end_ms else None,
            allowed_lateness_seconds=self.lateness_ms / 1000,
            topics=sorted({name.rsplit("/", 1)[0] for name in self.fronts}),
            events=ReplayEvents(
                read=seen["read"],
                in_range=seen["in_range"],
                drained=seen["drained"],
                out_of_range=seen["out_of_range"],
                duplicate=seen["duplicate"],
                late=seen["late"],
                rejected=seen["rejected"],
                ignored=seen["ignored"],
            ),
            funnels=funnels,
            run=run_info,
        )


ProgressFn = Callable[[str, int, int], None]  # (input, offsets read, offsets to read)


async def replay_range(
    settings: Settings,
    funnels: Iterable[FunnelDefinition],
    start: datetime,
    end: datetime,
    *,
    progress: ProgressFn | None = None,
    run_info: bool = True,
    overrides: dict[str, str] | None = None,
    drain: bool = False,
) -> ReplayReport:
    """Replay ``[start, end)`` of the input topics through :class:`RangeReplay`, reading each
    partition directly (no consumer group, nothing written). Raises
    :class:`RangeNotHeldError` when a topic no longer holds the start of the range."""
    began, started_at = time.perf_counter(), datetime.now(UTC)
    engine = await _replayed(settings, funnels, start, end, progress, drain=drain)
    seconds = time.perf_counter() - began
    info = ReplayRun(
        started_at=started_at,
        seconds=round(seconds, 3),
        events_per_second=round(engine.counts["read"] / seconds, 1) if seconds else 0.0,
    )
    report = engine.report(info if run_info else None)
    return report.model_copy(update={"overrides": dict(sorted((overrides or {}).items()))})


async def backfill(
    settings: Settings,
    funnels: Iterable[FunnelDefinition],
    start: datetime,
    end: datetime,
    *,
    progress: ProgressFn | None = None,
) -> list[dict[str, Any]]:
    """Replay ``[start, end)`` for ``funnels`` and publish each one's detector baselines to
    the baselines topic (keyed by funnel): a live worker judging a funnel it has no detector
    state for starts from them, warm. Returns the records published."""
    engine = await _replayed(settings, funnels, start, end, progress)
    engine.report()  # the watermark to --to: every cohort final by then is learned
    records = []
    for run in engine.runs:
        records.append(
            {
                "funnel": run.funnel.name,
                "step_names": run.funnel.step_names,
                "range": [start.isoformat(), end.isoformat()],
                "warming_up": sorted(s for s, w in run.detector.warming_up().items() if w),
                "detector": run.detector.seed(),
            }
        )
    producer = make_producer(settings, acks="all")
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(
                settings.baselines_topic,
                key=str(record["funnel"]).encode(),
                value=orjson.dumps(record),
            )
    finally:
        await producer.stop()
    return records


async def _replayed(
    settings: Settings,
    funnels: Iterable[FunnelDefinition],
    start: datetime,
    end: datetime,
    progress: ProgressFn | None,
    *,
    drain: bool = False,
) -> RangeReplay:
    """The engine after reading ``[start, end)`` of the input topics."""
    if end <= start:
        raise ValueError("--to must be after --from")
    started_at = datetime.now(UTC)
    lateness_ms = round(settings.allowed_lateness_seconds * 1000)
    topics = (settings.clickstream_topic, settings.checkout_topic)
    assignment = [
        TopicPartition(topic, p)
        for topic in topics
        for p in await topic_partitions(settings, topic)
    ]
    names = {tp: f"{tp.topic}/{tp.partition}" for tp in assignment}
    engine = RangeReplay.configured(
        settings,
        tuple(funnels),
        tracking_plan(settings),
        start=start,
        end=end,
        inputs=names.values(),
        drain=drain,
    )
    consumer = make_consumer(settings, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign(assignment)
        first = await consumer.beginning_offsets(assignment)
        last = await consumer.end_offsets(assignment)
        earliest = await consumer.offsets_for_times(dict.fromkeys(assignment, 0))
        # Broker time is at or after event time (up to the clock skew the worker allows):
        # nothing in the range was written before this.
        from_ms = to_epoch_ms(start) - lateness_ms - round(settings.max_clock_skew_seconds * 1000)
        found = await consumer.offsets_for_times({tp: max(0, from_ms) for tp in assignment})
        _check_held(assignment, first, earliest, from_ms)
        begin: dict[TopicPartition, int] = {}
        for tp in assignment:
            at = found.get(tp)
            if at is None or at.offset >= last[tp]:
                engine.finish(names[tp])  # nothing from the range on (or nothing at all)
                continue
            begin[tp] = at.offset
            consumer.seek(tp, at.offset)
        reading = set(begin)
        stop_ms = engine.until_ms + lateness_ms
        while reading:
            batch = await consumer.getmany(*reading, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                done = False
                for record in records:
                    received = (
                        utc_datetime(record.timestamp) if record.timestamp > 0 else started_at
                    )
                    event = engine.offer(names[tp], tp.topic, record.value, received)
                    # An event one lateness past --to: no later one of this partition can be
                    # in the range (its disorder is within the lateness, as live).
                    past = isinstance(event, DecodedEvent) and event.event.at_ms > stop_ms
                    if past or record.offset + 1 >= last[tp]:
                        done = True
                        break
                if progress is not None and records:
                    read = records[-1].offset + 1 - begin[tp]
                    progress(names[tp], read, last[tp] - begin[tp])
                if done:
                    reading.discard(tp)
                    engine.finish(names[tp])
            engine.advance()
    finally:
        await stop_consumer(consumer)
    return engine


def _check_held(
    assignment: list[TopicPartition],
    first: dict[TopicPartition, int],
    earliest: dict[TopicPartition, object],
    from_ms: int,
) -> None:
    """The range must start where every partition still holds data (or where nothing was
    ever deleted): else name each topic's earliest time."""
    lost: dict[str, int] = {}
    for tp in assignment:
        held = earliest.get(tp)
        held_ms = getattr(held, "timestamp", None)
        if first[tp] > 0 and held_ms is not None and held_ms > from_ms:
            lost[tp.topic] = max(lost.get(tp.topic, 0), int(held_ms))
    if lost:
        since = ", ".join(
            f"{topic} from {utc_datetime(ms).isoformat()}" for topic, ms in sorted(lost.items())
        )
        raise RangeNotHeldError(
            f"the range starts before what the topics still hold (retention deleted the rest): "
            f"{since}; choose --from at or after that"
        )


def diff_reports(before: ReplayReport, after: ReplayReport) -> dict[str, Any]:
    """What changed from ``before`` to ``after`` (a what-if): alert records added and removed
    (by event id), those on both sides that say something else (severity, kind, explanation:
    listed as they are after), and per step the conversion over the range on both sides."""
    funnels = sorted({f.funnel for f in before.funnels} | {f.funnel for f in after.funnels})
    by_name = {
        side: {f.funnel: f for f in report.funnels}
        for side, report in (("before", before), ("after", after))
    }
    out: dict[str, Any] = {
        "before": {"range": [before.range_from.isoformat(), before.range_to.isoformat()],
                   "overrides": before.overrides},
        "after": {"range": [after.range_from.isoformat(), after.range_to.isoformat()],
                  "overrides": after.overrides},
        "funnels": [],
    }  # fmt: skip
    for name in funnels:
        old, new = by_name["before"].get(name), by_name["after"].get(name)
        old_alerts = {a.event_id: a for a in (old.alerts if old else [])}
        new_alerts = {a.event_id: a for a in (new.alerts if new else [])}

        def brief(alert: Alert) -> dict[str, Any]:
            return {
                "event_id": alert.event_id,
                "state": alert.state,
                "kind": alert.kind,
                "step": alert.step,
                "severity": alert.severity,
                "window_start": alert.window_start.isoformat(),
                "explanation": [f"{e.dimension}={e.value}" for e in alert.explanations],
            }

        steps = []
        old_stages = {s.stage: s for s in (old.totals.stages if old else [])}
        for stage in new.totals.stages[:-1] if new else []:  # the last stage has no step
            previous = old_stages.get(stage.stage)
            steps.append(
                {
                    "stage": stage.stage,
                    "conversion_before": previous.conversion_ratio if previous else None,
                    "conversion_after": stage.conversion_ratio,
                    "entered_before": previous.entered if previous else None,
                    "entered_after": stage.entered,
                }
            )
        out["funnels"].append(
            {
                "funnel": name,
                "alerts_added": [
                    brief(new_alerts[i]) for i in sorted(new_alerts.keys() - old_alerts.keys())
                ],
                "alerts_removed": [
                    brief(old_alerts[i]) for i in sorted(old_alerts.keys() - new_alerts.keys())
                ],
                "alerts_changed": [
                    brief(new_alerts[i])
                    for i in sorted(new_alerts.keys() & old_alerts.keys())
                    if brief(new_alerts[i]) != brief(old_alerts[i])
                ],
                "steps": steps,
            }
        )
    return out


async def notify_alerts(settings: Settings, report: ReplayReport) -> Counter[str]:
    """``--notify``: send the report's alerts to Slack as the live notifier would, each summary
    marked as a replay (nobody should take it for a live incident). Outcomes counted."""
    from streamer.app import alert_notifier

    notifier = alert_notifier(settings)
    outcomes: Counter[str] = Counter()
    mark = f"[replay {report.range_from.isoformat()}..{report.range_to.isoformat()}] "
    try:
        for replayed in report.funnels:
            for alert in replayed.alerts:
                marked = alert.model_copy(update={"summary": mark + alert.summary})
                outcomes[(await notifier.deliver(marked)).outcome.value] += 1
    finally:
        await notifier.close()
    return outcomes


def _volume_only(stats: WindowStats) -> bool:
    """A window with neither a stage entry nor a survey answer (input volume only): live, the
    merger publishes no record of it either."""
    return not stats.answers and not any(stage.entered for stage in stats.stages)
