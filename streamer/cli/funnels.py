"""`streamer funnel`: check funnel files, show the live funnel."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from streamer.cli._common import cli, console, fail_cleanly, kafka_ready, settings_of
from streamer.errors import StreamerError
from streamer.kafka_access import AccessNeeds
from streamer.settings import Settings


# --- funnels and replay -----------------------------------------------------------------
@cli.group()
def funnel() -> None:
    """Funnel definitions and live funnel numbers."""


@funnel.command("check")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.pass_context
@fail_cleanly
def funnel_check(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Validate funnel definition files (default: the configured ones) and print them."""
    settings = settings_of(ctx)
    for definition in checked_funnels(settings, files or settings.funnels):
        click.echo(definition.describe())


def checked_funnels(
    settings: Settings,
    paths: Sequence[Path],
    overrides: dict[str, str] | None = None,
) -> Any:
    """The funnel files, validated against the events there are (the tracking plan of
    ``settings``, else the built-in contract): a problem is one ConfigError line naming the
    file and line (the plan's own errors too)."""
    from streamer.decoders import catalogue_of, tracking_plan
    from streamer.errors import ConfigError, PlanError
    from streamer.funnel.definition import FunnelDefinitionError, load_funnels

    try:
        catalogue = catalogue_of(tracking_plan(settings))
    except PlanError as exc:
        raise ConfigError(f"tracking plan: {exc}") from None
    try:
        funnels = load_funnels(paths, overrides, known_events=catalogue)
    except FunnelDefinitionError as exc:
        raise ConfigError(str(exc)) from None
    return funnels


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


def _stages_table(name: str, label: str, part: dict[str, Any]) -> Table:
    """One span of a funnel (``last_window`` or ``last_hour``): counts and ratios per stage."""
    state = "final" if part.get("final") else "still open: revised until final"
    title = f"{name}: {_span_label(label, part)} ({part['start']} .. {part['end']}, {state})"
    table = Table(title=title)
    # Only where an exclusion took an attempt out: most funnels have none, and a narrow
    # terminal has no room for an empty column beside a long stage name.
    excluding = any(row.get("excluded") for row in part["stages"])
    # Funnels with uniques: distinct units per window (a longer span sums its windows').
    counting_units = any("units" in row for row in part["stages"])
    columns = (
        "stage",
        "entered",
        *(("units",) * counting_units),
        "converted",
        "dropped",
        *(("excluded",) * excluding),
        "open",
    )
    for column in (*columns, "conversion", "drop-off"):
        if column == "stage":  # a long name wraps rather than ends in an ellipsis
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in part["stages"]:
        table.add_row(
            *(str(row.get(column, "")) for column in columns),
            _provisional(row.get("conversion_ratio"), row.get("open")),
            _provisional(row.get("drop_off_ratio"), row.get("open")),
        )
    return table


def _answers_table(name: str, label: str, part: dict[str, Any]) -> Table:
    """Funnels with surveys: each survey's answers per stage in one span."""
    table = Table(title=f"{name}: survey answers, {_span_label(label, part)} (by answer time)")
    for column in ("survey", "stage", "answers", "low", "satisfied / NPS", "scores"):
        table.add_column(column, justify="left" if column in ("survey", "stage") else "right")
    for row in part["answers"]:
        headline = (
            f"{row['satisfied_share']:.1%} satisfied"
            if row["satisfied_share"] is not None
            else f"NPS {row['nps']:+.1f}"
        )
        scores = " ".join(f"{score}:{n}" for score, n in row["distribution"].items())
        table.add_row(
            row["survey"], row["stage"], str(row["answers"]), str(row["low"]), headline, scores
        )
    return table


def print_summary(summary: dict[str, Any], lateness_seconds: float | None = None) -> None:
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
            console.print(_stages_table(name, label, parts[label]))
            if parts[label].get("answers"):
                console.print(_answers_table(name, label, parts[label]))
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
@fail_cleanly
def funnel_show(ctx: click.Context, url: str | None, from_topic: bool, as_json: bool) -> None:
    """The current funnel: stages, counts and conversion per step, last window and last hour."""

    settings = settings_of(ctx)
    if from_topic:
        from streamer.events import WindowStats
        from streamer.kafka_io import read_topic
        from streamer.query import FunnelView

        kafka_ready(settings, AccessNeeds(read=(settings.windows_topic,)))
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
        print_summary(summary, settings.allowed_lateness_seconds)
