"""In-memory sinks and a valid event factory for unit tests of the sessions stage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from streamer.decode import DecodeLimits
from streamer.decoders import EventDecoder
from streamer.events import DeadLetter
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.funnel.task import Offer
from streamer.metrics import Metrics
from streamer.pipeline.messages import SourceMessage
from streamer.pipeline.sessions.stage import (
    FindOffset,
    ReadRange,
    SessionsStage,
    _cannot_find,
    _cannot_read,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NOW_MS = round(NOW.timestamp() * 1000)
CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"


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

    async def __call__(self, key: bytes | None, value: bytes, partition: int | None = None) -> Any:
        self.sent.append((key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class Harness:
    stage: SessionsStage
    dead_letters: Recorder
    partials: Recorder
    abandonments: Recorder
    metrics: Metrics
    table: dict[str, bytes]
    acked: list[int] = field(default_factory=list)
    offset: int = -1  # the first message is offset 0: a task without a checkpoint starts there

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

    async def process(self, message: SourceMessage) -> tuple[Offer | str, DeadLetter | None]:
        """(Offer, None) for an event taken, ("dead_lettered", the letter) for a reject."""
        letters = len(self.dead_letters.sent)
        outcome = await self.stage.process(message, lambda: self.acked.append(message.offset))
        if len(self.dead_letters.sent) > letters:
            return "dead_lettered", DeadLetter.model_validate_json(self.dead_letters.sent[-1][1])
        return outcome if outcome is not None else "ignored", None


def make_harness(
    limits: DecodeLimits | None = None,
    *,
    lateness_ms: int = 120_000,
    interval_s: float = 3600,
    read_range: ReadRange = _cannot_read,
    find_offset: FindOffset = _cannot_find,
    funnels: tuple[FunnelDefinition, ...] | None = None,
    decoder: EventDecoder | None = None,
) -> Harness:
    """The stage with in-memory sinks (``decoder``: a tracking plan's; the contract's if
    None)."""
    funnels = funnels or (load_funnel(CHECKOUT),)
    metrics = Metrics.create(
        CollectorRegistry(), source_topics=("clickstream", "checkout"), funnels=funnels
    )
    table: dict[str, bytes] = {}
    dead_letters, partials, abandonments = Recorder(), Recorder(), Recorder()

    async def flush() -> None:
        return None

    stage = SessionsStage(
        funnels=funnels,
        topics=("clickstream", "checkout"),
        table=table,
        metrics=metrics,
        limits=limits or DecodeLimits(),
        allowed_lateness_ms=lateness_ms,
        retention_ms=600_000,
        checkpoint_interval_s=interval_s,
        send_partial=partials,
        send_dead_letter=dead_letters,
        send_abandonment=abandonments,
        flush_producer=flush,
        read_range=read_range,
        find_offset=find_offset,
        clock=lambda: NOW,
        decoder=decoder,
    )
    return Harness(stage, dead_letters, partials, abandonments, metrics, table)
