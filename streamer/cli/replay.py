"""`streamer replay` (a time range, `diff`), `backfill`, `load`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from streamer.cli._common import (
    cli,
    console,
    fail_cleanly,
    funnels_option,
    input_topics,
    kafka_ready,
    report_option,
    settings_of,
)
from streamer.cli.funnels import checked_funnels
from streamer.cli.kafka import worker_topic_plan
from streamer.errors import StreamerError
from streamer.escaping import terminal_text
from streamer.kafka_access import AccessNeeds
from streamer.kafka_io import ensure_topic_plan

if TYPE_CHECKING:
    from rich.progress import Progress

    from streamer.events import ReplayReport
    from streamer.settings import Settings


def _utc(value: str, flag: str, now: Any) -> Any:
    from streamer.times import parse_time

    try:
        return parse_time(value, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


def _time_range(start: str, end: str) -> tuple[Any, Any]:
    """``--from`` and ``--to`` as UTC times, ``--to`` after ``--from``; the resolved range is
    printed (stderr) when either was not given as an exact time."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    range_from, range_to = _utc(start, "--from", now), _utc(end, "--to", now)
    if range_to <= range_from:
        raise click.BadParameter(f"--to {end} is not after --from {start}", param_hint="--to")
    click.echo(
        f"range: {range_from.isoformat(timespec='seconds')} .. "
        f"{range_to.isoformat(timespec='seconds')} (UTC, --to exclusive)",
        err=True,
    )
    return range_from, range_to


@cli.group(invoke_without_command=True)
@click.option(
    "--from",
    "start",
    metavar="TIME",
    help="start of the range: ISO 8601 (UTC if bare), -7d, '2h ago', yesterday, epoch ms",
)
@click.option("--to", "end", metavar="TIME", help="end of the range, exclusive")
@report_option
@funnels_option
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="what-if: override a funnel setting by its path in the file, e.g. "
    "alerting.min_increase=0.05 (every funnel; repeatable)",
)
@click.option("--no-run-info", is_flag=True, help="leave out the run block (wall-clock facts)")
@click.option(
    "--drain",
    is_flag=True,
    help="read on past --to until every cohort window of the range is final (attempts open at "
    "--to decided as live decides them), instead of reporting them as open",
)
@click.option(
    "--notify",
    is_flag=True,
    help="send the alerts it finds to Slack, marked as a replay (muted by default)",
)
@click.pass_context
@fail_cleanly
def replay(
    ctx: click.Context,
    start: str | None,
    end: str | None,
    report: Path | None,
    funnel_paths: tuple[Path, ...],
    overrides: tuple[str, ...],
    no_run_info: bool,
    drain: bool,
    notify: bool,
) -> None:
    """Replay a time range of the input topics through the same core as the worker, read-only:
    `streamer replay --from 2026-11-20T14:00Z --to 2026-11-20T18:00Z --report out.json`.
    Nothing is written to Kafka and nothing is sent to Slack."""
    if ctx.invoked_subcommand is not None:
        return
    if start is None or end is None:
        raise click.UsageError(
            "give --from and --to, e.g. `streamer replay --from -1h --to now`, or compare two "
            "reports with `streamer replay diff BEFORE.json AFTER.json`"
        )
    range_from, range_to = _time_range(start, end)
    from streamer.range_replay import replay_range

    settings = settings_of(ctx)
    changes = _what_if(overrides)
    funnels = checked_funnels(settings, funnel_paths or settings.funnels, changes)
    kafka_ready(settings, AccessNeeds(read=input_topics(settings)))  # read-only: writes nothing
    with _progress_bars() as bar:
        result = asyncio.run(
            replay_range(
                settings,
                funnels,
                range_from,
                range_to,
                progress=_progress_by_topic(bar),
                run_info=not no_run_info,
                overrides=changes,
                drain=drain,
            )
        )
    text = json.dumps(result.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    if report is None:
        click.echo(text, nl=False)
    else:
        report.write_text(text)
    _print_replay_summary(settings, result, report, notify)


def _what_if(overrides: tuple[str, ...]) -> dict[str, str]:
    """``--set KEY=VALUE`` options as a mapping of funnel settings to their new values."""
    changes: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--set")
        changes[key.strip()] = value.strip()
    return changes


def _progress_bars() -> Progress:
    """Progress bars on stderr, gone when the replay ends."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} messages/s"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True), transient=True)


def _progress_by_topic(bar: Progress) -> Callable[[str, int, int], None]:
    """A replay's progress callback: one bar per topic."""
    per_input: dict[str, tuple[int, int]] = {}
    tasks: dict[str, Any] = {}
    began = time.monotonic()

    def progress(name: str, read: int, total: int) -> None:
        """Offsets read per topic (all its partitions), their rate and the time left."""
        per_input[name] = (read, total)
        topic = name.rsplit("/", 1)[0]
        done = sum(r for n, (r, _) in per_input.items() if n.rsplit("/", 1)[0] == topic)
        whole = sum(t for n, (_, t) in per_input.items() if n.rsplit("/", 1)[0] == topic)
        rate = done / max(1e-3, time.monotonic() - began)
        if topic not in tasks:
            tasks[topic] = bar.add_task(topic, total=whole, rate=rate)
        bar.update(tasks[topic], completed=done, total=whole, rate=rate)

    return progress


def _print_replay_summary(
    settings: Settings, result: ReplayReport, report: Path | None, notify: bool
) -> None:
    """On stderr: what was read, the alerts sent with ``--notify``, and per funnel its windows
    and the alerts that would fire."""
    err = Console(stderr=True)
    events = result.events
    err.print(
        f"replayed {events.read} messages: {events.in_range} events in range, "
        f"{events.out_of_range} outside, {events.late} late, {events.rejected} rejected"
        + (f"; report in {report}" if report else "")
    )
    if notify:
        from streamer.range_replay import notify_alerts

        outcomes = asyncio.run(notify_alerts(settings, result))
        err.print(
            "sent to Slack: "
            + (", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "nothing")
        )
    for replayed in result.funnels:
        firing = [a for a in replayed.alerts if a.state == "firing"]
        warming = ", ".join(replayed.warming_up)
        err.print(
            f"{replayed.funnel}: {len(replayed.windows)} windows, "
            f"{len(firing)} alert{'' if len(firing) == 1 else 's'} would fire"
            + (f"; warming up at the end: {warming}" if warming else "")
        )


@replay.command("diff")
@click.argument("before", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the difference as JSON")
@fail_cleanly
def replay_diff(before: Path, after: Path, as_json: bool) -> None:
    """What a what-if changed: alerts added, removed and changed (~, as they are in AFTER),
    conversion per step (two reports)."""
    from streamer.range_replay import diff_reports

    diff = diff_reports(_read_replay_report(before), _read_replay_report(after))
    if as_json:
        click.echo(json.dumps(diff, indent=2, sort_keys=True))
        return
    for item in diff["funnels"]:
        table = Table(title=f"{item['funnel']}: alerts")
        for column in ("", "alert", "state", "step", "severity", "window", "explanation"):
            table.add_column(column)
        marks = (("+", "alerts_added"), ("-", "alerts_removed"), ("~", "alerts_changed"))
        for sign, key in marks:
            for alert in item[key]:
                table.add_row(
                    sign,
                    alert["event_id"].rsplit("/", 2)[0],
                    alert["state"],
                    alert["step"],
                    alert["severity"],
                    alert["window_start"],
                    terminal_text(", ".join(alert["explanation"])),
                )
        console.print(table)
        steps = Table(title=f"{item['funnel']}: conversion per step over the range")
        for column in ("stage", "before", "after", "entered before", "entered after"):
            steps.add_column(column)

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{value * 100:.2f}%"

        for step in item["steps"]:
            steps.add_row(
                step["stage"],
                pct(step["conversion_before"]),
                pct(step["conversion_after"]),
                str(step["entered_before"]),
                str(step["entered_after"]),
            )
        console.print(steps)


def _read_replay_report(path: Path) -> ReplayReport:
    """A report written by ``streamer replay --report``; anything else is refused in one line
    naming the first field that is wrong."""
    from pydantic import ValidationError

    from streamer.events import ReplayReport

    try:
        return ReplayReport.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the document"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise StreamerError(
            f"{path}: not a replay report: {where}: {first['msg']}{more}; "
            "write one with `streamer replay --from ... --to ... --report FILE`"
        ) from None


@cli.command("backfill")
@click.option(
    "--funnels",
    "--funnel",
    "funnel_paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="the funnel files or folders to start warm (repeatable)",
)
@click.option("--from", "start", required=True, metavar="TIME", help="start of the history")
@click.option("--to", "end", required=True, metavar="TIME", help="end of the history, exclusive")
@click.pass_context
@fail_cleanly
def backfill_command(
    ctx: click.Context, funnel_paths: tuple[Path, ...], start: str, end: str
) -> None:
    """Compute funnels' detector baselines from a range of history and hand them to the live
    worker (the baselines topic): a funnel the worker has no detector state for starts warm,
    with no cold-start period. Read-only on the input topics."""
    from streamer.range_replay import backfill

    range_from, range_to = _time_range(start, end)
    settings = settings_of(ctx)
    funnels = checked_funnels(settings, funnel_paths)
    kafka_ready(
        settings, AccessNeeds(read=input_topics(settings), write=(settings.baselines_topic,))
    )
    asyncio.run(ensure_topic_plan(settings, worker_topic_plan(settings)))
    records = asyncio.run(backfill(settings, funnels, range_from, range_to))
    for record in records:
        cold = record["warming_up"]
        click.echo(
            f"{record['funnel']}: baselines over {range_from.isoformat()}..{range_to.isoformat()} "
            f"published to {settings.baselines_topic}; "
            + (f"still warming up: {', '.join(cold)}" if cold else "every step warm")
        )


def _load_otto(ctx: click.Context, path: Path) -> None:
    from streamer.loaders import otto_events, replay_events

    events = sorted(otto_events(path), key=lambda e: (e["occurred_at"], e["event_id"]))
    settings = settings_of(ctx)
    kafka_ready(settings, AccessNeeds(write=input_topics(settings)))
    count = asyncio.run(replay_events(settings, events))
    click.echo(
        f"loaded {count} OTTO events into the input topics; sessions are decided as their "
        "timeouts pass the watermark"
    )


@cli.group()
def load() -> None:
    """Load a recorded dataset into the input topics (the live worker processes it)."""


@load.command("otto")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@fail_cleanly
def load_otto(ctx: click.Context, path: Path) -> None:
    """Produce the OTTO session sample (JSONL) in event-time order."""
    _load_otto(ctx, path)


@replay.command("otto", hidden=True)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@fail_cleanly
def replay_otto(ctx: click.Context, path: Path) -> None:
    """The former name of `streamer load otto`."""
    _load_otto(ctx, path)
