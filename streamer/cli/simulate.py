"""`streamer simulate`: realistic traffic to the input topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from streamer.cli._common import POSITIVE, cli, fail_cleanly, input_topics, kafka_ready, settings_of
from streamer.kafka_access import AccessNeeds


# --- simulate ----------------------------------------------------------------------------
@cli.command("simulate")
@click.option("--rate", default=50.0, show_default=True, type=POSITIVE, help="events per second")
@click.option("--duration", default=60.0, show_default=True, type=POSITIVE, help="seconds to run")
@click.option("--seed", default=1, show_default=True, help="random seed (same seed, same sessions)")
@click.option(
    "--shape",
    type=click.Choice(["streamer", "segment", "posthog"]),
    default="streamer",
    show_default=True,
    help="the events' shape: streamer's own, Segment calls or PostHog captures (read them "
    "with STREAMER_TRACKING_PLAN=preset:segment or preset:posthog)",
)
@click.option(
    "--export",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write --duration seconds of history ending now to this JSONL file instead of "
    "producing live (no Kafka): an export to try `streamer report` on",
)
@click.pass_context
@fail_cleanly
def simulate(
    ctx: click.Context, rate: float, duration: float, seed: int, shape: str, export: Path | None
) -> None:
    """Produce realistic shop sessions to the clickstream and checkout topics (or, with
    --export, write them to a file)."""
    from streamer.simulate import run_live, write_export

    if export is not None:
        report = write_export(export, rate=rate, duration=duration, seed=seed, shape=shape)
        click.echo(
            f"wrote {report.events} {shape} events of {report.sessions} sessions to {export}"
        )
        return
    settings = settings_of(ctx)
    kafka_ready(settings, AccessNeeds(write=input_topics(settings), create=input_topics(settings)))
    report = asyncio.run(run_live(settings, rate=rate, duration=duration, seed=seed, shape=shape))
    click.echo(f"produced {report.events} events in {report.sessions} sessions: {report.by_type}")
