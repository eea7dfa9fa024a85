"""`streamer schemas`: write and check the JSON Schemas."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamer.cli._common import cli, fail_cleanly, settings_of


# --- schemas -----------------------------------------------------------------------------
def _default_schema_dir() -> Path:
    from streamer.resources import deploy_dir

    return deploy_dir().parent / "schemas"


def _source(
    ctx: click.Context, plan: str | None, root: Path | None
) -> tuple[str | None, str, Path]:
    """The plan the events' schemas come from (--plan, else STREAMER_TRACKING_PLAN, else the
    models), how to name it, and the folder. A plan's schemas need a folder of their own:
    schemas/ holds the built-in contract's."""
    from streamer.schemas import DEFAULT_PLAN

    chosen = plan or settings_of(ctx).tracking_plan
    if chosen not in (None, DEFAULT_PLAN) and root is None:
        raise click.UsageError(
            f"the tracking plan {chosen} is set: give --dir (schemas/ holds the schemas of "
            "streamer's own events)"
        )
    named = f"the tracking plan {chosen}" if chosen else "the models"
    return chosen, named, root or _default_schema_dir()


_DIR = click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path))
_PLAN = click.option(
    "--plan",
    metavar="PLAN",
    help="the tracking plan the events' schemas come from (default: STREAMER_TRACKING_PLAN; "
    "unset or preset:streamer: the models of streamer/events.py)",
)


@cli.group()
def schemas() -> None:
    """The JSON Schemas in schemas/: the input events' (from the tracking plan, or the models)
    and the records streamer emits."""


@schemas.command("write")
@_DIR
@_PLAN
@click.pass_context
@fail_cleanly
def schemas_write(ctx: click.Context, root: Path | None, plan: str | None) -> None:
    """(Re)generate schemas/ from the tracking plan, else from streamer/events.py."""
    from streamer.schemas import check_schemas, write_schemas

    source, named, target = _source(ctx, plan, root)
    written = write_schemas(target, source)
    click.echo(f"{len(written)} file(s) updated in {target} from {named}")
    stale = [p for p in check_schemas(target, source) if p.endswith("(remove it)")]
    for problem in stale:  # written by another plan or the models: never deleted here
        click.echo(f"stale: {problem}", err=True)


@schemas.command("check")
@_DIR
@_PLAN
@click.pass_context
@fail_cleanly
def schemas_check(ctx: click.Context, root: Path | None, plan: str | None) -> None:
    """Exit 1 when schemas/ differs from what the tracking plan (else the models) generates."""
    from streamer.schemas import check_schemas

    source, named, target = _source(ctx, plan, root)
    problems = check_schemas(target, source)
    for problem in problems:
        click.echo(f"drift: {problem}", err=True)
    if problems:
        again = f" --plan {source}" if source else ""
        click.echo(f"run `streamer schemas write{again}` and commit the result", err=True)
        sys.exit(1)
    click.echo(f"{target} matches {named}")
