"""`streamer replay`'s refusals that need no broker: the range's flags, and the retention
check's message."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndTimestamp
from click.testing import CliRunner

from streamer.cli import cli
from streamer.errors import RangeNotHeldError
from streamer.range_replay import _check_held


def test_a_range_that_ends_before_it_starts_is_refused_naming_the_flag() -> None:
    result = CliRunner().invoke(
        cli, ["replay", "--from", "2026-11-20T18:00Z", "--to", "2026-11-20T14:00Z"]
    )
    assert result.exit_code == 2
    assert "--to" in result.output
    assert "is not after --from" in result.output


def test_a_time_that_is_not_iso_8601_is_refused_naming_the_flag() -> None:
    result = CliRunner().invoke(
        cli, ["replay", "--from", "last tuesday", "--to", "2026-11-20T14:00Z"]
    )
    assert result.exit_code == 2
    assert "--from" in result.output
    assert "ISO 8601" in result.output


def test_a_range_older_than_retention_names_the_earliest_time_per_topic() -> None:
    kept = TopicPartition("clickstream", 0)
    fresh = TopicPartition("checkout", 0)  # nothing deleted yet: starts later, that is fine
    earliest = {
        kept: OffsetAndTimestamp(500, 1_795_000_000_000),
        fresh: OffsetAndTimestamp(0, 1_795_000_000_000),
    }
    try:
        _check_held([kept, fresh], {kept: 500, fresh: 0}, earliest, 1_794_000_000_000)
    except RangeNotHeldError as exc:
        message = str(exc)
    else:
        raise AssertionError("no error")
    assert "clickstream from 2026-11-18T" in message
    assert "checkout" not in message
    assert "--from" in message
