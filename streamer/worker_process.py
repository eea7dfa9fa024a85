"""A streamer worker as a subprocess, and its ``/metrics`` read back: what ``streamer demo``
runs, and what the testing API (:mod:`streamer.testing`) hands to tests and benchmarks.

- :class:`WorkerProcess`: a real ``streamer worker`` subprocess with its own settings.
- :func:`scrape_metrics`: ``/metrics`` parsed into ``{(name, labels): value}``; :func:`metric`.
- :func:`free_port`: a loopback port nothing listens on.
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
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families

from streamer.settings import ENV_PREFIX, Settings, settings_env

__all__ = ["MetricValues", "WorkerProcess", "free_port", "metric", "scrape_metrics"]

MetricValues = dict[tuple[str, frozenset[tuple[str, str]]], float]


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
