"""In-memory sinks and a valid event factory for unit tests of the ingest stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from streamer.decode import DecodeLimits
from streamer.dedup import Deduplicator
from streamer.metrics import Metrics
from streamer.pipeline.ingest import IngestStage, SourceMessage

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NOW_MS = round(NOW.timestamp() * 1000)


def valid_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "event_type": "add_to_cart",
        "session_id": "s-1",
        "occurred_at": "2026-11-22T11:59:00Z",
        "product_id": "p-1",
        "quantity": 2,
        "price": 10.5,
        "cart_value": 21.0,
        "currency": "EUR",
        "context": {"device": "ios", "country": "DE"},
    }
    event.update(overrides)
    return event


@dataclass
class Recorder:
    sent: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    async def __call__(self, key: bytes | None, value: bytes) -> None:
        self.sent.append((key, value))


@dataclass
class Harness:
    stage: IngestStage
    events: Recorder
    dead_letters: Recorder
    metrics: Metrics
    store: dict[str, tuple[int, int]]
    offset: int = 0

    def message(
        self,
        value: bytes | None,
        *,
        partition: int = 0,
        key: bytes | None = b"s-1",
        timestamp_ms: int = NOW_MS,
        topic: str = "clickstream",
    ) -> SourceMessage:
        self.offset += 1
        return SourceMessage(topic, partition, self.offset, timestamp_ms, key, value)


def make_harness(limits: DecodeLimits | None = None, horizon_ms: int = 600_000) -> Harness:
    metrics = Metrics.create(CollectorRegistry(), source_topics=("clickstream", "checkout"))
    store: dict[str, tuple[int, int]] = {}
    events, dead_letters = Recorder(), Recorder()
    stage = IngestStage(
        metrics=metrics,
        limits=limits or DecodeLimits(),
        dedup=Deduplicator(store, horizon_ms=horizon_ms),
        send_event=events,
        send_dead_letter=dead_letters,
        clock=lambda: NOW,
    )
    return Harness(stage, events, dead_letters, metrics, store)
