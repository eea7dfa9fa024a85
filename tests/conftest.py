"""Shared fixtures: one real Kafka broker for the whole run, unique names per test.

The broker is the project's own (``streamer.kafka_local``) on free loopback ports in a temporary
folder; set ``STREAMER_KAFKA_BOOTSTRAP`` to run the suite against an existing cluster instead.
No test skips for want of a broker: if it cannot start, the run fails with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.kafka_local import LocalKafka
from streamer.settings import Settings
from streamer.testing import free_port
from tests.support.settings import isolated_settings


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka | None]:
    """The suite's broker process (None when STREAMER_KAFKA_BOOTSTRAP names a cluster)."""
    if os.environ.get("STREAMER_KAFKA_BOOTSTRAP"):
        yield None
        return
    settings = Settings(
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_data_dir=tmp_path_factory.mktemp("kafka"),
    )
    broker = LocalKafka(settings)
    broker.up()
    try:
        yield broker
    finally:
        broker.destroy()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalKafka | None) -> str:
    if local_broker is None:
        return os.environ["STREAMER_KAFKA_BOOTSTRAP"]
    return local_broker.bootstrap


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(kafka_bootstrap: str, unique: str, tmp_path: Path) -> Settings:
    """Settings for one test: the session broker, topics and group id of its own."""
    return isolated_settings(kafka_bootstrap, unique, tmp_path)
