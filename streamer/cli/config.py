"""`streamer config`: the settings in force."""

from __future__ import annotations

import click

from streamer.cli._common import cli, settings_of


# --- config ------------------------------------------------------------------------------
@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the validated settings, secrets masked."""
    for name, value in settings_of(ctx).masked().items():
        click.echo(f"{name} = {value!r}")
