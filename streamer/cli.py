"""The `streamer` command: thin wrappers that build settings, call the library and print."""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from aiokafka.errors import KafkaError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from streamer.errors import StreamerError
from streamer.escaping import install_inert_log_records, terminal_text
from streamer.kafka_access import AccessNeeds
from streamer.kafka_io import ensure_topic_plan, metadata_ready, run_sync
from streamer.settings import Settings, load_settings
from streamer.worker_process import MetricValues, WorkerProcess, scrape_metrics

__all__ = ["main"]

console = Console(stderr=False)
F = TypeVar("F", bound=Callable[..., Any])
# A rate or duration of zero or less divides by zero or never ends.
_POSITIVE = click.FloatRange(min=0, min_open=True)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def _fail_cleanly(func: F) -> F:
    """StreamerError -> one line on stderr and exit code 2, no traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except StreamerError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except KafkaError as exc:  # met mid-command: named, with the setting or topic to fix
            from streamer.kafka_access import explain_kafka_error

            explained = explain_kafka_error(click.get_current_context().obj, exc)
            click.echo(f"error: {explained}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _kafka_ready(settings: Settings, needs: AccessNeeds | None = None) -> None:
    """Does a broker answer, let us in, and allow what the command needs? (one line if not)"""
    from streamer.kafka_access import ready

    run_sync(ready(settings, needs))


def _sources(settings: Settings) -> tuple[str, str]:
    return (settings.clickstream_topic, settings.checkout_topic)


def _configure_logging(level: str) -> None:
    # Log messages quote event values (dead-letter reasons, ids): every record of the process,
    # Faust's included, shows control characters escaped, so a value cannot forge a line.
    install_inert_log_records()
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The Kafka client's routine chatter (subscriptions, coordinators) is not news on the
    # command line; its warnings and errors still are.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamer", prog_name="streamer")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML settings file (also STREAMER_CONFIG); environment variables override it.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """streamer: live funnel drop-off detection on Kafka."""
    try:
        ctx.obj = load_settings(config_file)
    except StreamerError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    _configure_logging(ctx.obj.log_level)


# --- config ------------------------------------------------------------------------------
@cli.group()
def config() -> None:
    """Inspect the effective configuration."""


@config.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the validated settings, secrets masked."""
    for name, value in _settings(ctx).masked().items():
        click.echo(f"{name} = {value!r}")


# --- kafka -------------------------------------------------------------------------------
@cli.group()
def kafka() -> None:
    """Run a local single-node Kafka broker (KRaft) for development and the demo."""


def _local_kafka(settings: Settings) -> Any:
    from streamer.kafka_local import LocalKafka

    return LocalKafka(settings)


@kafka.command("up")
@click.pass_context
@_fail_cleanly
def kafka_up(ctx: click.Context) -> None:
    """Start the local broker (download it once with Maven), wait until it answers."""
    settings = _settings(ctx)
    if not settings.uses_local_broker:
        ok = run_sync(metadata_ready(settings))
        state = "reachable" if ok else "NOT reachable"
        click.echo(
            f"STREAMER_KAFKA_BOOTSTRAP is set: using the existing cluster at "
            f"{settings.bootstrap_servers} ({state}); no local broker started"
        )
        sys.exit(0 if ok else 1)
    status, started = _local_kafka(settings).up()
    if started:
        click.echo(f"started {status.describe()}")
    else:
        click.echo(f"already running: {status.describe()}")
    click.echo(f"bootstrap: {status.bootstrap}")


@kafka.command("down")
@click.pass_context
@_fail_cleanly
def kafka_down(ctx: click.Context) -> None:
    """Stop the local broker (its data stays; `kafka reset` deletes it)."""
    broker = _local_kafka(_settings(ctx))
    click.echo("stopped local Kafka" if broker.down() else "local Kafka was not running")


@kafka.command("status")
@click.pass_context
@_fail_cleanly
def kafka_status(ctx: click.Context) -> None:
    """Say whether the local broker runs; exit 1 when it does not."""
    status = _local_kafka(_settings(ctx)).status()
    click.echo(status.describe())
    sys.exit(0 if status.running else 1)


@kafka.command("reset")
@click.pass_context
@_fail_cleanly
def kafka_reset(ctx: click.Context) -> None:
    """Stop the local broker and delete its data (all topics)."""
    broker = _local_kafka(_settings(ctx))
    broker.destroy()
    click.echo(f"deleted {broker.data_dir}")


@cli.command("topics")
@click.pass_context
@_fail_cleanly
def topics(ctx: click.Context) -> None:
    """Create streamer's topics that do not exist yet."""
    settings = _settings(ctx)
    plan = _topic_plan(settings)
    _kafka_ready(settings)
    run_sync(ensure_topic_plan(settings, plan))
    for name, (partitions, _) in plan.items():
        click.echo(f"{name}: {partitions} partition(s)")


def _topic_plan(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    from streamer.app import topic_plan

    return topic_plan(settings)


# --- dead letters ------------------------------------------------------------------------
@cli.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic."""


def _preview(payload_base64: str, width: int = 60) -> Text:
    """The start of a dead letter's original bytes, inert on a terminal (:func:`terminal_text`:
    escape sequences and rich markup shown as written)."""
    import base64

    raw = base64.b64decode(payload_base64)
    text = raw.decode("utf-8", errors="replace")
    preview = terminal_text(text[:width])
    if len(text) > width:
        preview.append(f"... ({len(raw)} bytes)")
    return preview


@dlq.command("inspect")
@click.option("--limit", default=50, show_default=True, help="newest N dead letters")
@click.option("--reason", "reasons", multiple=True, help="only these reason codes (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="one JSON record per line")
@click.pass_context
@_fail_cleanly
def dlq_inspect(ctx: click.Context, limit: int, reasons: tuple[str, ...], as_json: bool) -> None:
    """Print dead letters readably: id, reason, field, message, payload preview."""
    from collections import Counter

    from streamer.dlq import parse_dead_letters
    from streamer.kafka_io import read_topic

    settings = _settings(ctx)
    _kafka_ready(settings, AccessNeeds(read=(settings.dlq_topic,)))
    letters, unreadable = parse_dead_letters(asyncio.run(read_topic(settings, settings.dlq_topic)))
    if reasons:
        letters = [letter for letter in letters if letter.reason.value in reasons]
    shown = letters[-limit:] if limit > 0 else letters
    if as_json:
        for letter in shown:
            click.echo(letter.model_dump_json())
        return
    table = Table(title=f"{settings.dlq_topic}: {len(shown)} of {len(letters)} dead letters")
    for column in ("id", "reason", "field", "message", "payload"):
        table.add_column(column, overflow="fold")
    for letter in shown:
        table.add_row(
            terminal_text(letter.dead_letter_id),
            letter.reason.value,
            terminal_text(letter.field or ""),
            terminal_text(letter.message),
            _preview(letter.payload_base64),
        )
    console.print(table)
    counts = Counter(letter.reason.value for letter in letters)
    console.print("by reason: " + (", ".join(f"{k}={v}" for k, v in counts.most_common()) or "-"))
    if unreadable:
        console.print(
            f"[red]{unreadable} record(s) in {settings.dlq_topic} are not dead letters[/]"
        )


@dlq.command("replay")
@click.option("--reason", "reasons", multiple=True, help="only these reason codes (repeatable)")
@click.option("--dry-run", is_flag=True, help="say what would be replayed, send nothing")
@click.pass_context
@_fail_cleanly
def dlq_replay(ctx: click.Context, reasons: tuple[str, ...], dry_run: bool) -> None:
    """Re-submit dead letters to their source topics (each at most once), e.g. after a fix."""
    from streamer.dlq import ledger_topic, replay_dead_letters

    settings = _settings(ctx)
    ledger = ledger_topic(settings)
    _kafka_ready(
        settings,
        AccessNeeds(
            read=(settings.dlq_topic, ledger),
            write=() if dry_run else (*_sources(settings), ledger),
            create=(ledger,),
        ),
    )
    report = asyncio.run(
        replay_dead_letters(settings, frozenset(reasons) if reasons else None, dry_run)
    )
    verb = "would replay" if dry_run else "replayed"
    count = report.selected if dry_run else report.replayed
    click.echo(
        f"{verb} {count} dead letter(s) {report.by_reason or ''}; "
        f"{report.already_replayed} already replayed (ledger {ledger_topic(settings)}), "
        f"{report.filtered_out} filtered out, {report.unreadable} unreadable"
    )


# --- funnels and replay -----------------------------------------------------------------
@cli.group()
def funnel() -> None:
    """Funnel definitions and live funnel numbers."""


@funnel.command("check")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
@_fail_cleanly
def funnel_check(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Validate funnel definition files (default: the configured ones) and print them."""
    for definition in _checked_funnels(files or _settings(ctx).funnels):
        click.echo(definition.describe())


def _checked_funnels(paths: Sequence[Path], overrides: dict[str, str] | None = None) -> Any:
    """The funnel files, validated against the event types there are (today: the contract's,
    streamer.events); a problem is one ConfigError line naming the file and line."""
    from streamer.errors import ConfigError
    from streamer.events import EVENT_PROPERTIES
    from streamer.funnel.definition import FunnelDefinitionError, load_funnels

    try:
        return load_funnels(paths, overrides, known_events=EVENT_PROPERTIES)
    except FunnelDefinitionError as exc:
        raise ConfigError(str(exc)) from None


def _provisional(ratio: float | None, still_open: int | None) -> str:
    """A ratio of the decided sessions; while some are open (the open column) it is so far."""
    if ratio is None:
        return ""
    return f"{ratio:.1%} so far" if still_open else f"{ratio:.1%}"


def _span_label(label: str, part: dict[str, Any]) -> str:
    """ "last window", or the span the "last hour" really covers when the data is younger."""
    if label != "last_hour":
        return label.replace("_", " ")
    from datetime import datetime

    span = datetime.fromisoformat(part["end"]) - datetime.fromisoformat(part["start"])
    if span.total_seconds() >= 3600:
        return "last hour"
    minutes = span.total_seconds() / 60
    return f"last {minutes:.3g} min (all the windows there are, up to an hour)"


def _print_summary(summary: dict[str, Any], lateness_seconds: float | None = None) -> None:
    if not summary:
        wait = (
            f"; events are counted as the watermark passes them, {lateness_seconds:g}s "
            "(allowed_lateness_seconds) behind the newest event time"
            if lateness_seconds
            else ""
        )
        console.print(
            "no window yet (a window is published once a partition has counted a session in "
            f"it{wait})"
        )
        return
    for name, parts in summary.items():
        for label in ("last_window", "last_hour"):
            part = parts[label]
            state = "final" if part.get("final") else "still open: revised until final"
            title = (
                f"{name}: {_span_label(label, part)} ({part['start']} .. {part['end']}, {state})"
            )
            table = Table(title=title)
            columns = ("stage", "entered", "converted", "dropped", "open", "conversion", "drop-off")
            for column in columns:
                if column == "stage":  # a long name wraps rather than ends in an ellipsis
                    table.add_column(column, overflow="fold")
                else:
                    table.add_column(column, justify="right", no_wrap=True)
            for row in part["stages"]:
                table.add_row(
                    row["stage"],
                    str(row["entered"]),
                    str(row.get("converted", "")),
                    str(row.get("dropped", "")),
                    str(row.get("open", "")),
                    _provisional(row.get("conversion_ratio"), row.get("open")),
                    _provisional(row.get("drop_off_ratio"), row.get("open")),
                )
            console.print(table)
        warming = parts.get("warming_up")
        if warming:
            console.print(
                f"{name}: the detector is warming up (no alert yet) for: {', '.join(warming)}"
            )
        elif warming is not None:
            console.print(f"{name}: the detector is warm for every step")
        for silent in parts.get("silent_inputs") or ():
            what = "topic" if silent["subject"] == "topic" else "event type"
            console.print(
                f"{name}: tracking broke: {what} {silent['name']} silent since {silent['since']} "
                f"(data-quality alert {silent['alert_id']}); the steps it feeds are not judged"
            )


@funnel.command("show")
@click.option("--url", default=None, help="a worker's base URL (default: web_host:web_port)")
@click.option("--from-topic", is_flag=True, help="read the windows topic instead of a worker")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.pass_context
@_fail_cleanly
def funnel_show(ctx: click.Context, url: str | None, from_topic: bool, as_json: bool) -> None:
    """The current funnel: stages, counts and conversion per step, last window and last hour."""

    settings = _settings(ctx)
    if from_topic:
        from streamer.events import WindowStats
        from streamer.kafka_io import read_topic
        from streamer.query import FunnelView

        _kafka_ready(settings, AccessNeeds(read=(settings.windows_topic,)))
        view = FunnelView()
        for _, value in asyncio.run(read_topic(settings, settings.windows_topic)):
            view.add(WindowStats.model_validate_json(value or b""))
        summary = view.summary()
    else:
        base = (url or f"{settings.web_host}:{settings.web_port}").rstrip("/")
        if "://" not in base:
            base = f"http://{base}"  # localhost:6066, as one writes it
        try:
            with urllib.request.urlopen(f"{base}/funnel", timeout=5) as response:
                summary = json.loads(response.read())
        except (urllib.error.URLError, OSError) as exc:
            raise StreamerError(
                f"no worker answers at {base}/funnel ({exc}); start one with `streamer worker`, "
                "pass --url, or use --from-topic"
            ) from None
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, settings.allowed_lateness_seconds)


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
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the JSON report here (default: stdout)",
)
@click.option(
    "--funnels",
    "--funnel",
    "funnel_paths",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="funnel files or folders instead of the configured ones (repeatable)",
)
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
    help="read on past --to (events of sessions already seen) until every cohort window of the "
    "range is final, instead of reporting sessions open at --to as open",
)
@click.option(
    "--notify",
    is_flag=True,
    help="send the alerts it finds to Slack, marked as a replay (muted by default)",
)
@click.pass_context
@_fail_cleanly
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from streamer.range_replay import replay_range

    settings = _settings(ctx)
    changes: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: use KEY=VALUE", param_hint="--set")
        changes[key.strip()] = value.strip()
    funnels = _checked_funnels(funnel_paths or settings.funnels, changes)
    _kafka_ready(settings, AccessNeeds(read=_sources(settings)))  # read-only: writes nothing
    per_input: dict[str, tuple[int, int]] = {}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:,.0f} messages/s"),
        TimeRemainingColumn(),
    )
    began = time.monotonic()
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, Any] = {}

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

        result = asyncio.run(
            replay_range(
                settings,
                funnels,
                range_from,
                range_to,
                progress=progress,
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
@_fail_cleanly
def replay_diff(before: Path, after: Path, as_json: bool) -> None:
    """What a what-if changed: alerts added, removed and changed (~, as they are in AFTER),
    conversion per step (two reports)."""
    from pydantic import ValidationError

    from streamer.events import ReplayReport
    from streamer.range_replay import diff_reports

    reports = []
    for path in (before, after):
        try:
            reports.append(ReplayReport.model_validate_json(path.read_bytes()))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the document"
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise StreamerError(
                f"{path}: not a replay report: {where}: {first['msg']}{more}; "
                "write one with `streamer replay --from ... --to ... --report FILE`"
            ) from None
    diff = diff_reports(*reports)
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
@_fail_cleanly
def backfill_command(
    ctx: click.Context, funnel_paths: tuple[Path, ...], start: str, end: str
) -> None:
    """Compute funnels' detector baselines from a range of history and hand them to the live
    worker (the baselines topic): a funnel the worker has no detector state for starts warm,
    with no cold-start period. Read-only on the input topics."""
    from streamer.range_replay import backfill

    range_from, range_to = _time_range(start, end)
    funnels = _checked_funnels(funnel_paths)
    settings = _settings(ctx)
    _kafka_ready(settings, AccessNeeds(read=_sources(settings), write=(settings.baselines_topic,)))
    asyncio.run(ensure_topic_plan(settings, _topic_plan(settings)))
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
    settings = _settings(ctx)
    _kafka_ready(settings, AccessNeeds(write=_sources(settings)))
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
@_fail_cleanly
def load_otto(ctx: click.Context, path: Path) -> None:
    """Produce the OTTO session sample (JSONL) in event-time order."""
    _load_otto(ctx, path)


@replay.command("otto", hidden=True)
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
@_fail_cleanly
def replay_otto(ctx: click.Context, path: Path) -> None:
    """The former name of `streamer load otto`."""
    _load_otto(ctx, path)


# --- alerts ------------------------------------------------------------------------------
@cli.group()
def alerts() -> None:
    """Test the alert routes; re-deliver alerts that could not be delivered."""


@alerts.command("test")
@click.pass_context
@_fail_cleanly
def alerts_test(ctx: click.Context) -> None:
    """Send a test alert through each configured route (Slack warning and page,
    Alertmanager, webhook); no Kafka."""
    from streamer.alerts import send_test_alerts

    outcomes = asyncio.run(send_test_alerts(_settings(ctx)))
    for route, delivery in outcomes:
        click.echo(f"{route}: {delivery.outcome.value} ({delivery.detail})")
    if any(delivery.outcome.value != "delivered" for _, delivery in outcomes):
        sys.exit(1)


@alerts.command("redeliver")
@click.option("--dry-run", is_flag=True, help="say how many would go, send nothing")
@click.pass_context
@_fail_cleanly
def alerts_redeliver(ctx: click.Context, dry_run: bool) -> None:
    """Send alerts that Slack refused (4xx) back to the notifier, each once (after a fix)."""
    from streamer.alerts import redeliver_failed_alerts

    settings = _settings(ctx)
    _kafka_ready(settings)
    report = asyncio.run(redeliver_failed_alerts(settings, dry_run))
    verb = "would redeliver" if dry_run else "redelivered"
    click.echo(
        f"{verb} {report.redelivered} of {report.parked} parked alert(s); "
        f"{report.already} redelivered before"
    )


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


# --- worker ------------------------------------------------------------------------------
@cli.command("worker")
@click.pass_context
@_fail_cleanly
def worker(ctx: click.Context) -> None:
    """Run a streamer worker (Faust): ingest, funnel state, /metrics on the web port."""
    import faust

    from streamer.app import create_app, worker_access
    from streamer.kafka_access import require_access

    settings = _settings(ctx)
    log = logging.getLogger("streamer.worker")
    log.info("settings: %s", settings.masked())
    _checked_funnels(settings.funnels)  # a typo in a funnel file stops it before any Kafka
    _kafka_ready(settings)
    run_sync(ensure_topic_plan(settings, _topic_plan(settings)))
    _check_source_partitions(settings)
    app = create_app(settings)
    # Faust meets a missing ACL only when it first uses that topic, as a crash with a
    # traceback: check every ACL the worker needs before it starts.
    run_sync(require_access(settings, worker_access(app)))
    log.info("metrics on http://%s:%d/metrics", settings.web_host, settings.web_port)
    _tune_garbage_collector()
    faust.Worker(
        app.faust, loglevel=settings.log_level, redirect_stdouts=False
    ).execute_from_commandline()


# The worker holds every open session's state, hundreds of thousands of objects, and Python's
# cyclic collector with its default thresholds (700, 10, 10) walked them again and again: 17 s
# of a 90 s run on a 200k-event backlog (measured with gc.callbacks). Collections 70 times
# rarer, with start-up's objects left out of them (gc.freeze): 2.3 s in the same run.
GC_THRESHOLDS = (50_000, 20, 100)


def _tune_garbage_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what exists now (modules, the app) lives as long as the process


def _check_source_partitions(settings: Settings) -> None:
    """One hop needs co-partitioned sources: the same partition count on both topics (and
    on the state table's changelog). Says which path the worker runs."""
    from streamer.errors import ConfigError
    from streamer.kafka_io import topic_partitions

    log = logging.getLogger("streamer.worker")
    topics = (settings.clickstream_topic, settings.checkout_topic)
    counts = {topic: len(run_sync(topic_partitions(settings, topic))) for topic in topics}
    if not settings.source_keyed_by_session:
        log.info(
            "re-key path: events of %s are validated and re-keyed by session id through %s "
            "(%d partitions), event-time fronts in-band (STREAMER_SOURCE_KEYED_BY_SESSION=false)",
            ", ".join(f"{t} ({n} partitions)" for t, n in counts.items()),
            settings.rekeyed_topic,
            settings.topic_partitions,
        )
        return
    for topic, count in counts.items():
        if count != settings.topic_partitions:
            raise ConfigError(
                f"topics are not co-partitioned: {topic} has {count} partitions but "
                f"topic_partitions is {settings.topic_partitions} "
                f"({', '.join(f'{t}: {n}' for t, n in counts.items())}). One hop needs both "
                "topics keyed by session_id with the same partition count: set "
                "STREAMER_TOPIC_PARTITIONS to it, or STREAMER_SOURCE_KEYED_BY_SESSION=false to "
                "re-key through an internal topic"
            )
    log.info(
        "one hop: %s are keyed by session id with %d partitions each, processed in place",
        " and ".join(topics),
        settings.topic_partitions,
    )


# --- simulate ----------------------------------------------------------------------------
@cli.command("simulate")
@click.option("--rate", default=50.0, show_default=True, type=_POSITIVE, help="events per second")
@click.option("--duration", default=60.0, show_default=True, type=_POSITIVE, help="seconds to run")
@click.option("--seed", default=1, show_default=True, help="random seed (same seed, same sessions)")
@click.pass_context
@_fail_cleanly
def simulate(ctx: click.Context, rate: float, duration: float, seed: int) -> None:
    """Produce realistic shop sessions to the clickstream and checkout topics."""
    from streamer.simulate import run_live

    settings = _settings(ctx)
    _kafka_ready(settings, AccessNeeds(write=_sources(settings), create=_sources(settings)))
    report = asyncio.run(run_live(settings, rate=rate, duration=duration, seed=seed))
    click.echo(f"produced {report.events} events in {report.sessions} sessions: {report.by_type}")


# --- demo --------------------------------------------------------------------------------
def _funnel_table(values: MetricValues) -> Table:
    table = Table(title="streamer live counters (from /metrics)")
    table.add_column("metric")
    table.add_column("labels")
    table.add_column("value", justify="right")
    for (name, labels), value in sorted(
        values.items(), key=lambda kv: (kv[0][0], sorted(kv[0][1]))
    ):
        if (
            name
            in (
                "streamer_stage_events_total",
                "streamer_events_by_type_total",
                "streamer_events_total",
            )
            and value
        ):
            table.add_row(name, ",".join(f"{k}={v}" for k, v in sorted(labels)), f"{value:.0f}")
    return table


@cli.command("demo")
@click.option("--rate", default=40.0, show_default=True, type=_POSITIVE, help="events per second")
@click.option(
    "--duration", default=60.0, show_default=True, type=_POSITIVE, help="seconds of traffic"
)
@click.option("--keep-broker", is_flag=True, help="leave the local broker running afterwards")
@click.pass_context
@_fail_cleanly
def demo(ctx: click.Context, rate: float, duration: float, keep_broker: bool) -> None:
    """Live demo: local broker up, a worker, the simulator feeding it, the funnel printed."""
    from streamer.resources import deploy_dir
    from streamer.simulate import run_live

    # The simulator compresses sessions into seconds: the demo funnel has 10 s windows and
    # second-scale timeouts; a short lateness and idle timeout keep it at the live edge.
    settings = _settings(ctx).model_copy(
        update={
            "funnels": (deploy_dir() / "funnels/demo",),
            "allowed_lateness_seconds": 5.0,
            "idle_timeout_seconds": 5.0,
        }
    )
    broker = _local_kafka(settings) if settings.uses_local_broker else None
    started_broker = False
    if broker is not None:
        status, started_broker = broker.up()
        console.print(f"[bold]kafka[/]: {status.describe()}")
    run_sync(ensure_topic_plan(settings, _topic_plan(settings)))
    log_path = settings.data_dir.parent / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(settings, log_path)
    url = worker.metrics_url
    try:
        try:
            worker.start(ready_timeout=60)
        except (RuntimeError, TimeoutError):
            raise StreamerError(f"the worker did not start; see {log_path}") from None
        assert worker.process is not None
        console.print(f"[bold]worker[/]: pid {worker.process.pid}, log {log_path}, metrics {url}")
        console.print(f"[bold]simulator[/]: {rate:.0f} events/s for {duration:.0f}s")
        simulator = asyncio.run(_demo_loop(settings, url, rate, duration, run_live))
        console.print(f"[bold]simulator[/]: produced {simulator} events; final counters:")
        time.sleep(3)
        console.print(_funnel_table(scrape_metrics(url)))
        funnel_url = url.replace("/metrics", "/funnel")
        with urllib.request.urlopen(funnel_url, timeout=5) as response:
            _print_summary(json.loads(response.read()))
        console.print(f"(the same as JSON: {funnel_url}; `streamer funnel show` prints it)")
    finally:
        worker.stop()
        if broker is not None and started_broker and not keep_broker:
            broker.down()
            console.print("[bold]kafka[/]: stopped (use --keep-broker to leave it running)")


async def _demo_loop(
    settings: Settings, url: str, rate: float, duration: float, run_live: Any
) -> int:
    task = asyncio.create_task(run_live(settings, rate=rate, duration=duration))
    while not task.done():
        await asyncio.sleep(5)
        try:
            values = await asyncio.to_thread(scrape_metrics, url)
        except (urllib.error.URLError, OSError) as exc:
            console.print(f"[red]metrics not reachable: {exc}[/]")
            continue
        stages = {
            dict(labels)["stage"]: v
            for (name, labels), v in values.items()
            if name == "streamer_stage_events_total"
        }
        line = "  ".join(f"{stage}={count:.0f}" for stage, count in stages.items())
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] stage events: {line}")
        entered = {
            dict(labels)["stage"]: v
            for (name, labels), v in values.items()
            if name == "streamer_funnel_sessions_entered_total"
        }
        if any(entered.values()):
            funnel_line = " -> ".join(f"{stage} {count:.0f}" for stage, count in entered.items())
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] checkout funnel: {funnel_line}")
    report = await task
    return int(report.events)


def main() -> None:
    cli(prog_name="streamer")


from streamer.plan.cli import plan as plan_group  # noqa: E402  (issue 28: `streamer plan`)

cli.add_command(plan_group)
