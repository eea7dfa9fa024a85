"""`streamer dlq`: inspect and replay the dead-letter topic."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table
from rich.text import Text

from streamer.cli._common import cli, console, fail_cleanly, input_topics, kafka_ready, settings_of
from streamer.escaping import terminal_text
from streamer.kafka_access import AccessNeeds


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
@fail_cleanly
def dlq_inspect(ctx: click.Context, limit: int, reasons: tuple[str, ...], as_json: bool) -> None:
    """Print dead letters readably: id, reason, field, message, payload preview."""
    from collections import Counter

    from streamer.dlq import parse_dead_letters
    from streamer.kafka_io import read_topic

    settings = settings_of(ctx)
    kafka_ready(settings, AccessNeeds(read=(settings.dlq_topic,)))
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
@fail_cleanly
def dlq_replay(ctx: click.Context, reasons: tuple[str, ...], dry_run: bool) -> None:
    """Re-submit dead letters to their source topics (each at most once), e.g. after a fix."""
    from streamer.dlq import ledger_topic, replay_dead_letters

    settings = settings_of(ctx)
    ledger = ledger_topic(settings)
    kafka_ready(
        settings,
        AccessNeeds(
            read=(settings.dlq_topic, ledger),
            write=() if dry_run else (*input_topics(settings), ledger),
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
