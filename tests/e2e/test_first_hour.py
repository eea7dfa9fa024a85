"""A new user's first hour (issue 30), outside any checkout: the wheel built from this tree,
installed in a new virtual environment in a temporary folder, then every command of the
README's first steps with its defaults: `--version`, `kafka up`, a worker with the shipped
funnel, `simulate`, `/readyz`, `funnel show`, `replay --from -10m --to now`, `kafka down`.

It needs the package index (the wheel's dependencies; pip's cache makes a repeat quick) and
starts a broker of its own on free ports (the jars come from the usual Maven cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streamer.settings import ENV_PREFIX
from streamer.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    print(f"$ {' '.join(command[-6:])}\n{output}")  # the test's output: what the user saw
    assert done.returncode == 0, output
    return output


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"error": str(exc)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``streamer`` command of a wheel installed in a fresh virtual environment."""
    folder = tmp_path_factory.mktemp("first-hour")
    dist = folder / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([*pip, "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], folder, clean)
    (wheel,) = dist.glob("streamer-*.whl")
    venv = folder / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], folder, clean)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "install", "-q", str(wheel)], folder, clean, timeout=600)
    return venv / "bin" / "streamer"


@pytest.mark.timeout(1200)
def test_the_first_hour_from_a_wheel_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "shop"  # the user's own folder: no checkout anywhere near
    home.mkdir()
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.pop("PYTHONPATH", None)
    env.update(
        {
            f"{ENV_PREFIX}KAFKA_PORT": str(free_port()),
            f"{ENV_PREFIX}KAFKA_CONTROLLER_PORT": str(free_port()),
            f"{ENV_PREFIX}WEB_PORT": str(web_port),
            # The default funnel, and as `make demo` does, a short lateness: with the default
            # (120 s) an event waits two minutes for newer ones before it is counted.
            f"{ENV_PREFIX}ALLOWED_LATENESS_SECONDS": "10",
            f"{ENV_PREFIX}IDLE_TIMEOUT_SECONDS": "5",
        }
    )
    streamer = str(installed)
    assert _run([streamer, "--version"], home, env).startswith("streamer, version ")
    assert "replay" in _run([streamer, "-h"], home, env)
    # the shipped funnel, found from the installed package
    assert "funnel checkout" in _run([streamer, "funnel", "check"], home, env)

    _run([streamer, "kafka", "up"], home, env, timeout=600)
    worker: subprocess.Popen[bytes] | None = None
    log = tmp_path / "worker.log"
    try:
        with log.open("wb") as handle:
            worker = subprocess.Popen(
                [streamer, "worker"], cwd=home, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        readyz = f"http://127.0.0.1:{web_port}/readyz"

        def wait_ready(timeout: float) -> dict[str, Any]:
            deadline = time.monotonic() + timeout
            status, body = _readyz(readyz)
            while status != 200 and time.monotonic() < deadline:
                assert worker is not None
                assert worker.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
                status, body = _readyz(readyz)
            assert status == 200, (body, log.read_text()[-3000:])
            return body

        wait_ready(120)
        _run([streamer, "simulate", "--rate", "40", "--duration", "30"], home, env)
        print("readyz after simulate:", wait_ready(60))

        deadline = time.monotonic() + 90
        shown = _run([streamer, "funnel", "show", "--json"], home, env)
        while "checkout" not in shown and time.monotonic() < deadline:
            time.sleep(3)
            shown = _run([streamer, "funnel", "show", "--json"], home, env)
        assert "checkout" in json.loads(shown), shown
        table = _run([streamer, "funnel", "show"], home, env)
        assert "checkout: last window" in table

        replayed = _run([streamer, "replay", "--from", "-10m", "--to", "now"], home, env)
        assert "range: " in replayed
        assert '"funnel": "checkout"' in replayed
        assert "replayed " in replayed
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        _run([streamer, "kafka", "down"], home, env)
