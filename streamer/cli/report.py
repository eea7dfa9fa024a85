"""`streamer report FILE`: the replay report over an exported file, no Kafka."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from streamer.cli._common import cli, fail_cleanly, funnels_option, report_option, settings_of
from streamer.cli.funnels import checked_funnels
from streamer.cli.replay import _time_range
from streamer.escaping import terminal_text

if TYPE_CHECKING:
    from streamer.events import ReplayReport
    from streamer.file_report import FileRejection


@cli.command("report")
@click.argument(
    "path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--from", "start", required=True, metavar="TIME", help="start of the range (as replay)"
)
@click.option("--to", "end", required=True, metavar="TIME", help="end of the range, exclusive")
@click.option(
    "--plan",
    "plan_source",
    metavar="PLAN",
    help="the tracking plan the file's events follow: a YAML file, a folder or preset:NAME "
    "(default: STREAMER_TRACKING_PLAN, else streamer's own events, preset:streamer)",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="the file's format (default: csv for *.csv, else jsonl)",
)
@click.option(
    "--column",
    "columns",
    multiple=True,
    metavar="PATH=COLUMN",
    help="CSV: put COLUMN at the plan's dotted PATH, e.g. timestamp=ts (repeatable; "
    "other columns go to the path their header names)",
)
@click.option(
    "--topic",
    help="the input topic of every line (default: the topic its event is planned on, else "
    "the file's name)",
)
@click.option(
    "--sort",
    is_flag=True,
    help="order the lines by time first (in memory), for an export that is not sorted",
)
@funnels_option
@click.option(
    "--drain",
    is_flag=True,
    help="as replay: read on past --to until every cohort window of the range is final",
)
@report_option
@click.pass_context
@fail_cleanly
def report_command(
    ctx: click.Context,
    path: Path,
    start: str,
    end: str,
    plan_source: str | None,
    fmt: str | None,
    columns: tuple[str, ...],
    topic: str | None,
    sort: bool,
    funnel_paths: tuple[Path, ...],
    drain: bool,
    report: Path | None,
) -> None:
    """The `streamer replay --from --to` report over an exported JSONL or CSV file of events in
    the shape a tracking plan declares, without Kafka: try streamer on an export before
    connecting it. Deterministic: each line's time is its own (docs/replay.md).
    `streamer report events.jsonl --plan preset:segment --from 2026-11-22 --to 2026-11-23`"""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from streamer.decoders import tracking_plan
    from streamer.file_report import column_mapping, file_format, report_file

    range_from, range_to = _time_range(start, end)
    settings = settings_of(ctx)
    source = plan_source or settings.tracking_plan or "preset:streamer"
    settings = settings.model_copy(update={"tracking_plan": source})
    funnels = checked_funnels(settings, funnel_paths or settings.funnels)
    plan = tracking_plan(settings)
    assert plan is not None  # a source is set above
    rejected: list[FileRejection] = []
    err = Console(stderr=True, soft_wrap=True)  # one line per fact, as replay
    columns_shown = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns_shown, console=err, transient=True) as bar:
        task = bar.add_task(path.name, total=path.stat().st_size)
        result = report_file(
            settings,
            plan,
            funnels,
            path,
            range_from,
            range_to,
            fmt=file_format(path, fmt),
            columns=column_mapping(columns),
            topic=topic,
            sort=sort,
            drain=drain,
            progress=lambda read, total: bar.update(task, completed=read, total=total),
            rejected=rejected,
        )
    text = json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    if report is None:
        click.echo(text, nl=False)
    else:
        report.write_text(text)
    _summary(err, path, source, result, report, rejected)


def _summary(
    err: Console,
    path: Path,
    source: str,
    result: ReplayReport,
    report: Path | None,
    rejected: list[FileRejection],
) -> None:
    """stderr: the first rejected lines, what was read, and per funnel its windows and alerts."""
    events = result.events
    for line in rejected:
        err.print(terminal_text(f"{path}:{line}"), markup=False, highlight=False)
    err.print(
        f"read {events.read} lines of {path} through {source}: {events.in_range} events in "
        f"range, {events.out_of_range} outside, {events.late} late, {events.duplicate} "
        f"duplicate, {events.rejected} rejected, {events.ignored} unplanned (ignored)"
        + (f"; report in {report}" if report else ""),
        markup=False,
        highlight=False,
    )
    for replayed in result.funnels:
        firing = [a for a in replayed.alerts if a.state == "firing"]
        err.print(
            f"{replayed.funnel}: {len(replayed.windows)} windows, {len(firing)} "
            f"alert{'' if len(firing) == 1 else 's'} would fire",
            markup=False,
        )
