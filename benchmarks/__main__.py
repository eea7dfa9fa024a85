"""``python -m benchmarks [--events N]``: every figure in one run, the Kafka ones on the same
pre-loaded data, written to ``docs/benchmarks.md``.

1. ceiling: a bare aiokafka consumer (``getmany``) that runs streamer's ``decode_event``;
2. Faust floor: a bare Faust agent that only decodes (per-event iteration and ``take()``),
   on Faust's consumer and on the worker's (``streamer.faust_consumer``, "lifted");
3. the worker end to end (first event counted to the last; then to the last window final),
   with its event-loop lag (p99 and worst); then two worker processes in one group; then a
   worker with a 14-day user funnel (to the last event its unit tasks applied);
4. a peer written with Quix Streams doing the same job in spirit;
5. the core alone: bytes per open session (1M sessions), cost per event by session length;
   open units of a user funnel on disk (``benchmarks.unit_store``, 1M units): memory, disk,
   an event's cost with a warm and a cold cache, a restart rebuilt and kept;
6. seconds from SIGKILL + restart of the worker to its first handled message (3 tries).

Starts its own broker on free loopback ports in a temporary folder (or uses
``STREAMER_KAFKA_BOOTSTRAP``); every process it starts is stopped on the way out, also on
Ctrl-C. Timings on a shared 2-core machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from streamer.kafka_local import LocalKafka
from streamer.settings import Settings

from . import core, kafka_runs, plan_runs, unit_store, user_runs
from .data import load
from .procs import ROOT, Children, bench_broker, terminate_on_sigterm
from .report import Results, machine_facts, now, write_report

PARTS = (
    "ceiling", "floor", "quix", "worker", "workers2", "rekey", "plan", "segment", "users",
    "replay", "restart", "core", "units",
)  # fmt: skip
KAFKA_PARTS = set(PARTS) - {"core", "units"}
PARTIAL_REPORT = Path(tempfile.gettempdir()) / "streamer-benchmarks-partial.md"


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="shop events pre-loaded on the input topics (default 200000)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=1_000_000,
        help="open sessions for the core memory figure (default 1000000)",
    )
    parser.add_argument(
        "--units",
        type=int,
        default=1_000_000,
        help="open units of a user funnel on disk for the units part (default 1000000)",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run (default all: {','.join(PARTS)})",
    )
    parser.add_argument(
        "--floor-modes",
        default="each,take,each-lifted,take-lifted",
        help="Faust floor variants: each, take, noack, each suffixed -lifted to run on the "
        "worker's consumer (default each,take,each-lifted,take-lifted)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the report (default docs/benchmarks.md for a run of every part; a run of some "
        f"parts writes {PARTIAL_REPORT} instead, so it never replaces the committed one)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, state) after the run"
    )
    args = parser.parse_args()
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {','.join(PARTS)}")
    if args.out is None:
        args.out = ROOT / "docs/benchmarks.md" if set(args.parts) == set(PARTS) else PARTIAL_REPORT
    if args.events < 100:
        parser.error("--events must be at least 100")
    return args


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _bench_settings(bootstrap: str) -> Settings:
    """Default settings with names of this run's own: topics, app id (consumer groups)."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        app_id=f"bench-{run}",
        clickstream_topic=f"bench-{run}-clickstream",
        checkout_topic=f"bench-{run}-checkout",
        dlq_topic=f"bench-{run}-funnel.dlq",
        partials_topic=f"bench-{run}-funnel.partials",
        windows_topic=f"bench-{run}-funnel.windows",
        abandonments_topic=f"bench-{run}-funnel.abandonments",
        alerts_topic=f"bench-{run}-funnel.alerts",
        failed_alerts_topic=f"bench-{run}-funnel.alerts.failed",
        baselines_topic=f"bench-{run}-funnel.baselines",
        rekeyed_topic=f"bench-{run}-funnel.rekeyed",
        units_topic=f"bench-{run}-funnel.units",
        topic_partitions=4,
    )


def _lag_text(run: kafka_runs.WorkerResult) -> str:
    if run.lag is None:
        return "event-loop lag not measured"
    return f"event-loop lag p99 {run.lag.p99_s * 1000:,.1f} ms, worst {run.lag.worst_text}"


def _has_quix() -> bool:
    return importlib.util.find_spec("quixstreams") is not None


def _kafka_parts(
    args: argparse.Namespace, results: Results, children: Children, workdir: Path, bootstrap: str
) -> None:
    settings = _bench_settings(bootstrap)
    _say(f"generating and producing {args.events:,} events to {bootstrap}")
    loaded = results.loaded = load(settings, args.events)
    total = loaded.total
    _say(
        f"pre-loaded {total:,} messages ({loaded.sessions:,} sessions, "
        f"{loaded.minutes:.0f} min of event time) on 2 topics x 4 partitions"
    )
    if "ceiling" in args.parts:
        results.ceiling = kafka_runs.ceiling(settings, total)
        _say(f"ceiling: {results.ceiling:,.0f} events/s")
    if "floor" in args.parts:
        for mode in [m.strip() for m in args.floor_modes.split(",") if m.strip()]:
            rate = kafka_runs.faust_floor(children, settings, total, mode, workdir)
            results.floors[mode] = rate
            _say(f"Faust floor ({mode}): {rate:,.0f} events/s")
    if "quix" in args.parts:
        if _has_quix():
            results.quix = kafka_runs.quix_peer(children, settings, total, workdir)
            _say(f"Quix peer: {results.quix:,.0f} events/s")
        else:
            results.quix_note = (
                "The Quix peer was not measured: quixstreams is not installed "
                "(`pip install -e '.[bench]'`)."
            )
            _say("Quix peer skipped: quixstreams is not installed")
    if "worker" in args.parts:
        w = results.worker = kafka_runs.worker_run(children, settings, loaded, workdir)
        final = f"{w.to_final_s:.1f} s" if w.to_final_s is not None else "not reached"
        _say(
            f"worker: {w.rate:,.0f} events/s ({w.seconds:.1f} s), last window final "
            f"after {final}; peak RSS {w.peak_rss_mb or 0:,.0f} MiB; {w.outcomes}; "
            f"{_lag_text(w)}"
        )
    if "workers2" in args.parts:
        w2 = results.workers2 = kafka_runs.worker_run(
            children, settings, loaded, workdir, "workers2", workers=2
        )
        final = f"{w2.to_final_s:.1f} s" if w2.to_final_s is not None else "not reached"
        _say(
            f"two workers: {w2.rate:,.0f} events/s ({w2.seconds:.1f} s), last window final "
            f"after {final}; {w2.outcomes}; {_lag_text(w2)}"
        )
    if "rekey" in args.parts:
        own_outputs = {  # its own outputs: nothing of the first worker's run is read again
            name: f"{getattr(settings, name)}-rekey"
            for name in Settings.model_fields
            if name.endswith("_topic") and name not in ("clickstream_topic", "checkout_topic")
        }
        rekeyed = settings.model_copy(update={**own_outputs, "source_keyed_by_session": False})
        r = results.rekey = kafka_runs.worker_run(children, rekeyed, loaded, workdir, "rekey")
        _say(f"worker, re-key path: {r.rate:,.0f} events/s ({r.seconds:.1f} s); {_lag_text(r)}")
    if "plan" in args.parts:
        p = results.plan = plan_runs.plan_worker_run(children, settings, loaded, workdir)
        _say(f"worker, tracking plan preset:streamer: {p.rate:,.0f} events/s ({p.seconds:.1f} s)")
    if "segment" in args.parts:
        g = results.segment = plan_runs.segment_worker_run(children, settings, loaded, workdir)
        _say(f"worker, Segment calls through preset:segment: {g.rate:,.0f} events/s")
    if "users" in args.parts:
        u = results.users = user_runs.user_funnel_run(children, settings, loaded, workdir)
        _say(
            f"worker, 14-day user funnel: {u.rate:,.0f} events/s ({u.seconds:.1f} s); "
            f"{_lag_text(u)}"
        )
    if "replay" in args.parts:
        results.replay = kafka_runs.replay_run(settings, loaded)
        _say(f"streamer replay: {results.replay:,.0f} events/s")
    if "restart" in args.parts:
        results.restart = kafka_runs.restarts(children, settings, loaded, workdir)
        _say(
            f"restart: {[round(s, 2) for s in results.restart.seconds]} s, "
            f"mid-run {results.restart.mid_run}"
        )


def _core_parts(
    args: argparse.Namespace, results: Results, children: Children, workdir: Path
) -> None:
    _say(f"core: bytes per open session at {args.sessions:,} sessions (a process of its own)")
    out = workdir / "memory.json"
    process = children.spawn(
        ["-m", "benchmarks.core", str(args.sessions), "100000", str(out)], workdir / "core.log"
    )
    try:
        process.wait(timeout=120 + args.sessions / 1000)
    finally:
        children.end(process)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"core memory run failed ({workdir / 'core.log'})")
    results.memory = core.MemoryResult(**orjson.loads(out.read_bytes()))
    m = results.memory
    _say(
        f"core: {m.rss_per_session:,.0f} B resident, {m.live_per_session:,.0f} B allocated, "
        f"{m.stored_per_session:,.0f} B stored per session ({m.seconds:.0f} s)"
    )
    results.costs = core.cost_per_event()
    _say(
        "core: µs per event by session length "
        + ", ".join(f"{n}: {us:.1f}" for n, us in results.costs.items())
    )


def _units_part(
    args: argparse.Namespace, results: Results, children: Children, workdir: Path
) -> None:
    _say(f"units: {args.units:,} open units of a user funnel on disk (a process of its own)")
    out = workdir / "units.json"
    process = children.spawn(
        ["-m", "benchmarks.unit_store", "--units", str(args.units), "--out", str(out)],
        workdir / "units.log",
    )
    try:
        process.wait(timeout=300 + args.units / 2000)
    finally:
        children.end(process)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"units run failed ({workdir / 'units.log'})")
    results.units = unit_store.StoreResult(**orjson.loads(out.read_bytes()))
    u = results.units
    _say(
        f"units: {u.rss_growth_mib:,.0f} MiB resident growth, {u.disk_bytes_per_unit:,.0f} B on "
        f"disk per unit, restart kept {u.restart_kept_s:.2f} s ({u.seconds:.0f} s)"
    )


def main() -> int:
    args = _parse()
    terminate_on_sigterm()
    started = time.monotonic()
    given = os.environ.get("STREAMER_KAFKA_BOOTSTRAP")
    kafka = f"{Settings().kafka_version} (local single-node KRaft broker, 512 MiB heap)"
    if given:
        kafka = f"the cluster at {given} (STREAMER_KAFKA_BOOTSTRAP)"
    command = "python -m benchmarks" + "".join(
        f" {flag}" for flag in sys.argv[1:] if not flag.startswith("--out")
    )
    results = Results(command=command, started=now(), kafka=kafka, load_before=os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="streamer-bench-"))
    children = Children()
    broker: LocalKafka | None = None
    ok = False
    try:
        if KAFKA_PARTS & set(args.parts):
            bootstrap = given
            if not bootstrap:
                broker = bench_broker(workdir)
                _say(f"starting a local Kafka broker in {workdir / 'kafka'}")
                broker.up()
                bootstrap = broker.bootstrap
            _kafka_parts(args, results, children, workdir, bootstrap)
        if "core" in args.parts:
            _core_parts(args, results, children, workdir)
        if "units" in args.parts:
            _units_part(args, results, children, workdir)
        ok = True
    except KeyboardInterrupt:
        _say("interrupted: stopping everything this run started")
        return 130
    finally:
        children.stop_all()
        if broker is not None:
            broker.destroy()
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"logs and state kept in {workdir}")
    results.load_after = os.getloadavg()
    results.seconds = time.monotonic() - started
    write_report(args.out, results, machine_facts(kafka))
    _say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
