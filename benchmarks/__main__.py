"""``python -m benchmarks [--events N]``: ratios measured in one run on the same data.

1. ceiling: a bare aiokafka consumer (``getmany``) that runs streamer's ``decode_event``;
2. Faust floor: a bare Faust agent that only decodes (best of per-event and ``take()``);
3. the worker end to end (first message counted to the last), and its ratios to 1 and 2;
4. the core alone: stored and in-memory bytes per open session, cost per event by session
   length (must be flat);
5. seconds from SIGKILL + restart of the worker to its next processed message.

Starts its own broker on free loopback ports (or uses ``STREAMER_KAFKA_BOOTSTRAP``) and writes
``docs/benchmarks.md``. Timings on a shared 2-core machine are noisy: read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from streamer.app import topic_plan
from streamer.decode import DecodeLimits, decode_event
from streamer.funnel.definition import load_funnel
from streamer.funnel.session import CompiledFunnel, StoredEvent
from streamer.funnel.task import Task
from streamer.kafka_io import ensure_topic_plan, make_consumer, stop_consumer
from streamer.kafka_local import LocalKafka
from streamer.settings import Settings
from streamer.simulate import TrafficModel, topic_for
from streamer.testing import WorkerProcess, free_port, produce, scrape_metrics

ROOT = Path(__file__).resolve().parents[1]
CHECKOUT = ROOT / "deploy/funnels/checkout.yaml"


def dataset(settings: Settings, events: int) -> list[tuple[str, bytes, bytes]]:
    """Shop traffic of a few hours ago, in time order, keyed by session id."""
    model = TrafficModel()
    per_session = model.mean_events_per_session(500)
    start = datetime.now(UTC) - timedelta(hours=6)
    sessions = model.sessions(seed=1, count=int(events / per_session) + 1, start=start,
                              sessions_per_second=20)  # fmt: skip
    flat = sorted((e for s in sessions for e in s), key=lambda e: e["occurred_at"])[:events]
    return [(topic_for(settings, e["event_type"]), e["session_id"].encode(), orjson.dumps(e))
            for e in flat]  # fmt: skip


async def ceiling(settings: Settings, total: int) -> float:
    consumer = make_consumer(
        settings,
        settings.clickstream_topic,
        settings.checkout_topic,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    limits = DecodeLimits(max_age=DecodeLimits().max_age * 1000)
    seen, started = 0, 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for record in records:
                    decode_event(record.value, received_at=datetime.now(UTC), limits=limits)
                    seen += 1
        return seen / (time.perf_counter() - started)
    finally:
        await stop_consumer(consumer)


def faust_floor(settings: Settings, total: int, mode: str, workdir: Path) -> float:
    out = workdir / f"floor-{mode}.json"
    topics = f"{settings.clickstream_topic},{settings.checkout_topic}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.faust_floor", settings.bootstrap_servers, topics,
         str(total), str(out), mode],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    result = orjson.loads(out.read_bytes())
    return float(result["events"]) / float(result["seconds"])


def _processed(values: dict[Any, float]) -> float:
    return sum(
        value
        for (name, _), value in values.items()
        if name in ("streamer_events_total", "streamer_replayed_messages_total")
    )


def worker_run(settings: Settings, total: int, workdir: Path) -> tuple[float, list[float]]:
    """Events/s of a real worker from its first message to the last; then three SIGKILL +
    restart latencies measured on a second pass of a fresh group."""
    own = settings.model_copy(update={"web_port": free_port(), "data_dir": workdir / "worker"})
    with WorkerProcess(own, workdir / "worker.log") as worker:
        started = finished = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            seen = _processed(scrape_metrics(worker.metrics_url))
            now = time.perf_counter()
            if seen and not started:
                started = now
            if seen >= total:
                finished = now
                break
            time.sleep(0.05)
    rate = total / (finished - started)
    restarts = []
    again = own.model_copy(
        update={"app_id": own.app_id + "-restart", "data_dir": workdir / "restart"}
    )
    worker = WorkerProcess(again, workdir / "restart.log").start()
    try:
        for _ in range(3):
            time.sleep(1.5)
            worker.kill()
            killed = time.monotonic()
            worker.start()
            while _processed(scrape_metrics(worker.metrics_url)) == 0:
                time.sleep(0.05)
            restarts.append(time.monotonic() - killed)
    finally:
        worker.stop()
    return rate, restarts


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def core_memory(sessions: int) -> tuple[float, float]:
    """(bytes of resident memory, bytes stored) per open session."""
    funnel = (CompiledFunnel(load_funnel(CHECKOUT)),)
    task = Task(funnel, 0, retention_ms=10**12)
    gc.collect()
    before = _rss_bytes()
    for index in range(sessions):
        sid = f"sess-{index:08d}-{index * 7919 % 100000:05d}"
        task.offer(sid, StoredEvent(index, f"{sid}-1", "page_view",
                                    {"landing": True, "context.device": "ios"}))  # fmt: skip
        task.offer(sid, StoredEvent(index + 1, f"{sid}-2", "product_view",
                                    {"context.device": "ios"}))  # fmt: skip
    task.advance(sessions + 10)  # buffers drained; every attempt open at product_view
    task.drain()
    task.checkpoint()
    gc.collect()
    after = _rss_bytes()
    stored = statistics.mean(
        len(orjson.dumps(state.to_json())) for state in list(task.sessions.values())[:1000]
    )
    return (after - before) / sessions, stored


def core_cost_per_event(lengths: tuple[int, ...], events: int = 100_000) -> dict[int, float]:
    """Microseconds per event (offer + advance) for sessions of each length."""
    funnel = (CompiledFunnel(load_funnel(CHECKOUT)),)
    out = {}
    for length in lengths:
        task = Task(funnel, 0, retention_ms=10**12)
        count = max(1, events // length)
        at = 0
        started = time.perf_counter()
        for session in range(count):
            sid = f"s{length}-{session}"
            for seq in range(length):
                kind = "page_view" if seq == 0 else "product_view"
                at += 1
                task.offer(sid, StoredEvent(at, f"{sid}-{seq}", kind, {"landing": seq == 0}))
                task.advance(at - 1000)
        elapsed = time.perf_counter() - started
        out[length] = elapsed / (count * length) * 1e6
    return out


def versions() -> str:
    kafka = Settings().kafka_version
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; Python {platform.python_version()}, "
        f"faust-streaming {metadata.version('faust-streaming')}, "
        f"aiokafka {metadata.version('aiokafka')}, Kafka {kafka}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=1_000_000, help="core memory test")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="streamer-bench-"))
    given = os.environ.get("STREAMER_KAFKA_BOOTSTRAP")
    broker = None
    if not given:
        broker = LocalKafka(Settings(kafka_port=free_port(), kafka_controller_port=free_port(),
                                     kafka_data_dir=workdir / "kafka"))  # fmt: skip
        broker.up()
    try:
        bootstrap = given or broker.bootstrap  # type: ignore[union-attr]
        suffix = str(os.getpid())
        settings = Settings(
            kafka_bootstrap=bootstrap,
            app_id=f"bench-{suffix}",
            clickstream_topic=f"bench-clickstream-{suffix}",
            checkout_topic=f"bench-checkout-{suffix}",
            dlq_topic=f"bench-dlq-{suffix}",
            partials_topic=f"bench-partials-{suffix}",
            windows_topic=f"bench-windows-{suffix}",
            abandonments_topic=f"bench-abandonments-{suffix}",
            alerts_topic=f"bench-alerts-{suffix}",
            failed_alerts_topic=f"bench-failed-{suffix}",
            topic_partitions=4,
        )
        messages = dataset(settings, args.events)
        asyncio.run(ensure_topic_plan(settings, topic_plan(settings)))
        asyncio.run(produce(settings, messages))
        total = len(messages)
        print(f"pre-loaded {total} events on 2 topics x 4 partitions", flush=True)
        top = asyncio.run(ceiling(settings, total))
        print(f"ceiling {top:,.0f}/s", flush=True)
        floors = {mode: faust_floor(settings, total, mode, workdir) for mode in ("each", "take")}
        print(f"faust floor {floors}", flush=True)
        rate, restarts = worker_run(settings, total, workdir)
        print(f"worker {rate:,.0f}/s, restarts {restarts}", flush=True)
        in_memory, stored = core_memory(args.sessions)
        costs = core_cost_per_event((10, 100, 1000, 2000))
        print(f"memory {in_memory:.0f} B, stored {stored:.0f} B, costs {costs}", flush=True)
    finally:
        if broker is not None:
            broker.destroy()
    write_report(args.out, args.events, top, floors, rate, restarts, in_memory, stored, costs,
                 args.sessions)  # fmt: skip


def write_report(
    out: Path,
    events: int,
    top: float,
    floors: dict[str, float],
    rate: float,
    restarts: list[float],
    in_memory: float,
    stored: float,
    costs: dict[int, float],
    sessions: int,
) -> None:
    floor = max(floors.values())
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench` "
        f"(`python -m benchmarks --events {events}`), all in one run on the same pre-loaded "
        "data: shop traffic from `streamer.simulate`, in time order, keyed by session id, "
        "2 topics x 4 partitions, on a local single-node Kafka.",
        "",
        f"Machine: {versions()}.",
        "",
        "Timings on this shared machine are noisy; compare the ratios, measured in one run.",
        "",
        "## Throughput",
        "",
        "| what | events/s | vs ceiling | vs Faust floor |",
        "|---|---:|---:|---:|",
        f"| ceiling: aiokafka `getmany` + `decode_event` | {top:,.0f} | 1.00 | |",
        f"| Faust floor, per-event iteration (decode only) | {floors['each']:,.0f} | "
        f"{floors['each'] / top:.2f} | |",
        f"| Faust floor, `take(500)` (decode only) | {floors['take']:,.0f} | "
        f"{floors['take'] / top:.2f} | |",
        f"| **streamer worker**, end to end | **{rate:,.0f}** | {rate / top:.2f} | "
        f"**{rate / floor:.2f}** |",
        "",
        "The worker's figure counts every message from the first to the last it applied (decode,"
        " validate, reorder buffer, state machine, cohort windows, checkpoints every 2 s with "
        "their table writes and outputs, metrics).",
        "",
        "## The core alone",
        "",
        f"- {sessions:,} open sessions (a landing and a product view each, buffers drained): "
        f"**{in_memory:,.0f} bytes per session in memory** (resident set growth), "
        f"{stored:,.0f} bytes per session stored in a checkpoint.",
        "- Cost per event (offer + watermark advance) by session length:",
        "",
        "| events per session | µs per event |",
        "|---:|---:|",
        *[f"| {length} | {micros:.1f} |" for length, micros in costs.items()],
        "",
        "## Restart",
        "",
        f"SIGKILL mid-run, then restart (same static member id): first message processed after "
        f"{', '.join(f'{s:.1f}' for s in restarts)} s (median "
        f"{statistics.median(restarts):.1f} s).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
