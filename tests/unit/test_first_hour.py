"""Issue 30, "a new user's first hour": each defect a trial met, as the user meets it (the
command line, no broker needed)."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from streamer.alerts import sample_alert
from streamer.app import alert_notifier
from streamer.cli import cli
from streamer.cli.funnels import print_summary
from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.errors import ConfigError
from streamer.events import EVENT_PROPERTIES, AlertExplanation, ReasonCode
from streamer.funnel.definition import check_known_events, load_funnel
from streamer.funnel.session import NEVER
from streamer.kafka_io import ensure_topic_plan
from streamer.metrics import LiveSnapshot
from streamer.notify.base import Delivery, DeliveryOutcome
from streamer.notify.routes import FanOutNotifier, alertmanager_alert
from streamer.pipeline.merger import _start_text
from streamer.pipeline.web import readiness
from streamer.resources import deploy_dir
from streamer.settings import load_settings
from streamer.testing_slack import FakeSlack
from streamer.times import parse_time


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


def test_no_broker_at_a_cluster_of_ones_own_does_not_suggest_kafka_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMER_KAFKA_BOOTSTRAP", f"127.0.0.1:{_free_port()}")
    result = CliRunner().invoke(cli, ["topics"])
    assert result.exit_code == 2
    assert "(STREAMER_KAFKA_BOOTSTRAP): is the cluster up and the address right?" in result.output
    assert "kafka up" not in result.output


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


def test_replay_without_a_range_suggests_the_real_usage_and_diff() -> None:
    result = CliRunner().invoke(cli, ["replay"])
    assert result.exit_code == 2
    assert "streamer replay --from -1h --to now" in result.output
    assert "streamer replay diff BEFORE.json AFTER.json" in result.output
    assert "otto" not in result.output


NOW = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("-7d", NOW - timedelta(days=7)),
        ("-10m", NOW - timedelta(minutes=10)),
        ("2h ago", NOW - timedelta(hours=2)),
        ("3 days ago", NOW - timedelta(days=3)),
        ("yesterday", datetime(2026, 12, 6, tzinfo=UTC)),
        ("now", NOW),
        ("1764000000000", datetime.fromtimestamp(1_764_000_000, tz=UTC)),
        ("2026-11-20T14:00", datetime(2026, 11, 20, 14, tzinfo=UTC)),
    ],
)
def test_times_are_read_as_people_type_them(typed: str, expected: datetime) -> None:
    assert parse_time(typed, NOW) == expected


@pytest.mark.parametrize(
    ("typed", "reason"),
    [("last tuesday", "is not a time; use ISO 8601"), ("1764000000", "looks like epoch seconds")],
)
def test_times_that_cannot_be_read_say_what_can(typed: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_time(typed, NOW)


def test_a_relative_range_is_printed_as_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_KAFKA_PORT", str(_free_port()))
    result = CliRunner().invoke(cli, ["replay", "--from", "-10m", "--to", "now"])
    assert result.exit_code == 2  # no broker
    assert "range: 20" in result.output
    assert "(UTC, --to exclusive)" in result.output


@pytest.mark.parametrize("rate", ["0", "-5"])
def test_a_rate_that_cannot_be_kept_is_refused(rate: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", "--rate", rate])
    assert result.exit_code == 2
    assert f"Invalid value for '--rate': {float(rate)} is not in the range x>0" in result.output


def test_funnel_show_assumes_http(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    result = CliRunner().invoke(cli, ["funnel", "show", "--url", f"localhost:{port}"])
    assert result.exit_code == 2
    assert f"no worker answers at http://localhost:{port}/funnel" in result.output
    assert "unknown url type" not in result.output


def test_replay_diff_of_something_else_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    result = CliRunner().invoke(cli, ["replay", "diff", str(empty), str(empty)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"error: {empty}: not a replay report: range_from: Field")


def test_version_and_short_help() -> None:
    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0
    assert version.output.startswith("streamer, version ")
    for args in (["-h"], ["replay", "-h"], ["alerts", "test", "-h"]):
        assert CliRunner().invoke(cli, args).exit_code == 0, args


def test_backfill_and_replay_take_both_spellings_of_funnels() -> None:
    for command in ("backfill", "replay"):
        text = CliRunner().invoke(cli, [command, "--help"]).output
        assert "--funnels, --funnel" in text, command


def test_alerts_test_sends_one_alert_per_configured_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slack = FakeSlack(min_interval=0).start()
    try:
        monkeypatch.setenv("STREAMER_SLACK_WEBHOOK_URL", slack.url("T/B/warn"))
        monkeypatch.setenv("STREAMER_SLACK_PAGE_WEBHOOK_URL", slack.url("T/B/page"))
        result = CliRunner().invoke(cli, ["alerts", "test"])
    finally:
        slack.stop()
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "slack warning: delivered (default webhook)",
        "slack page: delivered (page webhook)",
    ]
    assert [request.token for request in slack.requests] == ["T/B/warn", "T/B/page"]
    assert all("TEST" in str(payload) for payload in slack.accepted)


def test_alerts_test_without_a_route_says_which_setting() -> None:
    result = CliRunner().invoke(cli, ["alerts", "test"])
    assert result.exit_code == 2
    assert "set STREAMER_SLACK_WEBHOOK_URL" in result.output


FUNNEL = """name: shop
conversion_window: 1h
stages:
  - name: landing
    event_type: page_view
    where: {landng: true}
  - name: cart
    event_types: [add_to_kart]
  - name: order
    event_types: [order_placed]
"""


def _check(*paths: Path) -> Result:
    return CliRunner().invoke(cli, ["funnel", "check", *map(str, paths)])


def test_funnel_check_refuses_what_can_never_match_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(FUNNEL)
    result = _check(path)
    assert result.exit_code == 2
    assert (
        f"{path}:6: stages.0.where.landng: no event of page_view has a property 'landng'; "
        "did you mean 'landing'?" in result.output
    )
    assert (
        f"{path}:8: stages.1.event_types: unknown event type 'add_to_kart'; "
        "did you mean 'add_to_cart'?" in result.output
    )


def test_the_known_events_check_takes_any_plan() -> None:
    definition = load_funnel(deploy_dir() / "funnels" / "checkout.yaml")
    assert check_known_events(definition, EVENT_PROPERTIES) == []
    plan = {"page_view": frozenset({"landing"}), "order_placed": frozenset({"value"})}
    problems = dict(check_known_events(definition, plan))
    assert problems[("stages", 1, "event_types")] == "unknown event type 'product_view'"


def test_severity_off_as_the_readme_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "off.yaml"
    path.write_text(
        (deploy_dir() / "funnels" / "checkout.yaml").read_text()
        + '  data_quality_severity: off\n  steps:\n    "payment->order": {severity: off}\n'
    )
    definition = load_funnel(path)
    assert definition.alerting.data_quality_severity == "off"
    assert definition.alerting.steps["payment->order"].severity == "off"


def test_a_segment_without_a_source_says_how_to_write_it(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(FUNNEL.replace("landng", "landing").replace("kart", "cart") + "segments:\n"
                    "  device: {cap: 6}\n  plan: {cap: 5}\n")  # fmt: skip
    result = _check(path)
    assert result.exit_code == 2
    assert (
        f"{path}:13: segments.1: unknown segment 'plan'; write `plan: {{source: property.plan}}`"
        in (result.output)
    )
    assert "pattern" not in result.output


def test_a_folder_of_yml_files_is_read_and_an_empty_one_is_said(tmp_path: Path) -> None:
    (tmp_path / "yml").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "yml" / "shop.yml").write_text(
        FUNNEL.replace("landng", "landing").replace("kart", "cart")
    )
    found = _check(tmp_path / "yml")
    assert found.exit_code == 0
    assert found.output.startswith("funnel shop ")
    empty = _check(tmp_path / "empty")
    assert empty.exit_code == 2
    assert f"no funnel files (*.yaml, *.yml) in {tmp_path / 'empty'}" in empty.output


def test_the_worker_checks_its_funnels_before_it_looks_for_kafka(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(FUNNEL)
    monkeypatch.setenv("STREAMER_FUNNELS", str(path))
    monkeypatch.setenv("STREAMER_KAFKA_PORT", str(_free_port()))  # no broker there
    result = CliRunner().invoke(cli, ["worker"])
    assert result.exit_code == 2
    assert "unknown event type 'add_to_kart'" in result.output
    assert "no Kafka broker" not in result.output


def _event_at(occurred_at: object) -> bytes:
    return json.dumps(
        {
            "event_type": "page_view",
            "event_id": "e1",
            "session_id": "s1",
            "occurred_at": occurred_at,
            "page": "/",
        }
    ).encode()


def test_an_event_time_in_epoch_seconds_is_said_to_look_like_seconds() -> None:
    received = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
    rejected = decode_event(
        _event_at(int(received.timestamp())), received_at=received, limits=DecodeLimits()
    )
    assert isinstance(rejected, Rejection)
    assert rejected.reason is ReasonCode.TOO_OLD
    assert "it looks like epoch seconds (2026-12-07T10:30:00+00:00 if so)" in rejected.message
    assert "0:00:00" not in rejected.message


def test_a_plainly_old_event_says_how_old_in_words() -> None:
    received = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
    old = int((received - timedelta(days=9)).timestamp() * 1000)
    rejected = decode_event(_event_at(old), received_at=received, limits=DecodeLimits())
    assert isinstance(rejected, Rejection)
    assert rejected.message == (
        "occurred_at is 9d before the broker time, older than the horizon of 7d "
        "(max_event_age_seconds)"
    )


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"session": 1, "events": [{"aid": 2, "ts": "soon", "type": "clicks"}]}', "ValueError"),
        ("[1, 2]", "TypeError"),
        ("{not json", "not JSON"),
    ],
)
def test_a_bad_otto_line_is_one_line_naming_file_and_line(
    line: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sessions.jsonl"
    path.write_text('{"session": 1, "events": []}\n' + line + "\n")
    monkeypatch.setenv("STREAMER_KAFKA_PORT", str(_free_port()))
    result = CliRunner().invoke(cli, ["load", "otto", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {path}:2: ")
    assert reason in result.output
    assert result.output.count("\n") == 1


def test_the_funnel_table_marks_a_ratio_with_open_sessions_and_names_its_real_span(
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = {"stage": "cart", "entered": 57, "step": "cart->checkout", "converted": 22}
    row.update(dropped=0, open=35, conversion_ratio=1.0, drop_off_ratio=0.0)
    part = {
        "start": "2026-12-07T10:00:00+00:00",
        "end": "2026-12-07T10:01:00+00:00",
        "final": False,
        "stages": [row, {"stage": "checkout", "entered": 22}],
    }
    print_summary({"checkout": {"last_window": part, "last_hour": {**part, "windows": 1}}})
    text = " ".join(capsys.readouterr().out.split())
    assert "│ 100.0% so far │" in text
    assert "checkout: last 1 min (all the windows there are, up to an hour)" in text
    assert "last hour" not in text


def test_a_funnel_taken_up_from_the_start_is_not_logged_as_a_huge_negative_number() -> None:
    assert _start_text(NEVER) == "with the first event"
    assert _start_text(1_765_103_400_000) == "at 2025-12-07T10:30:00+00:00"


def test_readiness_needs_partitions_a_caught_up_input_and_the_broker() -> None:
    snapshot = LiveSnapshot(assigned={"clickstream": 4}, consumer_lag={("clickstream", 2): 50})
    ready = readiness(snapshot, (True, "answers"), max_lag=100)
    assert ready.ready
    behind = readiness(snapshot, (True, "answers"), max_lag=10)
    assert not behind.ready
    assert behind.checks["caught_up"]["behind"] == {"clickstream/2": 50}
    assert not readiness(LiveSnapshot(), (True, "answers"), max_lag=10).ready  # nothing assigned
    unreachable = readiness(snapshot, (False, "no broker answers"), max_lag=100)
    assert not unreachable.ready
    assert unreachable.checks["broker"] == {"ok": False, "detail": "no broker answers"}


class _Scripted:
    """A route that answers from a script and counts its calls."""

    def __init__(self, *outcomes: DeliveryOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def deliver(self, alert: object) -> Delivery:
        self.calls += 1
        return Delivery(self.outcomes.pop(0), "scripted")

    async def close(self) -> None:
        return None


async def test_fan_out_sends_each_route_once_while_another_is_retried() -> None:
    slack = _Scripted(DeliveryOutcome.NO_ROUTE, DeliveryOutcome.NO_ROUTE)
    alertmanager = _Scripted(DeliveryOutcome.DELIVERED)
    webhook = _Scripted(DeliveryOutcome.RETRY, DeliveryOutcome.DELIVERED)
    fan_out = FanOutNotifier(
        [("slack", slack), ("alertmanager", alertmanager), ("webhook", webhook)]
    )
    alert = sample_alert("page", NOW)
    assert (await fan_out.deliver(alert)).outcome is DeliveryOutcome.RETRY
    second = await fan_out.deliver(alert)
    assert second.outcome is DeliveryOutcome.DELIVERED
    assert second.detail == "alertmanager, webhook"
    assert alertmanager.calls == 1  # not sent twice for the webhook's retry
    nothing = FanOutNotifier([("slack", _Scripted(DeliveryOutcome.NO_ROUTE))])
    assert (await nothing.deliver(alert)).outcome is DeliveryOutcome.NO_ROUTE


def test_an_alert_for_alertmanager_carries_labels_annotations_and_its_end() -> None:
    alert = sample_alert("page", NOW).model_copy(
        update={
            "runbook_url": "https://runbooks/x",
            "dashboard_url": "https://grafana/d/x",
            "explanations": [
                AlertExplanation(dimension="payment_method", value="paypal",
                                 share_of_excess=0.9, observed_rate=0.5,
                                 expected_rate=0.1, decided=100, dropped=50),
            ],
        }
    )  # fmt: skip
    firing = alertmanager_alert(alert, NOW)
    assert firing["labels"] == {
        "alertname": "StreamerFunnelDropOff",
        "funnel": "test",
        "step": "test",
        "severity": "page",
        "kind": "drop_off",
        "segment": "payment_method=paypal",
    }
    assert firing["annotations"]["runbook_url"] == "https://runbooks/x"
    assert firing["annotations"]["dashboard_url"] == "https://grafana/d/x"
    assert firing["endsAt"] > NOW.isoformat()
    resolved = alertmanager_alert(alert.model_copy(update={"state": "resolved"}), NOW)
    assert resolved["endsAt"] == NOW.isoformat()


def test_alert_routes_are_settings_and_the_webhook_stays_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMER_ALERTMANAGER_URL", "alertmanager:9093")
    monkeypatch.setenv("STREAMER_ALERT_WEBHOOK_URL", "https://hooks.example/T/secret")
    settings = load_settings()
    assert settings.alertmanager_url == "http://alertmanager:9093"
    assert settings.masked()["alert_webhook_url"] == "**********"
    assert [name for name, _ in alert_notifier(settings).routes] == [
        "slack",
        "alertmanager",
        "webhook",
    ]
