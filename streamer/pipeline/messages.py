"""What the stages see of a consumed Kafka message, and the dead letter made from one."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from streamer.decode import Rejection
from streamer.events import DeadLetter
from streamer.metrics import Metrics

__all__ = [
    "DLQ_MAX_MESSAGE_BYTES",
    "REKEY_DECODED_HEADER",
    "REKEY_FRONT",
    "REKEY_KEY_HEADER",
    "REKEY_KIND_HEADER",
    "REKEY_SOURCE_HEADER",
    "REKEY_TIMESTAMP_HEADER",
    "UNIT_HEADER",
    "PartitionSendFn",
    "SendFn",
    "SourceMessage",
    "dead_letter_for",
    "record_message",
    "send_rejected",
    "source_message",
]

log = logging.getLogger(__name__)

# A stage's send of one output record, ``(key, value)``: awaited, the produce is under way
# (what it returns, if anything, is the produce's future for ``Deliveries``).
SendFn = Callable[[bytes | None, bytes], Awaitable[Any]]
# The same to a chosen partition (``None``: the key's), returning the produce's future.
PartitionSendFn = Callable[[bytes | None, bytes, int | None], Awaitable[Awaitable[Any]]]

# A dead letter carries the original value base64-encoded (4/3 of its size) plus metadata, so
# the DLQ accepts larger messages than the broker's 1 MiB default for source topics.
DLQ_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# Headers of the re-keyed topic (the re-key path): a forwarded event keeps its original bytes
# and says where it came from; a front marker carries a source partition's event-time front.
REKEY_KIND_HEADER = "streamer-kind"
REKEY_FRONT = b"front"
REKEY_SOURCE_HEADER = "streamer-source"  # "topic/partition/offset" of the original
REKEY_TIMESTAMP_HEADER = "streamer-timestamp"  # the original's broker timestamp (ms)
REKEY_KEY_HEADER = "streamer-key"  # the original's key, when it had one
REKEY_DECODED_HEADER = "streamer-decoded"  # the re-key stage's decode (pipeline.forwarded)
UNIT_HEADER = "streamer-unit"  # user funnels: the unit a released event counts for


class SourceMessage(NamedTuple):
    """A consumed message. A named tuple: one is made per message, three times faster than
    the frozen dataclass it was (0.25 against 0.79 µs)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def received_at(self, otherwise: datetime) -> datetime:
        """When the broker took the message (its timestamp), else ``otherwise``."""
        if self.timestamp_ms is not None and self.timestamp_ms >= 0:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)
        return otherwise


async def send_rejected(
    message: SourceMessage, rejection: Rejection, now: datetime, send: SendFn, metrics: Metrics
) -> Any:
    """``message``'s dead letter, counted by reason, logged and sent (the sessions and re-key
    stages both reject input this way); returns the produce's future for ``Deliveries``."""
    letter = dead_letter_for(message, rejection, now)
    metrics.dead_letters.labels(topic=message.topic, reason=rejection.reason.value).inc()
    log.info(
        "dead-lettered %s: %s (%s)",
        letter.dead_letter_id,
        rejection.reason.value,
        rejection.message[:200],
    )
    return await send(message.key, letter.model_dump_json().encode())


def source_message(raw: Any) -> SourceMessage:
    """A Faust message as the stages see it (Faust's timestamps are float seconds)."""
    headers = raw.headers
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        headers = tuple((str(k), bytes(v or b"")) for k, v in items)
    timestamp = raw.timestamp
    return SourceMessage(
        raw.topic,
        raw.partition,
        raw.offset,
        round(timestamp * 1000) if timestamp else None,
        raw.key,
        raw.value,
        headers or (),
    )


def record_message(record: Any) -> SourceMessage:
    """An aiokafka ``ConsumerRecord`` as the stages see it (its timestamps are ms)."""
    return SourceMessage(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp if record.timestamp and record.timestamp > 0 else None,
        key=record.key,
        value=record.value,
        headers=tuple((str(k), bytes(v or b"")) for k, v in record.headers or ()),
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
