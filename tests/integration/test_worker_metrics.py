"""A real worker process on a real broker: produced events show up in /metrics."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from streamer.funnel.stages import lifecycle_stage
from streamer.kafka_io import ensure_topics
from streamer.settings import Settings
from streamer.simulate import TrafficModel, topic_for
from streamer.testing import WorkerProcess, metric, produce, scrape_metrics
from tests.support.kafka_waits import wait_for


def occurred(event: dict[str, object]) -> datetime:
    return datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00"))


async def test_worker_counts_produced_events_by_type_and_stage(
    settings: Settings, tmp_path: Path
) -> None:
    sessions = list(
        TrafficModel().sessions(
            seed=7, count=300, start=datetime.now(UTC) - timedelta(hours=1), sessions_per_second=50
        )
    )
    # As shops produce them: in time order (a session's events are spread over minutes).
    events = sorted((event for session in sessions for event in session), key=occurred)
    messages = [
        (topic_for(settings, e["event_type"]), e["session_id"].encode(), orjson.dumps(e))
        for e in events
    ]
    # Independent expectation: a plain count over what we send.
    by_type = Counter(e["event_type"] for e in events)
    by_stage = Counter(str(lifecycle_stage(e["event_type"])) for e in events)
    by_topic = Counter(topic for topic, _, _ in messages)
    garbage = [
        (settings.clickstream_topic, b"k", b"{not json"),
        (settings.checkout_topic, None, b"[]"),
    ]

    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await produce(settings, messages + garbage)
        accepted = len(events)

        def all_seen() -> bool:
            values = scrape_metrics(worker.metrics_url)
            seen = sum(
                metric(values, "streamer_events_total", topic=t, outcome=o)
                for t in (settings.clickstream_topic, settings.checkout_topic)
                for o in ("accepted", "dead_lettered")
            )
            return seen >= accepted + len(garbage)

        wait_for(all_seen, worker, timeout=90)
        values = scrape_metrics(worker.metrics_url)
        for event_type, count in by_type.items():
            assert metric(values, "streamer_events_by_type_total", event_type=event_type) == count
        for stage, count in by_stage.items():
            assert metric(values, "streamer_stage_events_total", stage=stage) == count
        for topic, count in by_topic.items():
            assert metric(values, "streamer_events_total", topic=topic, outcome="accepted") == count
        assert metric(values, "streamer_events_total", topic=settings.clickstream_topic,
                      outcome="dead_lettered") == 1  # fmt: skip
        assert metric(values, "streamer_events_total", topic=settings.checkout_topic,
                      outcome="dead_lettered") == 1  # fmt: skip
        assert by_type["order_placed"] > 0
        assert by_type["payment_submitted"] > 0
        worker.assert_running()
    assert worker.process is not None
    assert worker.process.returncode == 0, worker.log_tail()
