"""Helpers for tests and benchmarks that run streamer against real parts.

- :func:`free_port`: a loopback port nothing listens on.
- :class:`WorkerProcess`: a real ``streamer worker`` subprocess with its own settings.
- :func:`scrape_metrics`: ``/metrics`` parsed into ``{(name, labels): value}``.
- :func:`produce`: send raw messages with aiokafka and wait for the broker's acks.
- :func:`run_cli`: ``python -m streamer ARGS`` with the settings as its only environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streamer.kafka_io import make_producer
from streamer.settings import ENV_PREFIX, Settings, settings_env

__all__ = [
    "MetricValues",
    "WorkerProcess",
    "free_port",
    "produce",
    "run_cli",
    "scrape_metrics",
    "settings_env",
]

MetricValues = dict[tuple[str, frozenset[tuple[str, str]]], float]


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape_metrics(url: str, timeout: float = 2.0) -> MetricValues:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    values: MetricValues = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def metric(values: MetricValues, name: str, **labels: str) -> float:
    """One sample's value, 0.0 when the series does not exist."""
    return values.get((name, frozenset(labels.items())), 0.0)


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


class WorkerProcess:
    """``python -m streamer worker`` with the given settings; stopped with SIGTERM on exit,
    or killed with :meth:`kill`."""

    def __init__(
        self, settings: Settings, log_path: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}/metrics"

    def start(self, ready_timeout: float = 60.0) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_env(self.settings))
        env.update(self.extra_env)
        with self.log_path.open("ab") as log_handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamer", "worker"],
                env=env,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
            )
        self.wait_until_serving(ready_timeout)
        return self

    def wait_until_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                scrape_metrics(self.metrics_url)
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        raise TimeoutError(
            f"worker did not serve {self.metrics_url} in {timeout}s: {self.log_tail()}"
        )

    def assert_running(self) -> None:
        assert self.process is not None, "worker was not started"
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited with code {self.process.returncode}: {self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> int:
        """SIGKILL: no shutdown, no last commit, no goodbye to the group."""
        assert self.process is not None, "worker was not started"
        self.process.kill()
        return self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
