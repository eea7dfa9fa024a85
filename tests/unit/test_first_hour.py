"""Issue 30, "a new user's first hour": each defect a trial met, as the user meets it (the
command line, no broker needed)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamer.cli import cli
from streamer.errors import ConfigError
from streamer.kafka_io import ensure_topic_plan
from streamer.resources import deploy_dir
from streamer.settings import load_settings


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


def test_a_misspelt_variable_is_refused_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMER_SLACK_WEBHOOK", "https://hooks.slack.com/services/T/B/secret")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "STREAMER_SLACK_WEBHOOK: unknown setting; did you mean STREAMER_SLACK_WEBHOOK_URL?" in (
        message
    )
    assert "secret" not in message


def test_the_log_level_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_LOG_LEVEL", "DEBUG")
    assert load_settings().log_level == "debug"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"STREAMER_CLICKSTREAM_TOPIC": ""}, "clickstream_topic (environment variable"),
        ({"STREAMER_DLQ_TOPIC": "bad topic!"}, "is not a Kafka topic name"),
        (
            {"STREAMER_CHECKOUT_TOPIC": "clickstream"},
            "clickstream_topic and checkout_topic are both 'clickstream'",
        ),
        (
            {"STREAMER_DLQ_TOPIC": "checkout"},
            "checkout_topic and dlq_topic are both 'checkout' (a loop",
        ),
        ({"STREAMER_SLACK_WEBHOOK_URL": "notaurl"}, "slack_webhook_url (environment variable"),
        ({"STREAMER_SLACK_PAGE_WEBHOOK_URL": "hooks.slack.com/x"}, "slack_page_webhook_url"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_setting(
    variables: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert expected in str(caught.value)
    assert "notaurl" not in str(caught.value)  # a webhook URL is a secret, even a broken one
    assert "hooks.slack.com/x" not in str(caught.value)


def test_a_slack_url_is_accepted_and_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/x")
    assert load_settings().masked()["slack_webhook_url"] == "**********"


@pytest.mark.parametrize(
    ("value", "paths"),
    [
        ("deploy/funnels", ("deploy/funnels",)),
        ("a.yaml,b.yaml", ("a.yaml", "b.yaml")),
        ('["a.yaml"]', ("a.yaml",)),
    ],
)
def test_funnels_in_the_environment_as_a_user_writes_them(
    value: str, paths: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMER_FUNNELS", value)
    assert load_settings().funnels == tuple(Path(p) for p in paths)


def test_a_config_file_that_is_a_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMER_CONFIG", str(tmp_path))
    result = CliRunner().invoke(cli, ["config", "show"])
    assert result.exit_code == 2
    assert result.output == f"error: config file {tmp_path} is a folder: name a TOML file\n"


def test_the_default_funnels_are_found_through_the_package_not_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (folder,) = load_settings().funnels
    assert folder == deploy_dir() / "funnels"
    assert (folder / "checkout.yaml").is_file()


@pytest.mark.parametrize(("bootstrap", "warned"), [("kafka-1.prod:9092", True), (None, False)])
async def test_one_replica_on_a_cluster_of_ones_own_is_warned_about(
    bootstrap: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(kafka_bootstrap=bootstrap)
    await ensure_topic_plan(settings, {})  # nothing to create: no broker needed
    assert ("STREAMER_TOPIC_REPLICATION" in caplog.text) is warned
