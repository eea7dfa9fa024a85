"""Times as people type them on the command line: ISO 8601, relative, epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["TIME_FORMS", "parse_time"]

TIME_FORMS = (
    "ISO 8601 (2026-11-20T14:00Z; UTC if bare), now, today, yesterday, "
    "-7d / -2h / -30m / -45s / -1w, '2h ago', '3 days ago', or epoch milliseconds"
)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNIT_WORDS = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s",
    "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "hour": "h", "hours": "h", "day": "d", "days": "d", "week": "w", "weeks": "w",
}  # fmt: skip
_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*([a-z]+)$|^(\d+(?:\.\d+)?)\s*([a-z]+)\s+ago$")
# Epoch milliseconds since 1973 have 12 digits or more; fewer is more likely seconds.
_MIN_EPOCH_MS = 10**11


def parse_time(value: str, now: datetime) -> datetime:
    """``value`` as an aware UTC time, relative forms counted back from ``now``. Raises
    :class:`ValueError` with a one-line reason naming the accepted forms."""
    text = value.strip().lower()
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    named = {"now": now, "today": midnight, "yesterday": midnight - timedelta(days=1)}
    if text in named:
        return named[text]
    if text.isdigit():
        number = int(text)
        if number < _MIN_EPOCH_MS:
            raise ValueError(
                f"{value!r} looks like epoch seconds; give epoch milliseconds ({number * 1000})"
            )
        return datetime.fromtimestamp(number / 1000, tz=UTC)
    relative = _RELATIVE.match(text)
    if relative:
        amount = float(relative.group(1) or relative.group(3))
        word = relative.group(2) or relative.group(4)
        unit = _UNIT_WORDS.get(word, word)
        if unit in _UNITS:
            return now - timedelta(seconds=amount * _UNITS[unit])
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a time; use {TIME_FORMS}") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)  # no offset given: UTC
