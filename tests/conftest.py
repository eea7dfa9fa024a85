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
from typing import Any

import pytest

from streamer.kafka_local import LocalKafka
from streamer.settings import Settings
from streamer.testing import free_port


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


def isolated_settings(kafka_bootstrap: str, unique: str, folder: Path, **extra: Any) -> Settings:
    """The broker, and topics, group id, web port and data dir (``folder/worker``) no other
    test uses (names end in ``unique``); ``extra`` overrides any of them."""
    fields: dict[str, Any] = {
        "kafka_bootstrap": kafka_bootstrap,
        "app_id": f"test-{unique}",
        "clickstream_topic": f"clickstream-{unique}",
        "checkout_topic": f"checkout-{unique}",
        "dlq_topic": f"funnel.dlq-{unique}",
        "partials_topic": f"funnel.partials-{unique}",
        "windows_topic": f"funnel.windows-{unique}",
        "abandonments_topic": f"funnel.abandonments-{unique}",
        "alerts_topic": f"funnel.alerts-{unique}",
        "failed_alerts_topic": f"funnel.alerts.failed-{unique}",
        "baselines_topic": f"funnel.baselines-{unique}",
        "rekeyed_topic": f"funnel.rekeyed-{unique}",
        "web_port": free_port(),
        "data_dir": folder / "worker",
        "topic_partitions": 4,
    }
    return Settings(**(fields | extra))
