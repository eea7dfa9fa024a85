"""The `streamer` command, one module per command group (each registers its commands on the
root group of ``_common``)."""

from __future__ import annotations

from streamer.cli import (  # noqa: F401 (they register their commands)
    alerts,
    config,
    demo,
    dlq,
    funnels,
    kafka,
    replay,
    report,
    schemas,
    simulate,
    worker,
)
from streamer.cli._common import cli
from streamer.plan.cli import plan as plan_group

cli.add_command(plan_group)  # `streamer plan` (streamer/plan/cli.py)

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="streamer")
