"""`streamer kafka` (the local broker) and `streamer topics`."""

from __future__ import annotations

import sys
from typing import Any

import click

from streamer.cli._common import cli, fail_cleanly, kafka_ready, settings_of
from streamer.kafka_io import ensure_topic_plan, metadata_ready, run_sync
from streamer.settings import Settings


# --- kafka -------------------------------------------------------------------------------
@cli.group()
def kafka() -> None:
    """Run a local single-node Kafka broker (KRaft) for development and the demo."""


def local_kafka(settings: Settings) -> Any:
    from streamer.kafka_local import LocalKafka

    return LocalKafka(settings)


@kafka.command("up")
@click.pass_context
@fail_cleanly
def kafka_up(ctx: click.Context) -> None:
    """Start the local broker (download it once with Maven), wait until it answers."""
    settings = settings_of(ctx)
    if not settings.uses_local_broker:
        ok = run_sync(metadata_ready(settings))
        state = "reachable" if ok else "NOT reachable"
        click.echo(
            f"STREAMER_KAFKA_BOOTSTRAP is set: using the existing cluster at "
            f"{settings.bootstrap_servers} ({state}); no local broker started"
        )
        sys.exit(0 if ok else 1)
    status, started = local_kafka(settings).up()
    if started:
        click.echo(f"started {status.describe()}")
    else:
        click.echo(f"already running: {status.describe()}")
    click.echo(f"bootstrap: {status.bootstrap}")


@kafka.command("down")
@click.pass_context
@fail_cleanly
def kafka_down(ctx: click.Context) -> None:
    """Stop the local broker (its data stays; `kafka reset` deletes it)."""
    broker = local_kafka(settings_of(ctx))
    click.echo("stopped local Kafka" if broker.down() else "local Kafka was not running")


@kafka.command("status")
@click.pass_context
@fail_cleanly
def kafka_status(ctx: click.Context) -> None:
    """Say whether the local broker runs; exit 1 when it does not."""
    status = local_kafka(settings_of(ctx)).status()
    click.echo(status.describe())
    sys.exit(0 if status.running else 1)


@kafka.command("reset")
@click.pass_context
@fail_cleanly
def kafka_reset(ctx: click.Context) -> None:
    """Stop the local broker and delete its data (all topics)."""
    broker = local_kafka(settings_of(ctx))
    broker.destroy()
    click.echo(f"deleted {broker.data_dir}")


@cli.command("topics")
@click.pass_context
@fail_cleanly
def topics(ctx: click.Context) -> None:
    """Create streamer's topics that do not exist yet."""
    settings = settings_of(ctx)
    plan = worker_topic_plan(settings)
    kafka_ready(settings)
    run_sync(ensure_topic_plan(settings, plan))
    for name, (partitions, _) in plan.items():
        click.echo(f"{name}: {partitions} partition(s)")


def worker_topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    from streamer.app import topic_plan, worker_events

    funnels, _ = worker_events(settings)  # user funnels need their units topic
    return topic_plan(settings, funnels)
