"""The worker's Faust consumer (``streamer.faust_consumer``) on the real broker: every message
is handed to the stream once, in offset order per partition, by the direct hand-over and by
Faust's own whenever a buffer is full, and none before the tables are restored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streamer.app import create_app
from streamer.faust_consumer import Transport
from streamer.kafka_io import ensure_topics
from streamer.settings import Settings
from streamer.testing import produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_every_message_reaches_the_stream_once_in_order_by_both_hand_overs(
    settings: Settings, tmp_path: Path
) -> None:
    topic = settings.clickstream_topic
    await ensure_topics(settings, [topic], partitions=4)
    total = 2000
    messages = [(topic, f"k{i % 37}".encode(), f"m{i}".encode()) for i in range(total)]
    await produce(settings, messages)
    out = tmp_path / "seen.json"
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.faust_delivery_app",
         settings.bootstrap_servers, topic, str(total), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert out.exists(), f"exit {run.returncode}: {run.stderr[-3000:]}"
    result = orjson.loads(out.read_bytes())
    seen = result["seen"]
    assert sorted(value for _, _, value in seen) == sorted(f"m{i}" for i in range(total))
    for partition in {p for p, _, _ in seen}:
        offsets = [offset for p, offset, _ in seen if p == partition]
        assert offsets == list(range(len(offsets))), f"partition {partition} out of order"
    # A buffer of 8 and a slow agent: the direct path ran, and so did Faust's (buffers full).
    assert result["paths"]["direct"] > 0
    assert result["paths"]["faust"] > 0
    # Source partitions stay paused until Faust's recovery has restored the tables and
    # resumed the streams: nothing is handed over meanwhile (it would be dropped).
    assert result["during_rebalance"] == 0


def test_the_worker_runs_on_streamers_consumer(settings: Settings) -> None:
    app = create_app(settings)
    assert isinstance(app.faust.transport, Transport)
    assert app.faust.transport.Consumer is Transport.Consumer
