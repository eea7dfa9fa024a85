"""Small conversions for what streamer writes for people and records: one definition each."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["percent", "utc_datetime"]


def percent(rate: float) -> str:
    """A 0..1 rate as a percentage with one decimal: ``0.3421`` -> ``"34.2%"``."""
    return f"{rate * 100:.1f}%"


def utc_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
