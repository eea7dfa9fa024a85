"""``streamer plan``: check a tracking plan and write its JSON Schemas.

A group of its own, registered at the end of ``streamer/cli.py``, so that the plan commands
and the rest of the CLI do not edit the same lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from streamer.errors import PlanError
from streamer.plan.compile import compile_plan
from streamer.plan.load import PRESETS, load_plan
from streamer.plan.schemas import event_slug, write_plan_schemas

__all__ = ["plan"]


@click.group()
def plan() -> None:
    """Tracking plans: your events, declared (docs/tracking-plan.md)."""


@plan.command("check")
@click.argument("sources", nargs=-1, required=True, metavar="FILE_OR_DIR...")
@click.option(
    "--schemas",
    "schemas_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="write the plan's JSON Schemas here (a folder per plan when several are given)",
)
def plan_check(sources: tuple[str, ...], schemas_dir: Path | None) -> None:
    """Load, validate and compile each plan (a YAML file, a folder of them, or
    preset:NAME with NAME one of streamer, segment, posthog, snowplow); print one line per
    plan. An error is one line naming file:line and the field (exit code 2)."""
    for source in sources:
        try:
            loaded = load_plan(source)
            compile_plan(loaded)
        except PlanError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        click.echo(loaded.summary())
        if schemas_dir is not None:
            name = source.removeprefix("preset:") if source.startswith("preset:") else source
            target = schemas_dir / event_slug(Path(name).stem) if len(sources) > 1 else schemas_dir
            written = write_plan_schemas(loaded, target)
            click.echo(f"  {len(written)} JSON Schemas written to {target}")


plan_check.help = (plan_check.help or "") + f" Presets: {', '.join(PRESETS)}."
