"""Event values are untrusted, end to end on a real broker: clickstream and checkout events carry
Slack mentions, links, code-span breakers, newlines that forge log lines, ANSI and bidi
sequences in every context field and in the property a segment explains the incident with; a
real payment incident is found and paged through the Slack-like server, and everything a
visitor chose shows inert there and in the worker's log."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.app import topic_plan
from streamer.escaping import slack_code
from streamer.events import Alert
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.settings import Settings
from streamer.testing import WorkerProcess
from streamer.testing_slack import FakeSlack
from tests.support.alert_pipeline import configure, run_pipeline, traffic

# At most 64 characters: the contract's bound on payment_method (the worker strips the ends).
HOSTILE_METHOD = "x` <!channel> <https://evil.example/reset|Payments down> `*b*"
FORGED = "2026-12-07 04:00:00,000 CRITICAL streamer.worker: payments down, run"
HOSTILE_CONTEXT = {
    "channel": "paid\n" + FORGED[:50],
    "utm_source": "<!here> \x1b[2J\x1b[31mred",
    "utm_medium": "\u202egnp.exe <@U123> <#C123>",
    "utm_campaign": "[link=https://evil.example]x[/link] ~s~ _i_ \r\n" + FORGED,
}
# Rejected, and logged with the offending field's path: a key that would forge a log line.
FORGING_KEY = "\n" + FORGED


def hostile_traffic() -> list[dict[str, Any]]:
    events = []
    for event in traffic(incident=True):
        event = {**event, "context": {**event.get("context", {}), **HOSTILE_CONTEXT}}
        if event.get("payment_method") == "paypal":  # the method the incident breaks
            event["payment_method"] = HOSTILE_METHOD
        events.append(event)
    template = next(e for e in events if e["event_type"] == "page_view")
    events += [
        {**template, "event_id": f"forge-{i}", "context": {FORGING_KEY: i}} for i in range(3)
    ]
    return events


def _mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    texts = [message["text"]]
    for block in message["blocks"]:
        parts = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
        texts += [p["text"] for p in parts if p and p["type"] == "mrkdwn"]
    return texts


@pytest.mark.timeout(420)
async def test_hostile_values_page_an_incident_and_stay_inert_in_slack_and_the_log(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack)
    await ensure_topic_plan(config, topic_plan(config))
    events = hostile_traffic()
    log_path = tmp_path / "worker.log"
    with WorkerProcess(config, log_path) as worker:
        await run_pipeline(config, events, worker)
        deadline = time.monotonic() + 60
        while not slack.accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        alerts = [
            Alert.model_validate_json(v or b"")
            for _, v in await read_topic(config, config.alerts_topic)
        ]
    # A real incident, explained by the value the attacker chose (stored as sent).
    firing = next(a for a in alerts if a.state == "firing")
    assert (firing.step, firing.severity) == ("payment->order", "page")
    assert (firing.explanations[0].dimension, firing.explanations[0].value) == (
        "payment_method",
        HOSTILE_METHOD,
    )
    message = next(m for m in slack.accepted if m["text"].startswith(":rotating_light:"))
    print("\nSlack text as received:\n" + message["text"])
    print(json.dumps(message["blocks"], indent=1, ensure_ascii=False))
    # It reads well: the head, the numbers, and the value quoted as code.
    assert message["text"].startswith(
        ":rotating_light: [FIRING] checkout: payment-&gt;order drop-off. payment-&gt;order "
        "drop-off is "
    )
    quoted = slack_code(f"payment_method={HOSTILE_METHOD}")
    assert quoted in message["text"]
    [where] = [t for t in _mrkdwn_texts(message) if t.startswith("*Where*")]
    assert where.startswith(f"*Where*\n• {quoted}: ")
    # Inert: the only links are the two from settings; no mention, no code span broken open,
    # no control character; the raw sequences appear nowhere in the payload.
    links = {
        "<https://grafana.example.com/d/funnel|Dashboard>",
        "<https://wiki.example.com/runbook/drop-off|Runbook>",
    }
    for text in _mrkdwn_texts(message):
        assert set(re.findall(r"<[^>]*>", text)) <= links, text
        for span in re.findall(r"`[^`]*`", text):
            assert "<" not in span
            assert "\n" not in span
        outside = re.sub(r"`[^`]*`", "", text)
        assert "*b*" not in outside
        assert "~s~" not in outside
    raw = json.dumps(message, ensure_ascii=False)
    for live in ("<!channel>", "<!here>", "<@U123>", "<#C123>", "<https://evil", "\x1b", "\u202e"):
        assert live not in raw
    # The worker's log: the forging key was dead-lettered and logged, escaped on one line.
    log = log_path.read_text(errors="replace")
    forged = [line for line in log.splitlines() if line.startswith(FORGED[:30])]
    assert forged == []
    assert "\\n" + FORGED in log
    assert "\x1b[2J" not in log
    assert "\u202e" not in log
