"""/healthz and /readyz on a real worker (docs/operations.md): live at once, ready once its
partitions are assigned, its input read and the broker answers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from streamer.kafka_io import ensure_topics
from streamer.settings import Settings
from streamer.testing import WorkerProcess


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:  # 503 carries the checks too
        return refused.code, json.loads(refused.read())


async def test_a_worker_is_live_at_once_and_ready_once_assigned_and_caught_up(
    settings: Settings, tmp_path: Path
) -> None:
    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    base = f"http://{settings.web_host}:{settings.web_port}"
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        assert _get(f"{base}/healthz") == (200, {"status": "ok"})
        deadline = time.monotonic() + 90
        status, body = _get(f"{base}/readyz")
        while status != 200 and time.monotonic() < deadline:
            worker.assert_running()
            assert status == 503, body
            assert set(body["checks"]) == {"partitions_assigned", "caught_up", "broker"}
            await asyncio.sleep(0.5)
            status, body = _get(f"{base}/readyz")
        assert status == 200, (body, worker.log_tail())
        checks = body["checks"]
        assert body["ready"] is True
        assert checks["partitions_assigned"]["partitions"] >= 2 * settings.topic_partitions
        assert checks["caught_up"] == {"ok": True, "max_lag_messages": 10_000, "behind": {}}
        assert checks["broker"] == {"ok": True, "detail": "answers"}
