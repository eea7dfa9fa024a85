"""`streamer demo`: a local broker, a worker and the simulator, counters printed."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

import click
from rich.table import Table

from streamer.cli._common import POSITIVE, cli, console, fail_cleanly, settings_of
from streamer.cli.funnels import print_summary
from streamer.cli.kafka import local_kafka, worker_topic_plan
from streamer.errors import StreamerError
from streamer.kafka_io import ensure_topic_plan, run_sync
from streamer.settings import Settings
from streamer.worker_process import MetricValues, WorkerProcess, scrape_metrics


# --- demo --------------------------------------------------------------------------------
def _funnel_table(values: MetricValues) -> Table:
    table = Table(title="streamer live counters (from /metrics)")
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    for (name, labels), value in sorted(
        values.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))
    ):
        if (
            name
            in (
                "streamer_stage_events_total",
                "streamer_events_by_type_total",
                "streamer_events_total",
            )
            and value
        ):
            table.add_row(name, ",".join(f"{k}={v}" for k, v in sorted(labels)), f"{value:.0f}")
    return table


@cli.command("demo")
@click.option("--rate", default=40.0, show_default=True, type=POSITIVE, help="events per second")
@click.option(
    "--duration", default=60.0, show_default=True, type=POSITIVE, help="seconds of traffic"
)
@click.option("--keep-broker", is_flag=True, help="leave the local broker running afterwards")
@click.pass_context
@fail_cleanly
def demo(ctx: click.Context, rate: float, duration: float, keep_broker: bool) -> None:
    """Live demo: local broker up, a worker, the simulator feeding it, the funnel printed."""
    from streamer.resources import deploy_dir
    from streamer.simulate import run_live

    # The simulator compresses sessions into seconds: the demo funnel has 10 s windows and
    # second-scale timeouts; a short lateness and idle timeout keep it at the live edge.
    settings = settings_of(ctx).model_copy(
        update={
            "funnels": (deploy_dir() / "funnels/demo",),
            "allowed_lateness_seconds": 5.0,
            "idle_timeout_seconds": 5.0,
        }
    )
    broker = local_kafka(settings) if settings.uses_local_broker else None
    started_broker = False
    if broker is not None:
        status, started_broker = broker.up()
        console.print(f"[bold]kafka[/]: {status.describe()}")
    run_sync(ensure_topic_plan(settings, worker_topic_plan(settings)))
    log_path = settings.data_dir.parent / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(settings, log_path)
    url = worker.metrics_url
    try:
        try:
            worker.start(ready_timeout=60)
        except (RuntimeError, TimeoutError):
            raise StreamerError(f"the worker did not start; see {log_path}") from None
        assert worker.process is not None
        console.print(f"[bold]worker[/]: pid {worker.process.pid}, log {log_path}, metrics {url}")
        console.print(f"[bold]simulator[/]: {rate:.0f} events/s for {duration:.0f}s")
        simulator = asyncio.run(_demo_loop(settings, url, rate, duration, run_live))
        console.print(f"[bold]simulator[/]: produced {simulator} events; final counters:")
        time.sleep(3)
        console.print(_funnel_table(scrape_metrics(url)))
        funnel_url = url.replace("/metrics", "/funnel")
        with urllib.request.urlopen(funnel_url, timeout=5) as response:
            print_summary(json.loads(response.read()))
        console.print(f"(the same as JSON: {funnel_url}; `streamer funnel show` prints it)")
    finally:
        worker.stop()
        if broker is not None and started_broker and not keep_broker:
            broker.down()
            console.print("[bold]kafka[/]: stopped (use --keep-broker to leave it running)")


async def _demo_loop(
    settings: Settings, url: str, rate: float, duration: float, run_live: Any
) -> int:
    task = asyncio.create_task(run_live(settings, rate=rate, duration=duration))
    while not task.done():
        await asyncio.sleep(5)
        try:
            values = await asyncio.to_thread(scrape_metrics, url)
        except (urllib.error.URLError, OSError) as exc:
            console.print(f"[red]metrics not reachable: {exc}[/]")
            continue
        stages = {
            dict(labels)["stage"]: v
            for (name, labels), v in values.items()
            if name == "streamer_stage_events_total"
        }
        line = "  ".join(f"{stage}={count:.0f}" for stage, count in stages.items())
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] stage events: {line}")
        entered = {
            dict(labels)["stage"]: v
            for (name, labels), v in values.items()
            if name == "streamer_funnel_sessions_entered_total"
        }
        if any(entered.values()):
            funnel_line = " -> ".join(f"{stage} {count:.0f}" for stage, count in entered.items())
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] checkout funnel: {funnel_line}")
    report = await task
    return int(report.events)
