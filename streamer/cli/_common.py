"""What every command shares: the root group, settings, one-line errors, logging."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from aiokafka.errors import KafkaError
from rich.console import Console

from streamer.errors import StreamerError
from streamer.escaping import install_inert_log_records
from streamer.kafka_access import AccessNeeds
from streamer.kafka_io import run_sync
from streamer.settings import Settings, load_settings

console = Console(stderr=False)
F = TypeVar("F", bound=Callable[..., Any])
# A rate or duration of zero or less divides by zero or never ends.
POSITIVE = click.FloatRange(min=0, min_open=True)


# The options the range reports share (replay, report): one spelling, one help text.
funnels_option = click.option(
    "--funnels",
    "--funnel",
    "funnel_paths",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="funnel files or folders instead of the configured ones (repeatable)",
)
report_option = click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the JSON report here (default: stdout)",
)


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def fail_cleanly(func: F) -> F:
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


def kafka_ready(settings: Settings, needs: AccessNeeds | None = None) -> None:
    """Does a broker answer, let us in, and allow what the command needs? (one line if not)"""
    from streamer.kafka_access import ready

    run_sync(ready(settings, needs))


def input_topics(settings: Settings) -> tuple[str, str]:
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
