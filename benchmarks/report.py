"""Machine facts and ``docs/benchmarks.md``."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from .core import MemoryResult
from .data import SESSIONS_PER_SECOND, Loaded
from .faust_floor import LIFTED, WORKER_STREAM_BUFFER
from .kafka_runs import RestartResult, WorkerResult
from .unit_store import StoreResult

__all__ = ["Results", "machine_facts", "write_report"]

NOT_MEASURED = "not measured"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts(kafka: str) -> list[tuple[str, str]]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    librdkafka = ""
    try:
        import confluent_kafka

        librdkafka = f" (librdkafka {confluent_kafka.libversion()[0]})"
    except ImportError:
        pass
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("RAM", f"{memory:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("faust-streaming", _version("faust-streaming")),
        ("aiokafka", _version("aiokafka")),
        ("quixstreams", _version("quixstreams")),
        ("confluent-kafka", _version("confluent-kafka") + librdkafka),
        ("pydantic", _version("pydantic")),
        ("orjson", _version("orjson")),
        ("Kafka", kafka),
    ]


@dataclass
class Results:
    command: str
    started: datetime
    kafka: str
    load_before: tuple[float, float, float]
    loaded: Loaded | None = None
    ceiling: float | None = None
    floors: dict[str, float] = field(default_factory=dict)
    quix: float | None = None
    quix_note: str = ""
    worker: WorkerResult | None = None
    workers2: WorkerResult | None = None  # two worker processes, one consumer group
    rekey: WorkerResult | None = None
    plan: WorkerResult | None = None  # the worker given the default tracking plan
    segment: WorkerResult | None = None  # the same traffic as Segment calls, its preset
    users: WorkerResult | None = None  # a worker with the 14-day user funnel only
    replay: float | None = None  # streamer replay over the same data, events/s
    restart: RestartResult | None = None
    memory: MemoryResult | None = None
    costs: dict[int, float] = field(default_factory=dict)
    units: StoreResult | None = None  # open units of a user funnel on disk
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0

    def _best_floor(self, lifted: bool) -> float | None:
        rates = [rate for mode, rate in self.floors.items() if mode.endswith(LIFTED) == lifted]
        return max(rates) if rates else None

    @property
    def floor(self) -> float | None:
        """Faust's own floor: the best bare agent on Faust's stock consumer."""
        return self._best_floor(lifted=False)

    @property
    def lifted_floor(self) -> float | None:
        """The best bare agent on the worker's consumer (``streamer.faust_consumer``)."""
        return self._best_floor(lifted=True)


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value else NOT_MEASURED


def _ratio(part: float | None, whole: float | None) -> str:
    return f"{part / whole:.2f}" if part and whole else ""


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _throughput(r: Results) -> list[str]:
    floor_label = {
        "each": "bare agent, per-event iteration, decode only",
        "take": "bare agent, `stream.take(500, within=1)`, decode only",
        "noack": "bare agent, `stream.noack().events()` (the worker's way), decode only",
    }

    def floor_row(mode: str) -> str:
        base = mode.removesuffix(LIFTED)
        label = floor_label.get(base, base)
        if mode.endswith(LIFTED):
            where = "the worker's consumer, schema and stream buffer (`streamer.faust_consumer`)"
            return f"lifted floor: {label}, on {where}"
        return f"Faust floor: {label}"

    rows = [("ceiling: aiokafka `getmany` + `decode_event`", r.ceiling)]
    rows += [(floor_row(mode), rate) for mode, rate in r.floors.items()]
    rows.append(("Quix Streams peer: furthest stage per session + 1-minute stage counts", r.quix))
    worker = r.worker.rate if r.worker else None
    rows.append(("**streamer worker**, end to end (default settings)", worker))
    if r.rekey:
        rows.append(
            ("streamer worker, re-key path (`source_keyed_by_session=false`)", r.rekey.rate)
        )
    if r.plan:
        rows.append(("streamer worker, tracking plan `preset:streamer` (same data)", r.plan.rate))
    if r.segment:
        rows.append(
            ("streamer worker, the same traffic as Segment calls, `preset:segment`", r.segment.rate)
        )
    if r.users:
        rows.append(
            (
                "streamer worker, a 14-day user funnel (`benchmarks/users-14d.yaml`): "
                "session tasks, `funnel.units`, unit tasks",
                r.users.rate,
            )
        )
    if r.replay:
        rows.append(
            ("`streamer replay --from --to` (read-only: no group, one task, no Faust)", r.replay)
        )
    lines = [
        "| reader (each its own consumer group, from the beginning) | events/s | x ceiling "
        "| x Faust floor |",
        "|---|---:|---:|---:|",
    ]
    for label, rate in rows:
        lines.append(
            f"| {label} | {_rate(rate)} | {_ratio(rate, r.ceiling)} | {_ratio(rate, r.floor)} |"
        )
    lines.append("")
    lines.append(
        f"**Worker / Faust floor: {_ratio(worker, r.floor) or NOT_MEASURED}** (target ≥ 0.7); "
        f"worker / lifted floor: {_ratio(worker, r.lifted_floor) or NOT_MEASURED}; "
        f"lifted floor / Faust floor: {_ratio(r.lifted_floor, r.floor) or NOT_MEASURED}; "
        f"worker / ceiling: {_ratio(worker, r.ceiling) or NOT_MEASURED}; "
        f"worker / Quix peer: {_ratio(worker, r.quix) or NOT_MEASURED}. "
        "Each floor is the better of its rows."
    )
    if (r.plan or r.segment) and worker:
        plan, segment = (r.plan.rate if r.plan else None), (r.segment.rate if r.segment else None)
        lines.append(
            f"With a tracking plan: `preset:streamer` / worker {_ratio(plan, worker)}, "
            f"x Faust floor {_ratio(plan, r.floor)}; Segment preset / worker "
            f"{_ratio(segment, worker)}, x Faust floor {_ratio(segment, r.floor)} (target: the "
            "default plan at or above 1.0x the Faust floor)."
        )
    if r.users and worker:
        lines.append(
            f"14-day user funnel / worker (one hop, session funnel): "
            f"{_ratio(r.users.rate, worker)} (every event goes through the session tasks, "
            "is forwarded to `funnel.units` and applied by the unit tasks: counted to the last "
            "event the unit tasks applied)."
        )
    if r.replay and worker:
        lines.append(
            f"Replay of the same data / worker: {_ratio(r.replay, worker)} (the same core, "
            "read directly instead of through Faust; target ≥ 1)."
        )
    if r.quix_note:
        lines += ["", r.quix_note]
    if r.worker and r.loaded:
        w = r.worker
        final = (
            f"{w.to_final_s:.1f} s"
            if w.to_final_s is not None
            else "not reached within 180 s of the last event"
        )
        outcomes = ", ".join(f"{name} {count:,.0f}" for name, count in w.outcomes.items())
        lines += [
            "",
            f"The worker counted all {r.loaded.total:,} input messages in {w.seconds:.1f} s "
            f"({outcomes}; {w.checkpoints:,.0f} checkpoints). From its first counted event to "
            f"the **last cohort window published final: {final}** "
            f"({w.windows_closed:,.0f} windows closed). Peak resident memory: "
            f"{f'{w.peak_rss_mb:,.0f} MiB' if w.peak_rss_mb is not None else 'not measured'}.",
        ]
    return lines


def _scaling(r: Results) -> list[str]:
    runs = [(1, r.worker), (2, r.workers2)]
    measured = [(count, run) for count, run in runs if run is not None]
    if not measured:
        return [f"One worker or two: {NOT_MEASURED}."]
    one = r.worker.rate if r.worker else None
    lines = [
        "The same pre-loaded data read by one `streamer worker` and by two worker processes "
        "in one consumer group (started together, each its own state folder, the 4 "
        "partitions shared between them; the windows stage and its detector run in one), on "
        f"the same {os.cpu_count()} cores as the broker and whatever else the machine runs "
        f"(load average {_load(r.load_before)} before the run, {_load(r.load_after)} after): "
        "a second worker gains only with a core of its own. From the first event counted "
        "(summed over the workers) to the last, then to the last cohort window published "
        "final.",
        "",
        "| worker processes | events/s | x one worker | last window final after | "
        "peak RSS (largest worker) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count, run in measured:
        final = f"{run.to_final_s:.1f} s" if run.to_final_s is not None else "not reached"
        rss = f"{run.peak_rss_mb:,.0f} MiB" if run.peak_rss_mb is not None else NOT_MEASURED
        lines.append(f"| {count} | {_rate(run.rate)} | {_ratio(run.rate, one)} | {final} | {rss} |")
    return lines


def _loop_lag(r: Results) -> list[str]:
    runs = [
        ("worker, one hop", r.worker),
        ("two workers, one hop (the worse)", r.workers2),
        ("worker, re-key path", r.rekey),
        ("worker, 14-day user funnel (two hops)", r.users),
    ]
    measured = [(label, run.lag) for label, run in runs if run is not None and run.lag]
    if not measured:
        return [f"Event-loop lag: {NOT_MEASURED}."]
    lines = [
        "How late the worker's event-loop monitor woke up (`streamer_event_loop_lag_seconds`, "
        "a wake-up due every 50 ms), over the whole run from start-up to the last window "
        "final; the 99th percentile interpolated in the histogram's buckets, the worst from "
        "the worker's log (every stall of 100 ms or more is logged). Target: nothing above "
        "100 ms. On cores shared with the broker and other jobs the lag also counts time the "
        "worker was not scheduled at all.",
        "",
        "| run | wake-ups | p99 | worst |",
        "|---|---:|---:|---:|",
    ]
    for label, lag in measured:
        lines.append(
            f"| {label} | {lag.wakeups:,} | {lag.p99_s * 1000:,.1f} ms | {lag.worst_text} |"
        )
    return lines


def _core(r: Results) -> list[str]:
    lines: list[str] = []
    if r.memory:
        m = r.memory
        lines += [
            "Open sessions (a landing page view and a product view each, through "
            "`decode_event` and `stored_event` as in the worker; buffers drained, every attempt "
            "open at product_view; 36-character session ids), target ≤ 1 KB per session:",
            "",
            "| measure | sessions | bytes per session |",
            "|---|---:|---:|",
            f"| resident set growth | {m.sessions:,} | {m.rss_per_session:,.0f} |",
            f"| still allocated (tracemalloc) | {m.live_sample:,} | {m.live_per_session:,.0f} |",
            "| stored in a checkpoint (entry in a delta record) | 1,000 "
            f"| {m.stored_per_session:,.0f} |",
            "",
        ]
    else:
        lines += [f"Bytes per open session: {NOT_MEASURED}.", ""]
    if r.costs:
        base = next(iter(r.costs.values()))
        lines += [
            "Cost per event by session length (offer + watermark advance, best of 3; a landing "
            "page view then product views 1 s apart, watermark 120 s behind): must be flat.",
            "",
            "| events per session | µs per event | x the shortest |",
            "|---:|---:|---:|",
            *[f"| {n:,} | {us:.1f} | {us / base:.2f} |" for n, us in r.costs.items()],
        ]
    else:
        lines.append(f"Cost per event by session length: {NOT_MEASURED}.")
    return lines


def units_section(u: StoreResult | None) -> list[str]:
    """Open units of a user funnel on disk (``benchmarks.unit_store``)."""
    if u is None:
        return [f"Open units on disk: {NOT_MEASURED}."]
    rebuild = "not run"
    if u.restart_rebuild_s is not None:
        rebuild = f"{u.restart_rebuild_s:.1f} s, peak +{u.restart_rebuild_peak_mib or 0:,.0f} MiB"
    return [
        f"{u.units:,} open units of a 14-day six-step user funnel (the checkout funnel followed "
        f"by user, each unit landed and at product_view) in one unit task's store on disk, "
        f"{u.cache_units:,} of them cached (`STREAMER_UNIT_CACHE`), run by "
        f"`python -m benchmarks.unit_store --units {u.units}` in a process of its own "
        "(docs/decisions/0009-open-units-on-disk.md):",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| resident set growth with every unit stored, the cache full | "
        f"{u.rss_growth_mib:,.0f} MiB |",
        f"| on disk per unit (RocksDB files: state and wake index) | "
        f"{u.disk_bytes_per_unit:,.0f} B |",
        f"| in the checkpoint log per unit (its full record) | {u.log_bytes_per_unit:,.0f} B |",
        f"| read a unit, cached / from disk | {u.warm_read_us:.1f} / {u.cold_read_us:.1f} µs |",
        f"| an event to a cached unit / to a unit on disk only (offer, release, apply; "
        f"a checkpoint every 1,000 events) | {u.warm_event_us:.0f} / {u.cold_event_us:.0f} µs |",
        f"| commit per changed unit | {u.commit_us_per_unit:.1f} µs |",
        f"| reopen the store | {u.reopen_s:.3f} s |",
        f"| unit task restore, store rebuilt from the log (empty store: a new owner) | {rebuild} |",
        f"| unit task restore, store kept (the log vouches for it) | {u.restart_kept_s:.3f} s, "
        f"peak +{u.restart_kept_peak_mib:,.0f} MiB |",
    ]


def _restart(r: Results) -> list[str]:
    if not r.restart or not r.restart.seconds:
        return [f"Restart: {NOT_MEASURED}."]
    x = r.restart
    lines = [
        "| try | seconds from SIGKILL to the first message handled | backlog left at the kill |",
        "|---:|---:|---|",
    ]
    for index, (seconds, mid) in enumerate(zip(x.seconds, x.mid_run, strict=False), 1):
        lines.append(f"| {index} | {seconds:.1f} | {'yes' if mid else 'no (caught up)'} |")
    lines += ["", f"**Median: {x.median:.1f} s.**"]
    return lines


def write_report(out: Path, r: Results, facts: list[tuple[str, str]]) -> None:
    data = "no Kafka measurement in this run"
    if r.loaded:
        d = r.loaded
        data = (
            f"{d.events:,} shop events ({d.sessions:,} sessions over {d.minutes:.0f} minutes of "
            f"event time, {SESSIONS_PER_SECOND:g} new sessions/s, up to 60 s of arrival "
            f"disorder, 1% producer retries) then {d.closing} closing events, all produced "
            "before any reader starts, on 2 topics (clickstream, checkout) x 4 partitions, keyed "
            "by session id (`tests/support/traffic.py`)"
        )
    lines = [
        "# Benchmarks",
        "",
        f"Measured {r.started:%Y-%m-%d %H:%M} UTC by `{r.command}` in {r.seconds / 60:.0f} "
        f"minutes: every figure below comes from this one run, the Kafka ones from the same "
        f"pre-loaded data: {data}.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in facts],
        f"| load average (1/5/15 min) before / after | {_load(r.load_before)} / "
        f"{_load(r.load_after)} |",
        "",
        "## How to read",
        "",
        "- One shared 2-core machine runs the broker, the reader under test and whatever else "
        "is running (see the load average): absolute rates move from run to run, the ratios "
        "of one run much less. Compare ratios.",
        "- **ceiling**: what Python can read and decode here at all (`decode_event`: orjson + "
        "pydantic validation); no framework, no state, no output.",
        "- **Faust floor**: a Faust agent that does nothing but decode. Faust's per-message "
        "machinery sets it. The cost budget targets the worker at ≥ 0.7x of it.",
        "- **lifted floor**: the same bare agent on the consumer the worker runs "
        "(`streamer/faust_consumer.py`): Faust's consumer, except that a message is handed to "
        "the streams directly instead of inside a `wait_first` of four tasks whenever that "
        "hand-over cannot wait (no rebalance, no full buffer); its source topics' raw "
        "schema makes each event from the message's bytes without Faust's codec lookups; "
        f"and its stream buffer holds the worker's `stream_buffer_messages` "
        f"({WORKER_STREAM_BUFFER:,}), not Faust's 4,096. It is the floor the worker really "
        "stands on.",
        "- **worker**: `python -m streamer worker` as shipped (default settings: RocksDB "
        "store, checkpoints every 5 s, 120 s lateness), from the first input event it counts "
        "to the last (`streamer_events_total` over accepted, duplicate and dead-lettered equal "
        "to the messages produced). Its counters reach `/metrics` about once a second, so "
        "short runs carry up to ~1 s of error. Everything counts: decoding and validation, "
        "reorder buffer, state machine, cohort windows, checkpoints with their table writes "
        "and outputs, and the windows stage merging partials in the same process.",
        "- **14-day user funnel**: the same worker given only `benchmarks/users-14d.yaml` "
        "(the checkout funnel's six steps per user over 14 days, hourly windows) on the same "
        "data: the session tasks release each event, give it its unit and forward it to "
        "`funnel.units`, the unit tasks apply it (decision 0008). From the first input event "
        "counted to the last event the unit tasks applied (every accepted one but the closing "
        "events, which no watermark passes); its windows stay open for 14 days, so no window "
        "is waited for.",
        "- **Quix peer**: the same job in spirit with Quix Streams (`benchmarks/quix_peer.py`):"
        " less work per event than the worker (no schema validation, no abandonments, no "
        "dead letters), more Kafka traffic (a repartition topic for the stage counts).",
        "- **core alone**: the funnel core without Kafka; memory at rest should stay under "
        "1 KB per open session, the cost per event flat in the session's length.",
        "- **restart**: SIGKILL while the worker works through the backlog, restart at once "
        "with the same settings (same static group member id); seconds until `/metrics` shows "
        "a handled message (Python and Faust start-up, rejoining the group, restoring state, "
        "plus up to ~1 s of counter publishing).",
        "",
        "## Throughput",
        "",
        *_throughput(r),
        "",
        "## One worker or two",
        "",
        *_scaling(r),
        "",
        "## Event-loop lag on the backlog",
        "",
        *_loop_lag(r),
        "",
        "## The core alone (no Kafka)",
        "",
        *_core(r),
        "",
        "## Open units of a user funnel on disk",
        "",
        *units_section(r.units),
        "",
        "## Restart after SIGKILL",
        "",
        *_restart(r),
        "",
        "## Reproduce",
        "",
        "```",
        "make bench                                   # python -m benchmarks (200k events)",
        "python -m benchmarks --events 20000          # a quick run",
        "python -m benchmarks --only ceiling,floor,worker",
        "STREAMER_KAFKA_BOOTSTRAP=host:9092 python -m benchmarks   # an existing cluster",
        "```",
        "",
        "It needs the `bench` extra (`pip install -e '.[bench]'`, Quix Streams), Java 17+ "
        "and Maven (the broker is started on free loopback ports in a temporary folder unless "
        "`STREAMER_KAFKA_BOOTSTRAP` is set) and writes this file (`--out` to write elsewhere).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


def now() -> datetime:
    return datetime.now(UTC)
