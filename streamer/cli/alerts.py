"""`streamer alerts`: redeliver parked alerts."""

from __future__ import annotations

import asyncio
import sys

import click

from streamer.cli._common import cli, fail_cleanly, kafka_ready, settings_of


# --- alerts ------------------------------------------------------------------------------
@cli.group()
def alerts() -> None:
    """Test the alert routes; re-deliver alerts that could not be delivered."""


@alerts.command("test")
@click.pass_context
@fail_cleanly
def alerts_test(ctx: click.Context) -> None:
    """Send a test alert through each configured route (Slack warning and page,
    Alertmanager, webhook); no Kafka."""
    from streamer.alerts import send_test_alerts

    outcomes = asyncio.run(send_test_alerts(settings_of(ctx)))
    for route, delivery in outcomes:
        click.echo(f"{route}: {delivery.outcome.value} ({delivery.detail})")
    if any(delivery.outcome.value != "delivered" for _, delivery in outcomes):
        sys.exit(1)


@alerts.command("redeliver")
@click.option("--dry-run", is_flag=True, help="say how many would go, send nothing")
@click.pass_context
@fail_cleanly
def alerts_redeliver(ctx: click.Context, dry_run: bool) -> None:
    """Send alerts that Slack refused (4xx) back to the notifier, each once (after a fix)."""
    from streamer.alerts import redeliver_failed_alerts

    settings = settings_of(ctx)
    kafka_ready(settings)
    report = asyncio.run(redeliver_failed_alerts(settings, dry_run))
    verb = "would redeliver" if dry_run else "redelivered"
    click.echo(
        f"{verb} {report.redelivered} of {report.parked} parked alert(s); "
        f"{report.already} redelivered before"
    )
