"""SlackNotifier against a local server that behaves like Slack's incoming webhooks."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from streamer.events import Alert
from streamer.metrics import Metrics
from streamer.notify import DeliveryOutcome, SlackNotifier, slack_message
from streamer.pipeline.notifier import NotifierStage
from streamer.schemas import EXAMPLES
from streamer.testing_slack import FakeSlack

TOKEN = "T123/B456/very-secret-token"


def alert(number: int = 1, severity: str = "warning") -> Alert:
    base = Alert.model_validate(EXAMPLES["alert"])
    return base.model_copy(
        update={
            "event_id": f"{base.event_id}-{number}",
            "severity": severity,
            "alert_id": f"{base.alert_id}-{number}",
        }
    )


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    server = FakeSlack().start()
    yield server
    server.stop()


def notifier(slack: FakeSlack, **options: object) -> SlackNotifier:
    settings: dict[str, object] = {
        "webhook_url": SecretStr(slack.url(TOKEN)),
        "min_interval": 1.05,
        "max_attempts": 5,
        **options,
    }
    return SlackNotifier(**settings)  # type: ignore[arg-type]


async def test_message_has_text_and_blocks_and_is_delivered(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sender = notifier(slack)
    result = await sender.deliver(alert())
    await sender.close()
    assert result.outcome is DeliveryOutcome.DELIVERED
    [payload] = slack.accepted
    assert payload == slack_message(alert())
    # Slack's rule: "&", "<" and ">" escaped in mrkdwn text (it shows "payment->order")
    assert payload["text"].startswith(
        ":rotating_light: [FIRING] checkout: payment-&gt;order drop-off"
    )
    assert "payment_method=paypal" in str(payload["blocks"])
    assert "very-secret-token" not in caplog.text


async def test_a_data_quality_alert_says_tracking_broke_and_which_steps_wait(
    slack: FakeSlack,
) -> None:
    sender = notifier(slack)
    tracking = Alert.model_validate(EXAMPLES["alert_data_quality"])
    result = await sender.deliver(tracking)
    await sender.close()
    assert result.outcome is DeliveryOutcome.DELIVERED
    [payload] = slack.accepted
    assert payload["text"].startswith(
        ":rotating_light: [FIRING] checkout: tracking, topic checkout silent"
    )
    blocks = str(payload["blocks"])
    assert "Steps not judged" in blocks
    assert "payment-&gt;order" in blocks
    assert "drop-off" not in payload["blocks"][0]["text"]["text"]


async def test_pages_go_to_the_on_call_webhook(slack: FakeSlack) -> None:
    sender = notifier(slack, page_webhook_url=SecretStr(slack.url("T1/B2/oncall")))
    assert (await sender.deliver(alert(1, "page"))).outcome is DeliveryOutcome.DELIVERED
    assert (await sender.deliver(alert(2, "warning"))).outcome is DeliveryOutcome.DELIVERED
    await sender.close()
    assert [r.token for r in slack.requests] == ["T1/B2/oncall", TOKEN]


async def test_pacing_keeps_under_the_rate_limit(slack: FakeSlack) -> None:
    sender = notifier(slack)
    started = time.monotonic()
    for number in range(3):
        assert (await sender.deliver(alert(number))).outcome is DeliveryOutcome.DELIVERED
    await sender.close()
    assert time.monotonic() - started >= 2.0
    assert slack.statuses() == [200, 200, 200]


async def test_429_is_honoured_with_retry_after(slack: FakeSlack) -> None:
    sender = notifier(slack, min_interval=0.0)  # no pacing: provoke the limit
    for number in range(3):
        assert (await sender.deliver(alert(number))).outcome is DeliveryOutcome.DELIVERED
    await sender.close()
    assert slack.retry_after == 3  # longer than the server's 1 s limit: only honouring it passes
    assert 429 in slack.statuses()
    assert len(slack.accepted) == 3
    accepted_at = [r.at for r in slack.requests if r.status == 200]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(accepted_at))
    for refused, following in itertools.pairwise(slack.requests):
        if refused.status == 429:
            waited = following.at - refused.at
            assert waited >= slack.retry_after, (
                f"a request came {waited:.2f}s after a 429 with Retry-After: {slack.retry_after}"
            )


async def test_5xx_is_retried_and_4xx_is_not(slack: FakeSlack) -> None:
    sender = notifier(slack)
    slack.fail_next(2, 500, "rollup_error")
    assert (await sender.deliver(alert(1))).outcome is DeliveryOutcome.DELIVERED
    assert slack.statuses() == [500, 500, 200]
    slack.fail_next(1, 400, "invalid_payload")
    failed = await sender.deliver(alert(2))
    await sender.close()
    assert failed.outcome is DeliveryOutcome.FAILED
    assert failed.detail == "default webhook answered 400 invalid_payload"
    assert slack.statuses()[-1] == 400
    assert len(slack.requests) == 4  # the 400 was not retried


@pytest.mark.parametrize(
    ("token", "body"),
    [
        ("T/B/archived", "channel_is_archived"),
        ("T/B/missing", "channel_not_found"),
        ("T/B/revoked", "invalid_token"),
    ],
)
async def test_documented_errors_are_permanent(slack: FakeSlack, token: str, body: str) -> None:
    sender = SlackNotifier(webhook_url=SecretStr(slack.url(token)))
    result = await sender.deliver(alert())
    await sender.close()
    assert result.outcome is DeliveryOutcome.FAILED
    assert body in result.detail
    assert token not in result.detail


async def test_unreachable_slack_is_a_retry_and_no_route_is_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender = SlackNotifier(
        webhook_url=SecretStr("http://127.0.0.1:9/services/T/B/hidden"), max_attempts=1
    )
    result = await sender.deliver(alert())
    await sender.close()
    assert result.outcome is DeliveryOutcome.RETRY
    assert "hidden" not in result.detail
    assert "hidden" not in caplog.text
    nowhere = SlackNotifier(webhook_url=None)
    assert (await nowhere.deliver(alert())).outcome is DeliveryOutcome.NO_ROUTE


async def test_notifier_stage_delivers_once_retries_and_parks_failures(slack: FakeSlack) -> None:
    sleeps: list[float] = []
    failed: list[bytes] = []
    table: dict[str, bytes] = {}

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def park(key: bytes | None, value: bytes) -> None:
        failed.append(value)

    registry = CollectorRegistry()
    started = time.time()
    stage = NotifierStage(
        notifier=notifier(slack, max_attempts=1),
        table=table,
        metrics=Metrics.create(registry),
        send_failed=park,
        sleep=fake_sleep,
    )
    slack.fail_next(3, 503, "service_unavailable")
    record = alert(1).model_dump_json().encode()
    assert await stage.process(record, written_at=time.time()) is DeliveryOutcome.DELIVERED
    assert sleeps == [1.0, 2.0, 4.0]  # backoff between rounds
    assert await stage.process(record) is DeliveryOutcome.DELIVERED  # a duplicate: not sent
    assert len(slack.accepted) == 1
    slack.fail_next(1, 404, "no_service")
    assert await stage.process(alert(2).model_dump_json().encode()) is DeliveryOutcome.FAILED
    assert b"no_service" in failed[0]
    assert list(table) == [alert(1).event_id]
    delivered_at = orjson.loads(table[alert(1).event_id])  # when it was delivered
    [accepted_at] = [r.at for r in slack.requests if r.status == 200]
    assert started <= delivered_at <= time.time()
    assert abs(delivered_at - accepted_at) < 1.0
    parked = orjson.loads(failed[0])
    assert parked["outcome"] == "failed"
    assert parked["alert"]["event_id"] == alert(2).event_id
    assert parked["reason"] == "default webhook answered 404 no_service"
    outcomes = {
        outcome: registry.get_sample_value("streamer_alert_deliveries_total", {"outcome": outcome})
        for outcome in ("retry", "delivered", "duplicate", "failed")
    }
    assert outcomes == {"retry": 3.0, "delivered": 1.0, "duplicate": 1.0, "failed": 1.0}
