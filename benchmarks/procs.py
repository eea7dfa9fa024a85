"""Every process the harness starts, stopped on the way out (also on Ctrl-C or SIGTERM)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from streamer.kafka_local import LocalKafka
from streamer.settings import ENV_PREFIX, Settings
from streamer.testing import WorkerProcess, free_port

__all__ = ["Children", "Timeout", "bench_broker", "deadline_loop", "terminate_on_sigterm"]

ROOT = Path(__file__).resolve().parents[1]


def bench_broker(workdir: Path) -> LocalKafka:
    """A local broker (not started) on free loopback ports, its data in ``workdir/kafka``,
    with the benchmarks' 4 partitions per topic."""
    return LocalKafka(
        Settings(
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            kafka_data_dir=workdir / "kafka",
            topic_partitions=4,
        )
    )


class Timeout(RuntimeError):
    """A bounded wait ran out."""


def deadline_loop(seconds: float, what: str, interval: float = 0.25) -> Iterator[float]:
    """Yield the elapsed seconds every ``interval`` until ``seconds`` have passed, then raise
    :class:`Timeout` naming ``what``. The caller breaks out when its condition holds."""
    started = time.monotonic()
    while True:
        elapsed = time.monotonic() - started
        if elapsed > seconds:
            raise Timeout(f"{what}: nothing after {seconds:.0f}s")
        yield elapsed
        time.sleep(interval)


class Children:
    """Subprocesses and worker processes started by this run; :meth:`stop_all` ends the ones
    still running (SIGTERM, then SIGKILL after a grace period)."""

    def __init__(self) -> None:
        self._popens: list[subprocess.Popen[bytes]] = []
        self._workers: list[WorkerProcess] = []

    def spawn(
        self, args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``python args...`` in the folder of ``log_path`` (Faust writes its data folder in
        the working directory), with this checkout importable and STREAMER_* cleared."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
        clean.update(env or {})
        with log_path.open("ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, *args],
                cwd=log_path.parent,
                env=clean,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
            )
        self._popens.append(process)
        return process

    def track(self, worker: WorkerProcess) -> WorkerProcess:
        self._workers.append(worker)
        return worker

    @staticmethod
    def end(process: subprocess.Popen[bytes], grace: float = 15.0) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def stop_all(self) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(Exception):
                    worker.stop(timeout=15)
        for process in self._popens:
            with contextlib.suppress(Exception):
                self.end(process)


def terminate_on_sigterm() -> None:
    """SIGTERM (and SIGHUP) unwind like Ctrl-C, so every ``finally`` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
