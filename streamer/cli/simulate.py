"""`streamer simulate`: realistic traffic to the input topics."""

from __future__ import annotations

import asyncio

import click

from streamer.cli._common import POSITIVE, cli, fail_cleanly, input_topics, kafka_ready, settings_of
from streamer.kafka_access import AccessNeeds


# --- simulate ----------------------------------------------------------------------------
@cli.command("simulate")
@click.option("--rate", default=50.0, show_default=True, type=POSITIVE, help="events per second")
@click.option("--duration", default=60.0, show_default=True, type=POSITIVE, help="seconds to run")
@click.option("--seed", default=1, show_default=True, help="random seed (same seed, same sessions)")
@click.pass_context
@fail_cleanly
def simulate(ctx: click.Context, rate: float, duration: float, seed: int) -> None:
    """Produce realistic shop sessions to the clickstream and checkout topics."""
    from streamer.simulate import run_live

    settings = settings_of(ctx)
    kafka_ready(settings, AccessNeeds(write=input_topics(settings), create=input_topics(settings)))
    report = asyncio.run(run_live(settings, rate=rate, duration=duration, seed=seed))
    click.echo(f"produced {report.events} events in {report.sessions} sessions: {report.by_type}")
