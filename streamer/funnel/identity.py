"""Which unit an event of a user funnel counts for (docs/funnel-semantics.md, "Counting unit").
Pure: the pipeline's re-key by user calls it per session, instant by instant in event-time
order (after the watermark released them), so the unit of every event is a function of its
session's events alone, the same after any restart or rebalance.

1. an event that carries a user id belongs to that user;
2. else to the user of its session's latest instant at or before its time that carries one
   (several at one instant: the smallest in text order);
3. else to the anonymous unit ``anon:<session id>``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ANONYMOUS_PREFIX", "anonymous_unit", "instant_units"]

ANONYMOUS_PREFIX = "anon:"


def anonymous_unit(session_id: str) -> str:
    return ANONYMOUS_PREFIX + session_id


def instant_units(
    session_id: str, known_user: str | None, user_ids: Sequence[str | None]
) -> tuple[list[str], str | None]:
    """The units of one instant's events of a session (``user_ids``: what each carries), and
    the user the session is known by afterwards (``known_user``: before this instant)."""
    carried = [user for user in user_ids if user]
    if carried:
        known_user = min(carried)
    fallback = known_user or anonymous_unit(session_id)
    return [user or fallback for user in user_ids], known_user
