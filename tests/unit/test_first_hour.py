"""Issue 30, "a new user's first hour": each defect a trial met, as the user meets it (the
command line, no broker needed)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from streamer.cli import cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    "command",
    [
        ["topics"],
        ["dlq", "inspect"],
        ["replay", "--from", "2026-11-20T14:00Z", "--to", "2026-11-20T15:00Z"],
    ],
)
def test_no_broker_is_said_as_no_broker_not_a_protocol_mismatch(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    monkeypatch.setenv("STREAMER_KAFKA_PORT", str(port))
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 2
    assert f"no Kafka broker answers at 127.0.0.1:{port}; start one with `streamer kafka up`" in (
        result.output
    )
    assert "security_protocol" not in result.output
