"""`streamer schemas`: write and check the JSON Schemas."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamer.cli._common import cli


# --- schemas -----------------------------------------------------------------------------
def _default_schema_dir() -> Path:
    from streamer.resources import deploy_dir

    return deploy_dir().parent / "schemas"


@cli.group()
def schemas() -> None:
    """The JSON Schema contract in schemas/, generated from the models."""


@schemas.command("write")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None)
def schemas_write(root: Path | None) -> None:
    """(Re)generate schemas/ from streamer/events.py."""
    from streamer.schemas import write_schemas

    target = root or _default_schema_dir()
    written = write_schemas(target)
    click.echo(f"{len(written)} file(s) updated in {target}")


@schemas.command("check")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None)
def schemas_check(root: Path | None) -> None:
    """Exit 1 when schemas/ differs from what the models generate."""
    from streamer.schemas import check_schemas

    target = root or _default_schema_dir()
    problems = check_schemas(target)
    for problem in problems:
        click.echo(f"drift: {problem}", err=True)
    if problems:
        click.echo("run `streamer schemas write` and commit the result", err=True)
        sys.exit(1)
    click.echo(f"{target} matches the models")
