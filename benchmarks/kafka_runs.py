"""The measurements that read the pre-loaded topics: ceiling, Faust floor, Quix peer, worker,
restart. Each reads with a consumer group of its own, from the beginning."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from streamer.decode import DecodeLimits, decode_event
from streamer.kafka_io import make_consumer, stop_consumer
from streamer.settings import Settings
from streamer.testing import MetricValues, WorkerProcess, free_port, scrape_metrics

from .data import Loaded
from .procs import Children, Timeout, deadline_loop

__all__ = [
    "LoopLag",
    "RestartResult",
    "WorkerResult",
    "ceiling",
    "faust_floor",
    "quix_peer",
    "replay_run",
    "restarts",
    "worker_run",
]

COUNTED = ("accepted", "duplicate", "dead_lettered")


def budget(total: int) -> float:
    """Seconds any one reader may take for ``total`` messages (at 200/s, plus start-up)."""
    return 180.0 + total / 200


def limits_of(settings: Settings) -> DecodeLimits:
    """The worker's decode limits (streamer.pipeline.sessions.wiring.install)."""
    return DecodeLimits.of(settings)


# --- 1. ceiling -------------------------------------------------------------------------------
async def _ceiling_once(settings: Settings, total: int) -> float:
    consumer = make_consumer(
        settings,
        settings.clickstream_topic,
        settings.checkout_topic,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    limits = limits_of(settings)
    seen, started = 0, 0.0
    deadline = time.monotonic() + budget(total)
    try:
        while seen < total:
            if time.monotonic() > deadline:
                raise Timeout(f"ceiling: {seen} of {total} messages read")
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for record in records:
                    received = datetime.fromtimestamp(record.timestamp / 1000, tz=UTC)
                    decode_event(record.value, received_at=received, limits=limits)
                    seen += 1
        return seen / (time.perf_counter() - started)
    finally:
        await stop_consumer(consumer)


def ceiling(settings: Settings, total: int, tries: int = 2) -> float:
    """A bare aiokafka consumer (``getmany``) running ``decode_event`` on every message:
    events/s from the first batch to the last message, best of ``tries``."""
    return max(asyncio.run(_ceiling_once(settings, total)) for _ in range(tries))


# --- 2 and 4. subprocess peers ----------------------------------------------------------------
def _run_reader(
    children: Children, module: str, args: list[str], total: int, out: Path, log: Path
) -> float:
    process = children.spawn(["-m", module, *args], log)
    try:
        for _ in deadline_loop(budget(total), f"{module} ({log})", interval=0.2):
            if out.exists() or process.poll() is not None:
                break
        for _ in deadline_loop(60, f"{module} result ({log})", interval=0.2):
            if out.exists() and out.stat().st_size:
                break
            if process.poll() is not None:
                raise RuntimeError(
                    f"{module} exited with {process.returncode} without a result (see {log})"
                )
    finally:
        children.end(process, grace=20)
    result = orjson.loads(out.read_bytes())
    return float(result["events"]) / float(result["seconds"])


def faust_floor(
    children: Children, settings: Settings, total: int, mode: str, workdir: Path
) -> float:
    """A bare Faust agent that only decodes (``mode``: each, take, noack): events/s."""
    out = workdir / f"floor-{mode}.json"
    topics = f"{settings.clickstream_topic},{settings.checkout_topic}"
    args = [settings.bootstrap_servers, topics, str(total), str(out), mode]
    return _run_reader(
        children, "benchmarks.faust_floor", args, total, out, workdir / f"floor-{mode}.log"
    )


def quix_peer(children: Children, settings: Settings, total: int, workdir: Path) -> float:
    """The Quix Streams peer (furthest stage per session, 1-minute stage counts): events/s."""
    out = workdir / "quix.json"
    topics = f"{settings.clickstream_topic},{settings.checkout_topic}"
    args = [settings.bootstrap_servers, topics, str(total), str(out), str(workdir / "quix-state")]
    return _run_reader(children, "benchmarks.quix_peer", args, total, out, workdir / "quix.log")


# --- 3. the worker ----------------------------------------------------------------------------
def _sum(values: MetricValues, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and wanted <= ls)


def counted(values: MetricValues) -> float:
    """Input messages the worker applied: streamer_events_total over its outcomes."""
    return sum(_sum(values, "streamer_events_total", outcome=o) for o in COUNTED)


def unit_counted(values: MetricValues, settings: Settings) -> float:
    """Events the unit tasks of user funnels applied: streamer_events_total on any topic but
    the input topics (the unit stage counts what it reads from ``units_topic``)."""
    inputs = {settings.clickstream_topic, settings.checkout_topic}
    return sum(
        value
        for (name, labels), value in values.items()
        if name == "streamer_events_total"
        and dict(labels).get("outcome") in COUNTED
        and dict(labels).get("topic") not in inputs
    )


def processed(values: MetricValues) -> float:
    """Input messages handled at all (applied, or skipped as applied before a restart)."""
    return counted(values) + _sum(values, "streamer_replayed_messages_total")


def _scrape(worker: WorkerProcess) -> MetricValues | None:
    worker.assert_running()
    try:
        return scrape_metrics(worker.metrics_url)
    except OSError:
        return None


LAG_METRIC = "streamer_event_loop_lag_seconds"
# The monitor's log line for a wake-up 100 ms late or more (streamer.pipeline.timers): the
# worst one is always logged.
_LAG_LINE = re.compile(r"event loop lag: a wake-up due every \S+ ran ([0-9.]+)s late")


@dataclass
class LoopLag:
    """The worker's event-loop lag over its whole run (start-up to the last window final)."""

    wakeups: int
    p99_s: float  # interpolated in the histogram's buckets, as PromQL's histogram_quantile
    worst_s: float | None  # from the worker's log, which has every stall of 100 ms or more
    worst_bucket_s: float  # the upper bound of the highest bucket with an observation

    @property
    def worst_text(self) -> str:
        if self.worst_s is not None:
            return f"{self.worst_s * 1000:,.0f} ms"
        return f"≤ {self.worst_bucket_s * 1000:g} ms (its histogram bucket; none logged)"


def loop_lag(values: MetricValues, log_text: str) -> LoopLag | None:
    """The loop lag a worker's ``/metrics`` (``values``) and log say, None without any."""
    buckets = sorted(
        (float(dict(labels)["le"]), count)
        for (name, labels), count in values.items()
        if name == f"{LAG_METRIC}_bucket"
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    rank, below, lower, p99 = 0.99 * total, 0.0, 0.0, buckets[-2][0]
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if not math.isinf(bound):
                p99 = lower + (bound - lower) * (rank - below) / (cumulative - below)
            break
        below, lower = cumulative, bound
    top = next(bound for bound, cumulative in buckets if cumulative >= total)
    logged = [float(match) for match in _LAG_LINE.findall(log_text)]
    return LoopLag(
        wakeups=int(total),
        p99_s=p99,
        worst_s=max(logged) if logged else None,
        worst_bucket_s=top,
    )


@dataclass
class WorkerResult:
    rate: float  # events/s from the first event counted to the last
    seconds: float
    to_final_s: float | None  # from the first event counted to the last window final
    outcomes: dict[str, float] = field(default_factory=dict)
    checkpoints: float = 0.0
    windows_closed: float = 0.0
    peak_rss_mb: float | None = None  # the (largest) worker process's high-water mark (VmHWM)
    lag: LoopLag | None = None  # the worse worker's, when there are two
    workers: int = 1


def worker_settings(settings: Settings, workdir: Path, name: str) -> Settings:
    """Default settings but for names: own app id (group), web port and state folder."""
    return settings.model_copy(
        update={
            "app_id": f"{settings.app_id}-{name}",
            "web_port": free_port(),
            "data_dir": workdir / f"state-{name}",
        }
    )


def worker_run(
    children: Children,
    settings: Settings,
    loaded: Loaded,
    workdir: Path,
    name: str = "worker",
    workers: int = 1,
    through_units: bool = False,
) -> WorkerResult:
    """Real ``streamer worker`` processes (``workers`` of them, one consumer group, started
    together) on the pre-loaded topics: events/s from the first event they counted to the
    last, then the time until the last cohort window is published final (``through_units``:
    user funnels only, whose windows stay open for days: to the last event the unit tasks
    applied instead, and no window waited for)."""
    first = worker_settings(settings, workdir, name)
    owns = [first] + [
        first.model_copy(
            update={"web_port": free_port(), "data_dir": workdir / f"state-{name}-{n}"}
        )
        for n in range(2, workers + 1)
    ]
    procs = [
        children.track(
            WorkerProcess(own, workdir / (f"{name}-{n}.log" if n > 1 else f"{name}.log"))
        )
        for n, own in enumerate(owns, 1)
    ]
    total = loaded.total
    with ThreadPoolExecutor(len(procs)) as starting:  # together: no rebalance in the count
        list(starting.map(lambda worker: worker.start(ready_timeout=120), procs))
    try:
        first_at = first_count = last_at = 0.0
        # Once a second: the counters change that often, and each scrape costs the worker
        # CPU (Prometheus itself scrapes every 15 s or so); polling faster slowed it ~10%.
        counting = f"{name} counting {total} ({procs[0].log_path})"
        for _ in deadline_loop(budget(total), counting, interval=1.0):
            scraped = [_scrape(worker) for worker in procs]
            if any(values is None for values in scraped):
                continue
            now = time.perf_counter()
            if through_units:  # the unit tasks count what they read too: inputs only here
                seen = sum(_input_counted(values or {}, settings) for values in scraped)
            else:
                seen = sum(counted(values or {}) for values in scraped)
            if seen and not first_at:
                first_at, first_count = now, seen
            if seen >= total and (not through_units or _units_done(scraped, settings, loaded)):
                last_at = now
                break
        # Counters reach /metrics once a second (the stage tallies per publish): the rate is
        # taken between two such moments, so it is exact to within one of them.
        rate = (total - first_count) / (last_at - first_at) if last_at > first_at else 0.0
        to_final: float | None = None
        wanted = loaded.last_window_end_ms / 1000
        if not through_units:  # a user funnel of days publishes no final window here
            with contextlib.suppress(Timeout):
                for _ in deadline_loop(180, "last window final", interval=0.5):
                    # Published by the worker that runs the merger (the partials' one partition).
                    end = max(
                        _sum(
                            values or {},
                            "streamer_funnel_last_window_end_timestamp_seconds",
                            funnel="checkout",
                        )
                        for values in [_scrape(worker) for worker in procs]
                    )
                    if end >= wanted:
                        to_final = time.perf_counter() - first_at
                        break
        every = [_scrape(worker) or {} for worker in procs]
        lags = [
            loop_lag(values, worker.log_path.read_text(errors="replace"))
            for values, worker in zip(every, procs, strict=True)
        ]
        rss = [mb for mb in (_peak_rss_mb(worker) for worker in procs) if mb is not None]
        return WorkerResult(
            rate=rate,
            seconds=last_at - first_at,
            to_final_s=to_final,
            outcomes={
                o: sum(_sum(values, "streamer_events_total", outcome=o) for values in every)
                for o in COUNTED
            },
            checkpoints=sum(_sum(values, "streamer_checkpoints_total") for values in every),
            windows_closed=max(
                _sum(values, "streamer_funnel_windows_closed_total") for values in every
            ),
            peak_rss_mb=max(rss) if rss else None,
            lag=max(
                (lag for lag in lags if lag is not None),
                key=lambda lag: (lag.worst_s or lag.worst_bucket_s, lag.p99_s),
                default=None,
            ),
            workers=workers,
        )
    finally:
        for worker in procs:
            worker.stop(timeout=30)


def _input_counted(values: MetricValues, settings: Settings) -> float:
    return sum(
        _sum(values, "streamer_events_total", outcome=outcome, topic=topic)
        for outcome in COUNTED
        for topic in (settings.clickstream_topic, settings.checkout_topic)
    )


def _units_done(scraped: list[MetricValues | None], settings: Settings, loaded: Loaded) -> bool:
    """Whether the unit tasks applied every event the session tasks forward: each accepted
    input event but the closing ones (never below a session task's watermark: not released)."""
    accepted = sum(
        _sum(values or {}, "streamer_events_total", outcome="accepted", topic=topic)
        for values in scraped
        for topic in (settings.clickstream_topic, settings.checkout_topic)
    )
    applied = sum(unit_counted(values or {}, settings) for values in scraped)
    return applied >= accepted - loaded.closing


def _peak_rss_mb(worker: WorkerProcess) -> float | None:
    """The worker's peak resident memory so far (Linux /proc), in MiB."""
    if worker.process is None:
        return None
    try:
        status = Path(f"/proc/{worker.process.pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return None


# --- 6. restart -------------------------------------------------------------------------------
@dataclass
class RestartResult:
    seconds: list[float]
    mid_run: list[bool]  # whether the input still had a backlog when the worker was killed

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def restarts(
    children: Children, settings: Settings, loaded: Loaded, workdir: Path, tries: int = 3
) -> RestartResult:
    """A fresh worker group reads the topics from the start; ``tries`` times, while it works
    through the backlog: SIGKILL, restart with the same settings (same static member id),
    seconds until it handled its first message (counted or skipped as replayed)."""
    own = worker_settings(settings, workdir, "restart")
    worker = children.track(WorkerProcess(own, workdir / "restart.log"))
    worker.start(ready_timeout=120)
    seconds: list[float] = []
    mid_run: list[bool] = []
    try:
        for attempt in range(tries):
            for _ in deadline_loop(120, f"restart {attempt}: first message ({worker.log_path})"):
                values = _scrape(worker)
                if values is not None and processed(values) > 0:
                    break
            time.sleep(1.5)  # a little work, at least one checkpoint
            values = _scrape(worker) or {}
            lag = sum(
                _sum(values, "streamer_consumer_lag_messages", topic=topic)
                for topic in (own.clickstream_topic, own.checkout_topic)
            )
            mid_run.append(lag > 0)
            worker.kill()
            killed = time.monotonic()
            worker.start(ready_timeout=120)
            for _ in deadline_loop(120, f"restart {attempt} ({worker.log_path})", interval=0.02):
                values = _scrape(worker)
                if values is not None and processed(values) > 0:
                    seconds.append(time.monotonic() - killed)
                    break
    finally:
        worker.stop(timeout=30)
    return RestartResult(seconds, mid_run)


# --- streamer replay --------------------------------------------------------------------------
def replay_run(settings: Settings, loaded: Loaded) -> float:
    """``streamer replay`` over the whole pre-loaded range (the closing events included):
    messages read per second, from the call to the report."""
    from streamer.funnel.definition import load_funnels
    from streamer.range_replay import replay_range

    start = datetime.fromtimestamp(loaded.first_ms / 1000, tz=UTC)
    end = datetime.fromtimestamp((loaded.closing_ms + 1) / 1000, tz=UTC)
    began = time.perf_counter()
    report = asyncio.run(replay_range(settings, load_funnels(settings.funnels), start, end))
    seconds = time.perf_counter() - began
    if report.events.read < loaded.total:
        raise RuntimeError(f"replay read {report.events.read} of {loaded.total} messages")
    return report.events.read / seconds
