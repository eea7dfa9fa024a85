"""The testing API: helpers for tests and benchmarks that run streamer against real parts, and
for anyone testing a deployment of their own (no production module imports this one).

- :class:`WorkerProcess`: a real ``streamer worker`` subprocess with its own settings.
- :func:`scrape_metrics`: ``/metrics`` parsed into ``{(name, labels): value}``; :func:`metric`.
- :func:`free_port`: a loopback port nothing listens on.
- :func:`produce`: send raw messages with aiokafka and wait for the broker's acks.
- :func:`run_cli`: ``python -m streamer ARGS`` with the settings as its only environment.
- :class:`streamer.testing_slack.FakeSlack`: a local server that behaves like Slack's webhooks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

from streamer.kafka_io import make_producer
from streamer.settings import ENV_PREFIX, Settings, settings_env
from streamer.worker_process import MetricValues, WorkerProcess, free_port, metric, scrape_metrics

__all__ = [
    "MetricValues",
    "WorkerProcess",
    "free_port",
    "metric",
    "produce",
    "run_cli",
    "scrape_metrics",
    "settings_env",
]


def run_cli(
    settings: Settings, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``streamer ARGS`` as a user would, with ``settings`` as its environment (every
    other ``STREAMER_`` variable of ours removed); stdout and stderr captured as text."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def produce(
    settings: Settings, messages: Iterable[tuple[str, bytes | None, bytes | None]], **extra: Any
) -> int:
    """Send ``(topic, key, value)`` triples and wait until the broker acknowledged all."""
    producer = make_producer(settings, acks="all", linger_ms=5, **extra)
    await producer.start()
    count = 0
    try:
        futures = []
        for topic, key, value in messages:
            futures.append(await producer.send(topic, key=key, value=value))
            count += 1
        for future in futures:
            await future
    finally:
        await producer.stop()
    return count
