"""Ingest stage: decode and validate source messages, count them, route rejects to the DLQ.

The agent is a thin loop; :class:`IngestStage` holds the logic and can be driven without Faust
(tests, benchmarks). Nothing a producer sends can raise out of :meth:`IngestStage.process`:
anything unexpected becomes a ``processing_error`` dead letter.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.events import DeadLetter, Event, ReasonCode
from streamer.funnel.stages import lifecycle_stage
from streamer.metrics import Metrics

__all__ = ["IngestStage", "SourceMessage"]

log = logging.getLogger(__name__)

SendFn = Callable[[bytes | None, bytes], Awaitable[Any]]


@dataclass(frozen=True)
class SourceMessage:
    """What the stage needs of a consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None


class IngestStage:
    def __init__(
        self,
        *,
        metrics: Metrics,
        limits: DecodeLimits,
        send_event: SendFn,
        send_dead_letter: SendFn,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._limits = limits
        self._send_event = send_event
        self._send_dead_letter = send_dead_letter
        self._clock = clock

    async def process(self, message: SourceMessage) -> Event | DeadLetter:
        """Handle one message; return the accepted event or the dead letter that was sent."""
        size = len(message.value) if message.value is not None else 0
        self._metrics.event_bytes.labels(topic=message.topic).inc(size)
        # The broker timestamp is the receive time the event-time bounds are checked against.
        received_at = (
            datetime.fromtimestamp(message.timestamp_ms / 1000, tz=UTC)
            if message.timestamp_ms is not None and message.timestamp_ms >= 0
            else self._clock()
        )
        started = time.perf_counter()
        try:
            result = decode_event(message.value, received_at=received_at, limits=self._limits)
        except Exception as exc:  # a decoder bug must not stop the worker
            log.exception("decoder failed on %s[%d]@%d", message.topic, message.partition,
                          message.offset)  # fmt: skip
            result = Rejection(ReasonCode.PROCESSING_ERROR, f"internal error: {exc!r}")
        self._metrics.decode_seconds.observe(time.perf_counter() - started)

        if isinstance(result, Rejection):
            return await self._dead_letter(message, result)
        self._metrics.events.labels(topic=message.topic, outcome="accepted").inc()
        self._metrics.events_by_type.labels(event_type=result.event_type).inc()
        stage = lifecycle_stage(result.event_type)
        if stage is not None:
            self._metrics.stage_events.labels(stage=stage.value).inc()
        await self._send_event(
            result.session_id.encode(), result.model_dump_json(exclude_none=True).encode()
        )
        return result

    async def _dead_letter(self, message: SourceMessage, rejection: Rejection) -> DeadLetter:
        letter = DeadLetter(
            dead_letter_id=f"{message.topic}/{message.partition}/{message.offset}",
            reason=rejection.reason,
            message=rejection.message,
            field=rejection.field,
            source_topic=message.topic,
            source_partition=message.partition,
            source_offset=message.offset,
            source_timestamp_ms=message.timestamp_ms,
            key_base64=base64.b64encode(message.key).decode() if message.key is not None else None,
            payload_base64=base64.b64encode(message.value or b"").decode(),
            rejected_at=self._clock(),
        )
        self._metrics.events.labels(topic=message.topic, outcome="dead_lettered").inc()
        log.info(
            "dead-lettered %s: %s (%s)", letter.dead_letter_id, rejection.reason.value,
            rejection.message[:200],
        )  # fmt: skip
        await self._send_dead_letter(message.key, letter.model_dump_json().encode())
        return letter
