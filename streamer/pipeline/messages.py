"""What the stages see of a consumed Kafka message, and the dead letter made from one."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from streamer.decode import Rejection
from streamer.events import DeadLetter

__all__ = ["DLQ_MAX_MESSAGE_BYTES", "SourceMessage", "dead_letter_for", "source_message"]

# A dead letter carries the original value base64-encoded (4/3 of its size) plus metadata, so
# the DLQ accepts larger messages than the broker's 1 MiB default for source topics.
DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class SourceMessage:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None


def source_message(raw: Any) -> SourceMessage:
    """A Faust message as the stages see it (Faust's timestamps are float seconds)."""
    return SourceMessage(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        timestamp_ms=round(raw.timestamp * 1000) if raw.timestamp else None,
        key=raw.key,
        value=raw.value,
    )


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
