"""The whole stack on a real broker: simulated traffic -> ingest -> sessions -> windows ->
detector -> notifier -> a local server that behaves like Slack."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from streamer.app import topic_plan
from streamer.escaping import slack_code
from streamer.events import Abandonment, Alert, ReplayReport, WindowStats
from streamer.funnel.definition import apply_overrides, load_funnel
from streamer.kafka_io import (
    ensure_topic_plan,
    read_topic,
)
from streamer.range_replay import replay_range
from streamer.schemas import EXAMPLES
from streamer.settings import Settings
from streamer.testing import WorkerProcess, metric, produce, run_cli, scrape_metrics
from streamer.testing_slack import FakeSlack
from tests.support.alert_pipeline import (
    CLOSING,
    FUNNEL,
    INCIDENT,
    RANGE_FROM,
    START,
    alerts_on_topic,
    assert_names_the_incident,
    cli,
    configure,
    core_alerts,
    input_messages,
    run_pipeline,
    through_end_marker,
    traffic,
)


@pytest.mark.timeout(600)  # the pipeline, then replays through the library and the command
async def test_a_payment_incident_pages_once_and_resolves_once(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack)
    await ensure_topic_plan(config, topic_plan(config))
    events = traffic(incident=True)
    funnel = load_funnel(config.funnels[0])

    async def replay_beside() -> ReplayReport:
        """A replay while the worker works through the same input: it must change nothing
        the worker publishes (checked below against the pure core) and send nothing."""
        while await input_messages(config) < len(events):
            await asyncio.sleep(0.2)
        return await replay_range(config, (funnel,), RANGE_FROM, CLOSING, run_info=False)

    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        _, beside = await asyncio.gather(run_pipeline(config, events, worker), replay_beside())
        assert beside.events.in_range == len(events)
        deadline = time.monotonic() + 60
        while len(slack.accepted) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        # Nothing else may arrive: an end marker (paging, as the incident) comes after all.
        before_marker = await through_end_marker(config, slack, worker, severity="page")
        alerts = alerts_on_topic(await read_topic(config, config.alerts_topic))
        values = scrape_metrics(worker.metrics_url)
        while metric(values, "streamer_alert_deliveries_total", outcome="delivered") < 3:
            assert time.monotonic() < deadline + 60, "the marker's delivery is not counted"
            await asyncio.sleep(0.3)  # (counted just after Slack accepted it)
            values = scrape_metrics(worker.metrics_url)
    assert [(a.state, a.step) for a in alerts] == [
        ("firing", "payment->order"),
        ("resolved", "payment->order"),
    ]
    # The live pipeline (2 topics x 4 partitions, arrival jitter, merged partials) decided
    # exactly what the pure core decides on the same scenario: same ids, same numbers.
    assert [a.model_dump() for a in alerts] == [a.model_dump() for a in core_alerts(config, events)]
    # `streamer replay` of the same range, read-only from the same topics: the same alerts,
    # the same final windows, and the same bytes when run twice.
    report = await replay_range(config, (funnel,), RANGE_FROM, CLOSING, run_info=False)
    again = await replay_range(config, (funnel,), RANGE_FROM, CLOSING, run_info=False)
    assert report.model_dump_json() == again.model_dump_json()
    assert (report.events.late, report.events.rejected) == (0, 0)
    assert report.events.in_range == len(events)
    [replayed] = report.funnels
    assert [a.model_dump() for a in replayed.alerts] == [a.model_dump() for a in alerts]
    live_finals = {
        w.window_id: w
        for w in (
            WindowStats.model_validate_json(v or b"")
            for _, v in await read_topic(config, config.windows_topic)
        )
        if w.final
    }
    replay_finals = {w.window_id: w for w in replayed.windows if w.final}
    assert len(live_finals) > 20
    assert live_finals.keys() <= replay_finals.keys()
    for window_id, live in live_finals.items():
        assert replay_finals[window_id].model_dump(exclude={"revision"}) == live.model_dump(
            exclude={"revision"}
        )
    # The command, and a what-if: an effect threshold no incident reaches removes the alerts.
    base, what_if = tmp_path / "base.json", tmp_path / "what-if.json"
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(base), "--no-run-info")  # fmt: skip
    assert (
        base.read_text()
        == json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    )
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(what_if), "--set", "alerting.min_increase=0.95")  # fmt: skip
    diff = json.loads(cli(config, "replay", "diff", str(base), str(what_if), "--json"))
    [changes] = diff["funnels"]
    assert changes["alerts_added"] == []
    assert [a["event_id"] for a in changes["alerts_removed"]] == sorted(a.event_id for a in alerts)
    assert diff["after"]["overrides"] == {"alerting.min_increase": "0.95"}
    assert all(s["conversion_before"] == s["conversion_after"] for s in changes["steps"])
    # A looser policy (re-notify every 30 s while an alert lasts) adds exactly the repeats the
    # pure core fires with that setting.
    loose = tmp_path / "loose.json"
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(loose), "--set", "alerting.cooldown=30s")  # fmt: skip
    diff = json.loads(cli(config, "replay", "diff", str(base), str(loose), "--json"))
    [changes] = diff["funnels"]
    loose_funnel = tmp_path / "loose.yaml"
    loose_funnel.write_text(
        yaml.safe_dump(apply_overrides(yaml.safe_load(FUNNEL), {"alerting.cooldown": "30s"}))
    )
    live_ids = {a.event_id for a in alerts}
    added = [
        a.event_id
        for a in core_alerts(config.model_copy(update={"funnels": (loose_funnel,)}), events)
        if a.event_id not in live_ids
    ]
    assert added, "repeats while the incident lasts"
    assert [a["event_id"] for a in changes["alerts_added"]] == sorted(added)
    assert changes["alerts_removed"] == []
    # And what the planted incident (not the core) says the alerts must be.
    assert_names_the_incident(alerts, INCIDENT)
    firing, resolved = alerts
    assert firing.alert_id == resolved.alert_id
    assert firing.severity == "page"
    assert (firing.explanations[0].dimension, firing.explanations[0].value) == (
        "payment_method",
        "paypal",
    )
    assert firing.explanations[0].share_of_excess > 0.7
    assert firing.observed_rate > firing.expected_rate + 0.1
    incident_start = START + timedelta(minutes=4)
    # The cohorts tested reach into the incident, and it was found within minutes of it.
    assert incident_start < firing.window_end <= incident_start + timedelta(minutes=3)
    texts = [m["text"] for m in before_marker]
    assert len(texts) == 2
    assert len(slack.accepted) == 3  # and the marker
    assert texts[0].startswith(":rotating_light: [FIRING] checkout: payment-&gt;order drop-off")
    assert "payment_method=paypal" in texts[0]
    assert texts[1].startswith(":white_check_mark: [RESOLVED] checkout: payment-&gt;order")
    assert {r.token for r in slack.requests if r.status == 200} == {"T0/B1/oncall"}
    assert metric(values, "streamer_alert_deliveries_total", outcome="delivered") == 2 + 1
    # The replays above sent nothing; with --notify one sends its alerts, marked as a replay.
    cli(config, "replay", "--from", RANGE_FROM.isoformat(), "--to", CLOSING.isoformat(),
        "--report", str(tmp_path / "notified.json"), "--notify")  # fmt: skip
    replayed_texts = [m["text"] for m in slack.accepted[3:]]
    assert len(replayed_texts) == 2
    assert all("[replay " in text for text in replayed_texts)

    records = [
        Abandonment.model_validate_json(v or b"")
        for _, v in await read_topic(config, config.abandonments_topic)
    ]
    kinds = Counter((r.kind, r.stage) for r in records)
    assert kinds[("abandoned", "payment")] > 20  # the failed paypal payments
    assert kinds[("abandoned", "cart")] > 0
    recovered = [r for r in records if r.session_id == "recovered"]
    assert [(r.kind, r.stage) for r in recovered] == [("abandoned", "cart"), ("retracted", "cart")]
    assert recovered[0].cart_value == 59.0
    assert recovered[0].user_id == "u-7"
    assert recovered[1].record_id == recovered[0].abandonment_id + "/retracted"
    assert len({r.record_id for r in records}) == len(records)


async def test_a_quiet_stream_raises_no_alert(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack)
    await ensure_topic_plan(config, topic_plan(config))
    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        windows = await run_pipeline(config, traffic(incident=False), worker)
        before_marker = await through_end_marker(config, slack, worker)
        records = await read_topic(config, config.alerts_topic)
        assert alerts_on_topic(records) == []
        assert len(records) == 1  # the marker alone
        values = scrape_metrics(worker.metrics_url)
    assert windows > 20
    assert metric(values, "streamer_funnel_windows_closed_total", funnel="checkout") == windows
    assert before_marker == []
    assert [r.status for r in slack.requests] == [200]  # the marker's


async def test_every_alert_arrives_once_through_outages_and_a_restart(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:
    config = configure(settings, tmp_path, slack).model_copy(update={"store": "rocksdb"})
    await ensure_topic_plan(config, topic_plan(config))
    base = Alert.model_validate(EXAMPLES["alert"])
    alerts = [
        base.model_copy(
            update={
                "alert_id": f"{base.alert_id}-{n}",
                "severity": "warning",
                "event_id": f"{base.alert_id}-{n}/firing/{n}",
            }
        )
        for n in range(6)
    ]
    slack.fail_next(4, 500, "rollup_error")  # Slack is down for a while...
    await produce(
        config,
        [(config.alerts_topic, a.alert_id.encode(), a.model_dump_json().encode()) for a in alerts],
    )
    first = WorkerProcess(config, tmp_path / "first.log").start()
    deadline = time.monotonic() + 150
    while len(slack.accepted) < 2:  # ...then up; the worker is restarted mid-way
        first.assert_running()
        assert time.monotonic() < deadline, first.log_tail()
        await asyncio.sleep(0.2)
    first.stop()
    assert len(slack.accepted) < len(alerts), "the restart must come in the middle"
    slack.fail_next(2, 503, "service_unavailable")
    with WorkerProcess(config, tmp_path / "second.log") as second:
        while len(slack.accepted) < len(alerts):
            second.assert_running()
            assert time.monotonic() < deadline, second.log_tail()
            await asyncio.sleep(0.3)
        before_marker = await through_end_marker(config, slack, second)
    assert len(before_marker) == len(alerts)
    assert len(slack.accepted) == len(alerts) + 1  # and the marker, last
    delivered = Counter(
        alert.alert_id
        for alert in alerts
        for message in before_marker
        if slack_code(alert.alert_id, 200) in str(message["blocks"])
    )
    assert delivered == {alert.alert_id: 1 for alert in alerts}
    statuses = slack.statuses()
    assert statuses.count(500) == 4
    assert 503 in statuses
    assert all(s in (200, 429, 500, 503) for s in statuses)


async def test_a_refused_alert_is_kept_and_redelivered_after_the_fix(
    settings: Settings, tmp_path: Path, slack: FakeSlack
) -> None:

    config = configure(settings, tmp_path, slack)
    archived = config.model_copy(
        update={
            "slack_page_webhook_url": None,
            "slack_webhook_url": SecretStr(slack.url("T/B/archived")),
        }
    )
    await ensure_topic_plan(config, topic_plan(config))
    alert = Alert.model_validate(EXAMPLES["alert"]).model_copy(update={"severity": "warning"})
    await produce(
        config, [(config.alerts_topic, alert.alert_id.encode(), alert.model_dump_json().encode())]
    )
    with WorkerProcess(archived, tmp_path / "archived.log") as worker:
        deadline = time.monotonic() + 60
        while len(await read_topic(config, config.failed_alerts_topic)) < 1:
            worker.assert_running()
            assert time.monotonic() < deadline, worker.log_tail()
            await asyncio.sleep(0.3)
        values = scrape_metrics(worker.metrics_url)
        assert f"alert {alert.event_id} cannot be delivered" in worker.log_tail(200)
        assert "archived" not in worker.log_tail(200).replace("channel_is_archived", "")
    assert metric(values, "streamer_alert_deliveries_total", outcome="failed") == 1
    assert [r.body for r in slack.requests] == ["channel_is_archived"]

    def redeliver(*args: str) -> str:
        done = run_cli(config, "alerts", "redeliver", *args, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with WorkerProcess(config, tmp_path / "fixed.log") as fixed:  # the webhook is fixed
        assert "redelivered 1 of 1 parked alert(s); 0 redelivered before" in redeliver()
        assert "redelivered 0 of 1 parked alert(s); 1 redelivered before" in redeliver()
        deadline = time.monotonic() + 60
        while len(slack.accepted) < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        before_marker = await through_end_marker(config, slack, fixed)
    assert len(before_marker) == 1
    assert len(slack.accepted) == 2  # and the marker
    assert slack_code(alert.alert_id, 200) in str(slack.accepted[0]["blocks"])
