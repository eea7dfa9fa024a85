"""Ingest stage: decode and validate source messages, drop duplicates, route rejects to the DLQ.

The agent is a thin loop; :class:`IngestStage` holds the logic and can be driven without Faust
(tests, benchmarks). Nothing a producer sends can raise out of :meth:`IngestStage.process`:
anything unexpected in decoding becomes a ``processing_error`` dead letter. Errors of the
sinks (Kafka unreachable) do propagate: the worker must stop rather than ack a message it
could not write anywhere.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.dedup import Deduplicator
from streamer.events import DeadLetter, Event, ReasonCode
from streamer.funnel.stages import lifecycle_stage
from streamer.metrics import Metrics
from streamer.settings import Settings

__all__ = ["IngestOutcome", "IngestStage", "SourceMessage", "dead_letter_for", "limits_from"]

log = logging.getLogger(__name__)

SendFn = Callable[[bytes | None, bytes], Awaitable[Any]]


class IngestOutcome(StrEnum):
    ACCEPTED = "accepted"
    DEAD_LETTERED = "dead_lettered"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class SourceMessage:
    """What the stage needs of a consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None


def dead_letter_for(
    message: SourceMessage, rejection: Rejection, rejected_at: datetime
) -> DeadLetter:
    """The dead letter of ``message``: its original bytes, where it came from, and why."""
    return DeadLetter(
        dead_letter_id=f"{message.topic}/{message.partition}/{message.offset}",
        reason=rejection.reason,
        message=rejection.message[:2000],
        field=rejection.field,
        source_topic=message.topic,
        source_partition=message.partition,
        source_offset=message.offset,
        source_timestamp_ms=message.timestamp_ms,
        key_base64=base64.b64encode(message.key).decode() if message.key is not None else None,
        payload_base64=base64.b64encode(message.value or b"").decode(),
        rejected_at=rejected_at,
    )


def limits_from(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_bytes=settings.max_event_bytes,
        max_future_skew=timedelta(seconds=settings.max_clock_skew_seconds),
        max_age=timedelta(seconds=settings.max_event_age_seconds),
    )


class IngestStage:
    def __init__(
        self,
        *,
        metrics: Metrics,
        limits: DecodeLimits,
        dedup: Deduplicator,
        send_event: SendFn,
        send_dead_letter: SendFn,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._metrics = metrics
        self._limits = limits
        self._dedup = dedup
        self._send_event = send_event
        self._send_dead_letter = send_dead_letter
        self._clock = clock

    async def process(self, message: SourceMessage) -> tuple[IngestOutcome, Event | DeadLetter]:
        """Handle one message: accepted (sent on), duplicate (dropped) or dead-lettered."""
        size = len(message.value) if message.value is not None else 0
        self._metrics.event_bytes.labels(topic=message.topic).inc(size)
        # The broker timestamp is the receive time: event-time bounds and the de-duplication
        # horizon are measured against it (a replayed message keeps its original timestamp).
        if message.timestamp_ms is not None and message.timestamp_ms >= 0:
            received_ms = message.timestamp_ms
        else:
            received_ms = round(self._clock().timestamp() * 1000)
        received_at = datetime.fromtimestamp(received_ms / 1000, tz=UTC)
        started = time.perf_counter()
        try:
            result = decode_event(message.value, received_at=received_at, limits=self._limits)
        except Exception as exc:  # a decoder bug must not stop the worker or lose the message
            log.exception(
                "decoder failed on %s[%d]@%d", message.topic, message.partition, message.offset
            )
            result = Rejection(ReasonCode.PROCESSING_ERROR, f"internal error: {exc!r}")
        self._metrics.decode_seconds.observe(time.perf_counter() - started)

        if isinstance(result, Rejection):
            return IngestOutcome.DEAD_LETTERED, await self._dead_letter(message, result)
        if self._dedup.is_duplicate(message.partition, result.event_id, received_ms):
            self._metrics.events.labels(topic=message.topic, outcome="duplicate").inc()
            log.debug("duplicate event_id %s dropped", result.event_id)
            return IngestOutcome.DUPLICATE, result
        self._metrics.dedup_tracked.set(self._dedup.tracked())
        self._metrics.events.labels(topic=message.topic, outcome="accepted").inc()
        self._metrics.events_by_type.labels(event_type=result.event_type).inc()
        stage = lifecycle_stage(result.event_type)
        if stage is not None:
            self._metrics.stage_events.labels(stage=stage.value).inc()
        await self._send_event(
            result.session_id.encode(), result.model_dump_json(exclude_none=True).encode()
        )
        return IngestOutcome.ACCEPTED, result

    async def _dead_letter(self, message: SourceMessage, rejection: Rejection) -> DeadLetter:
        letter = dead_letter_for(message, rejection, self._clock())
        await self._send_dead_letter(message.key, letter.model_dump_json().encode())
        self._metrics.events.labels(topic=message.topic, outcome="dead_lettered").inc()
        self._metrics.dead_letters.labels(topic=message.topic, reason=rejection.reason.value).inc()
        log.info(
            "dead-lettered %s: %s (%s)",
            letter.dead_letter_id,
            rejection.reason.value,
            rejection.message[:200],
        )
        return letter
