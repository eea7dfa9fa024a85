"""Settings no other test shares: topics, group id, web port and data dir of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.settings import Settings
from streamer.testing import free_port


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
        "units_topic": f"funnel.units-{unique}",
        "web_port": free_port(),
        "data_dir": folder / "worker",
        "topic_partitions": 4,
    }
    return Settings(**(fields | extra))
