"""Real Prometheus and Alertmanager servers (Debian's binaries) on free loopback ports, for the
ops tests. A missing binary fails the test with the way to install it: never a skip."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streamer.testing import free_port

INSTALL_HINT = "run `make ops-tools` (Debian packages prometheus and prometheus-alertmanager)"


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}", pytrace=False)
    return path


class ServerProcess:
    """A server binary with its arguments, logging to a file, ready once ``/-/ready`` says so."""

    def __init__(self, binary: str, args: list[str], port: int, log_path: Path) -> None:
        self.command = [require_binary(binary), *args]
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.command[0]} not ready in {timeout}s: {self.log_tail()}")

    def assert_running(self) -> None:
        assert self.process is not None, "not started"
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.command[0]} exited {self.process.returncode}: {self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def get_json(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            return json.loads(response.read())


class Prometheus(ServerProcess):
    def __init__(self, config_path: Path, data_dir: Path, log_path: Path) -> None:
        port = free_port()
        super().__init__(
            "prometheus",
            [
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            port,
            log_path,
        )

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a query Prometheus refuses)."""
        try:
            body = self.get_json("/api/v1/query", query=expr)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"{expr}: {error.read().decode(errors='replace')}") from error
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


class Alertmanager(ServerProcess):
    def __init__(self, config_path: Path, data_dir: Path, log_path: Path) -> None:
        port = free_port()
        super().__init__(
            "prometheus-alertmanager",  # Debian's name for the alertmanager binary
            [
                f"--config.file={config_path}",
                f"--storage.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip port: a single instance
            ],
            port,
            log_path,
        )
