"""`streamer kafka up|down|status` on a broker of its own (not the session broker)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.testing import free_port


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


@pytest.fixture
def broker_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        STREAMER_KAFKA_PORT=str(free_port()),
        STREAMER_KAFKA_CONTROLLER_PORT=str(free_port()),
        STREAMER_KAFKA_DATA_DIR=str(tmp_path / "kafka"),
    )
    return env


def _jvm_alive(pid: int) -> bool:
    """Running, not a zombie (the JVM is reparented once the CLI that started it exits)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def test_up_down_repeatedly_and_second_up_says_running(broker_env: dict[str, str]) -> None:
    try:
        first = _run(broker_env, "kafka", "up")
        assert first.returncode == 0, first.stderr
        assert "started local Kafka" in first.stdout
        bootstrap = f"127.0.0.1:{broker_env['STREAMER_KAFKA_PORT']}"
        assert f"bootstrap: {bootstrap}" in first.stdout
        pid = int((Path(broker_env["STREAMER_KAFKA_DATA_DIR"]) / "broker.pid").read_text())

        second = _run(broker_env, "kafka", "up")
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        assert f"pid {pid}" in second.stdout

        assert _run(broker_env, "kafka", "status").returncode == 0

        down = _run(broker_env, "kafka", "down")
        assert down.returncode == 0
        assert "stopped local Kafka" in down.stdout
        assert not _jvm_alive(pid), "the broker JVM outlived `kafka down`"
        again = _run(broker_env, "kafka", "down")
        assert again.returncode == 0
        assert "was not running" in again.stdout
        status = _run(broker_env, "kafka", "status")
        assert status.returncode == 1
        assert "not running" in status.stdout

        # A second cycle reuses the formatted storage.
        restarted = _run(broker_env, "kafka", "up")
        assert restarted.returncode == 0, restarted.stderr
        assert "started local Kafka" in restarted.stdout
    finally:
        _run(broker_env, "kafka", "down")


def test_port_in_use_is_a_clear_error(broker_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(broker_env["STREAMER_KAFKA_PORT"])))
        squatter.listen()
        result = _run(broker_env, "kafka", "up")
    assert result.returncode == 2
    port = broker_env["STREAMER_KAFKA_PORT"]
    assert f"error: port 127.0.0.1:{port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (Path(broker_env["STREAMER_KAFKA_DATA_DIR"]) / "broker.pid").exists()


def test_missing_java_or_maven_says_what_to_install(
    broker_env: dict[str, str], tmp_path: Path
) -> None:
    # A PATH with python but without java and mvn, and an empty jar cache so resolving is needed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**broker_env, "PATH": str(bin_dir), "STREAMER_KAFKA_CACHE_DIR": str(tmp_path / "cache")}
    result = _run(env, "kafka", "up")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: `java` was not found on PATH: install a Java 17+")
    assert len([line for line in lines if line.startswith("error:")]) == 1


def test_existing_cluster_is_used_instead_of_a_local_broker(
    broker_env: dict[str, str], kafka_bootstrap: str
) -> None:
    env = {**broker_env, "STREAMER_KAFKA_BOOTSTRAP": kafka_bootstrap}
    result = _run(env, "kafka", "up")
    assert result.returncode == 0, result.stderr
    assert f"using the existing cluster at {kafka_bootstrap} (reachable)" in result.stdout
    assert not Path(broker_env["STREAMER_KAFKA_DATA_DIR"]).exists()


def test_worker_refuses_source_topics_with_another_partition_count(
    broker_env: dict[str, str], kafka_bootstrap: str, unique: str
) -> None:
    from streamer.kafka_io import ensure_topics, run_sync
    from streamer.settings import Settings

    topic = f"clickstream-{unique}"
    run_sync(ensure_topics(Settings(kafka_bootstrap=kafka_bootstrap), [topic], partitions=3))
    env = {
        **broker_env,
        "STREAMER_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAMER_CLICKSTREAM_TOPIC": topic,
        "STREAMER_CHECKOUT_TOPIC": f"checkout-{unique}",
    }
    result = _run(env, "worker")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: topics are not co-partitioned: {topic} has 3 partitions but topic_partitions "
        f"is 4 ({topic}: 3, checkout-{unique}: 4). One hop needs both topics keyed by "
        "session_id with the same partition count: set STREAMER_TOPIC_PARTITIONS to it, or "
        "STREAMER_SOURCE_KEYED_BY_SESSION=false to re-key through an internal topic"
    )
