"""Bytes -> validated event, or a :class:`Rejection` that says why. Pure: no I/O, time passed in.

Order of checks (cheapest first, each with its own reason code): size, UTF-8 and JSON syntax
(orjson validates both), top-level object, known ``event_type``, schema, then event-time bounds
(after correcting a device clock that ``sent_at`` shows to be off).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError

from streamer.events import EVENT_MODELS, Event, ReasonCode

if TYPE_CHECKING:
    from streamer.settings import Settings

__all__ = [
    "DecodeLimits",
    "Rejection",
    "corrected_time",
    "decode_event",
    "parse_json",
    "time_bounds",
]


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 64 * 1024
    # How far ahead of the broker's receive time an event may claim to be (device clocks drift).
    max_future_skew: timedelta = timedelta(minutes=5)
    # How far behind the receive time an event may be before it is refused as too old.
    max_age: timedelta = timedelta(days=7)
    # When the producer sends ``sent_at`` and it differs from the broker time by more than
    # this, the device clock is taken to be off by that much and ``occurred_at`` is corrected.
    skew_correction_threshold: timedelta = timedelta(seconds=2)

    @classmethod
    def of(cls, settings: Settings) -> DecodeLimits:
        """The limits a worker applies, from its settings."""
        return cls(
            max_bytes=settings.max_event_bytes,
            max_future_skew=timedelta(seconds=settings.max_clock_skew_seconds),
            max_age=timedelta(seconds=settings.max_event_age_seconds),
        )


@dataclass(frozen=True)
class Rejection:
    reason: ReasonCode
    message: str
    field: str | None = None


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_json(raw: bytes | None, max_bytes: int) -> Any | Rejection:
    """A message value's JSON, or why not: a tombstone, over ``max_bytes``, not UTF-8 (lone
    surrogates included), not JSON. The first checks of every decoder (the contract's and a
    tracking plan's)."""
    if raw is None:
        return Rejection(ReasonCode.NOT_JSON, "message has no value (tombstone)")
    if len(raw) > max_bytes:
        return Rejection(ReasonCode.TOO_LARGE, f"payload is {len(raw)} bytes, limit is {max_bytes}")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if "UTF-8" in text or "surrogate" in text:
            return Rejection(ReasonCode.NOT_UTF8, f"payload is not valid UTF-8: {text}")
        return Rejection(ReasonCode.NOT_JSON, f"payload is not JSON: {text}")


def decode_event(
    raw: bytes | None, *, received_at: datetime, limits: DecodeLimits
) -> Event | Rejection:
    """Decode one message value. ``received_at`` is the broker timestamp (tz-aware)."""
    document = parse_json(raw, limits.max_bytes)
    if isinstance(document, Rejection):
        return document
    if not isinstance(document, dict):
        return Rejection(
            ReasonCode.NOT_AN_OBJECT,
            f"payload must be a JSON object, got {type(document).__name__}",
        )
    event_type = document.get("event_type")
    if not isinstance(event_type, str):
        return Rejection(
            ReasonCode.SCHEMA_VIOLATION,
            "event_type is missing or not a string",
            field="event_type",
        )
    model = EVENT_MODELS.get(event_type)
    if model is None:
        return Rejection(
            ReasonCode.UNKNOWN_EVENT_TYPE,
            f"unknown event_type {_short(event_type)}",
            field="event_type",
        )
    try:
        # The model's validator itself: ``model_validate`` is a Python call around it that
        # only passes its defaults on (this runs per event).
        event: Event = model.__pydantic_validator__.validate_python(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        extra = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        field = _field_path(first["loc"])
        return Rejection(
            ReasonCode.SCHEMA_VIOLATION, f"{field}: {first['msg']}{extra}", field=field or None
        )
    occurred_at = corrected_time(event.occurred_at, event.sent_at, received_at, limits)
    rejection = time_bounds(occurred_at, received_at, limits)
    if rejection is not None:
        return rejection
    if occurred_at is not event.occurred_at:
        event = event.model_copy(update={"occurred_at": occurred_at})
    return event


def corrected_time(
    occurred_at: datetime, sent_at: datetime | None, received_at: datetime, limits: DecodeLimits
) -> datetime:
    """``occurred_at`` corrected by the device clock's error: when the producer sent
    ``sent_at`` and it differs from the broker time by more than the threshold, the device
    clock is taken to be off by that much (the same object when nothing is corrected)."""
    if sent_at is not None:
        skew = received_at - sent_at
        if abs(skew) > limits.skew_correction_threshold:
            return occurred_at + skew
    return occurred_at


def time_bounds(
    occurred_at: datetime,
    received_at: datetime,
    limits: DecodeLimits,
    field: str = "occurred_at",
) -> Rejection | None:
    """Why an event time is refused against the broker time (too far ahead, too old), or
    None: the last checks of every decoder (the contract's and a tracking plan's)."""
    if occurred_at > received_at + limits.max_future_skew:
        ahead = occurred_at - received_at
        return Rejection(
            ReasonCode.FUTURE_EVENT,
            f"{field} is {ahead} ahead of the broker time (allowed skew {limits.max_future_skew})",
            field=field,
        )
    if occurred_at < received_at - limits.max_age:
        return _too_old(occurred_at, received_at, limits, field)
    return None


# Epoch seconds of any time since 2001 read as milliseconds land in January 1970.
_SECONDS_AS_MS = datetime(1970, 2, 1, tzinfo=UTC)


def _too_old(
    occurred_at: datetime, received_at: datetime, limits: DecodeLimits, field: str
) -> Rejection:
    horizon = _span(limits.max_age)
    if occurred_at < _SECONDS_AS_MS:
        as_seconds = datetime.fromtimestamp(occurred_at.timestamp() * 1000, tz=UTC)
        return Rejection(
            ReasonCode.TOO_OLD,
            f"{field} is {occurred_at.isoformat()}, older than the horizon of {horizon}: "
            f"it looks like epoch seconds ({as_seconds.isoformat()} if so); send epoch "
            "milliseconds or RFC 3339",
            field=field,
        )
    return Rejection(
        ReasonCode.TOO_OLD,
        f"{field} is {_span(received_at - occurred_at)} before the broker time, older than "
        f"the horizon of {horizon} (max_event_age_seconds)",
        field=field,
    )


def _span(delta: timedelta) -> str:
    """7d, 2h, 90s: a duration as a person reads it (not 7 days, 0:00:00)."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.4g}{unit}"
    return f"{seconds:.4g}s"
