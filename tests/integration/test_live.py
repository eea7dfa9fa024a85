"""Live mode: idle inputs stop holding the watermark back, so partitions without traffic keep
up; /funnel, `funnel show` and the gauges agree with the windows topic's newest revisions."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from streamer.app import topic_plan
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.loaders import replay_events
from streamer.settings import Settings
from streamer.simulate import TrafficModel
from streamer.testing import WorkerProcess, metric, run_cli, scrape_metrics
from tests.support.compare import latest_windows

DEMO_FUNNELS = Path(__file__).resolve().parents[2] / "deploy/funnels/demo"


async def test_idle_partitions_keep_up_and_every_view_agrees(
    settings: Settings, tmp_path: Path
) -> None:
    # A test about the live edge: a short lateness and idle timeout (the demo's settings).
    config = settings.model_copy(
        update={
            "funnels": (DEMO_FUNNELS,),
            "allowed_lateness_seconds": 2.0,
            "idle_timeout_seconds": 2.0,
        }
    )
    await ensure_topic_plan(config, topic_plan(config))
    # Three sessions only: most of the 4 partitions stay idle.
    start = datetime.now(UTC) - timedelta(seconds=30)
    sessions = list(TrafficModel(mean_gap_seconds=1.0).sessions(seed=3, count=3, start=start))
    events = sorted((e for s in sessions for e in s), key=lambda e: e["occurred_at"])
    assert max(e["occurred_at"] for e in events) < datetime.now(UTC).isoformat()
    with WorkerProcess(config, tmp_path / "worker.log") as worker:
        await replay_events(config, events)
        landings = 0
        deadline = time.monotonic() + 120
        while landings < len(sessions):  # every session's landing is in a published revision
            worker.assert_running()
            assert time.monotonic() < deadline, worker.log_tail(40)
            await asyncio.sleep(1)
            windows = list(
                latest_windows(
                    v for _, v in await read_topic(config, config.windows_topic)
                ).values()
            )
            landings = sum(w.stages[0].entered for w in windows)
        assert landings == len(sessions)
        await asyncio.sleep(2)
        windows = list(
            latest_windows(v for _, v in await read_topic(config, config.windows_topic)).values()
        )
        last = max(windows, key=lambda w: w.window_start)

        base = f"http://{config.web_host}:{config.web_port}"
        summary: dict = {}
        while (
            summary.get("checkout", {}).get("last_window", {}).get("end")
            != last.window_end.isoformat()
        ):
            assert time.monotonic() < deadline, summary
            with urllib.request.urlopen(f"{base}/funnel", timeout=5) as response:
                summary = json.loads(response.read())
            await asyncio.sleep(0.5)
        shown = summary["checkout"]["last_window"]["stages"]
        assert [row["entered"] for row in shown] == [s.entered for s in last.stages]
        assert [row["open"] for row in shown[:-1]] == [s.open for s in last.stages[:-1]]
        assert summary["checkout"]["last_window"]["final"] is last.final
        hour = summary["checkout"]["last_hour"]
        assert hour["windows"] == len({w.window_id for w in windows})
        assert hour["stages"][0]["entered"] == len(sessions)
        # Three sessions: no step's baseline can hold enough final sessions to alert yet.
        warming = summary["checkout"]["warming_up"]
        assert warming
        assert warming[-1] == "payment->order"

        printed = run_cli(config, "funnel", "show", timeout=60)
        assert printed.returncode == 0, printed.stderr
        # the hour's table, titled by the span its data really covers (younger than an hour here)
        assert re.search(
            r"checkout: last (hour|[\d.]+ min \(all the windows there are, up to an hour\))",
            printed.stdout,
        ), printed.stdout
        assert "landing" in printed.stdout
        assert "open" in printed.stdout
        assert "order" in printed.stdout
        assert "the detector is warming up (no alert yet) for: " in printed.stdout

        values = scrape_metrics(worker.metrics_url)
        # Counters and ratio gauges take final windows only; the last one is not final yet
        # (its sessions are inside their timeouts and the input went quiet).
        assert not last.final
        final_ends = [w.window_end.timestamp() for w in windows if w.final]
        shown_end = metric(
            values, "streamer_funnel_last_window_end_timestamp_seconds", funnel="checkout"
        )
        assert shown_end == (max(final_ends) if final_ends else 0.0)
        for step in warming:
            gauge = metric(values, "streamer_detector_warming_up", funnel="checkout", step=step)
            assert gauge == 1.0
        lag_series = {
            labels
            for (name, labels), _ in values.items()
            if name == "streamer_consumer_lag_messages"
        }
        assert any(("topic", config.clickstream_topic) in labels for labels in lag_series)
        # Every partition has a watermark, also those that never saw an event: idle inputs
        # follow the active ones (minus the 2 s lateness), so the lag stays small.
        lags = [v for (name, _), v in values.items() if name == "streamer_watermark_lag_seconds"]
        assert len(lags) == config.topic_partitions
        assert all(0 < lag < 90 for lag in lags), lags
