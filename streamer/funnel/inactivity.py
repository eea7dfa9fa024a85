"""Sessions by inactivity (docs/funnel-semantics.md, "Sessions by inactivity"). Pure.

A tracking plan's ``sessions`` rule follows an event without a session id under its identity's
key (``anonymous_id:<id>``). The identity's events, in event-time order, are cut into sessions:
an event more than ``inactivity`` after the identity's previous event starts the next session.
The task applies the rule as it releases events (in time order, once the watermark is past
them), so a late event within the lateness is released in its place, before any cut after it
is made: it can never bridge two sessions already cut.
"""

from __future__ import annotations

from streamer.funnel.session import NEVER

__all__ = ["IDENTITY_MEMORY_MS", "following_number", "session_name", "starts_session"]

# An identity silent this long is forgotten and its numbering starts over at its key: the
# number is kept only this long (a few hundred bytes per identity), not forever. Abandonment
# ids stay unique, as they carry the attempt's start.
IDENTITY_MEMORY_MS = 24 * 3_600_000


def session_name(identity: str, number: int) -> str:
    """An identity's session ``number`` as published: the first is the key itself (as before
    sessions were cut), later ones ``<key>#2``, ``<key>#3``..."""
    return identity if number == 1 else f"{identity}#{number}"


def starts_session(previous_ms: int, at_ms: int, inactivity_ms: int) -> bool:
    """Whether an identity's event at ``at_ms`` starts a new session, its previous event being
    at ``previous_ms`` (NEVER: none). A gap of exactly ``inactivity_ms`` does not."""
    return previous_ms != NEVER and at_ms - previous_ms > inactivity_ms


def following_number(number: int, previous_ms: int, at_ms: int) -> int:
    """The number of the session that starts at ``at_ms`` after session ``number``, whose last
    event was at ``previous_ms``: the next one, or 1 after more than a day's silence."""
    return 1 if at_ms - previous_ms > IDENTITY_MEMORY_MS else number + 1
