"""Small conversions for what streamer writes for people and records: one definition each."""

from __future__ import annotations

from datetime import UTC, datetime

from streamer.funnel.session import NEVER

__all__ = ["percent", "utc_datetime", "watermark_text"]


def percent(rate: float) -> str:
    """A 0..1 rate as a percentage with one decimal: ``0.3421`` -> ``"34.2%"``."""
    return f"{rate * 100:.1f}%"


def utc_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def watermark_text(ms: int) -> str:
    """An event time or watermark for a log line: ISO 8601 in milliseconds, or "none yet"."""
    if ms <= NEVER:
        return "none yet"
    return utc_datetime(ms).isoformat(timespec="milliseconds")
