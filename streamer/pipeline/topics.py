"""The Faust topics of every stage, built one way: record topics carry raw bytes (the stages
encode and decode themselves), source topics hand over each message's bytes through
:class:`~streamer.faust_consumer.RawSchema`, and the dead-letter topic accepts the larger
records a dead letter makes."""

from __future__ import annotations

from typing import Any

from streamer.faust_consumer import RawSchema
from streamer.pipeline.messages import DLQ_MAX_MESSAGE_BYTES
from streamer.settings import Settings

__all__ = ["dead_letter_topic", "record_topic", "source_topic"]

_RAW = {"key_serializer": "raw", "value_serializer": "raw"}


def record_topic(app: Any, name: str, **options: Any) -> Any:
    """A topic of records a stage encodes and decodes itself (raw bytes both ways)."""
    return app.topic(name, **_RAW, **options)


def source_topic(app: Any, *names: str, **options: Any) -> Any:
    """Input topics whose messages a stage reads as bytes (decoded by the stage)."""
    return app.topic(*names, schema=RawSchema(), **options)


def dead_letter_topic(app: Any, settings: Settings) -> Any:
    """``funnel.dlq``: a dead letter carries the original value base64-encoded, so it may be
    larger than the broker's 1 MiB default."""
    return record_topic(
        app, settings.dlq_topic, config={"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)}
    )
