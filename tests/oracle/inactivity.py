"""The oracle's sessions by inactivity (docs/funnel-semantics.md, "Sessions by inactivity"), in
SQL, written from the spec and sharing nothing with ``streamer.funnel.inactivity``.

An identity's events (rows with ``by_identity``: no session id, keyed ``<identity>:<id>``), its
duplicates set aside first (the first copy read decides; later copies go to its session, where
the walk drops them), ordered by event time: an event more than
the inactivity gap after the identity's previous one starts the next session, named
``<key>#2``, ``<key>#3``... (the first is ``<key>``); after more than a day without an event
the numbering starts over at ``<key>``. Rows of a session id pass through untouched.
"""

from __future__ import annotations

import re
from typing import Any

from tests.oracle import _db, _lock

__all__ = ["cut_by_inactivity", "duration_ms"]

# The spec's "a day": an identity silent longer starts its numbering over.
_DAY_MS = 24 * 3600 * 1000
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(text: str | int) -> int:
    """A plan's duration (``30m``, ``90s``, ``1h``...) in milliseconds."""
    if isinstance(text, int):
        return text * 1000
    match = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    return int(match[1]) * _UNITS_MS[match[2]]


_CUT_SQL = """
WITH firsts AS (
    SELECT n, sid, at_ms FROM cut_in
    WHERE by_identity
    QUALIFY row_number() OVER (PARTITION BY sid, eid ORDER BY n) = 1
),
gaps AS (
    SELECT n, sid, at_ms,
           coalesce(at_ms - lag(at_ms) OVER (PARTITION BY sid ORDER BY at_ms, n), 0) AS gap
    FROM firsts
),
epochs AS (
    SELECT *, sum(CASE WHEN gap > {day} THEN 1 ELSE 0 END) OVER (
        PARTITION BY sid ORDER BY at_ms, n ROWS UNBOUNDED PRECEDING) AS epoch
    FROM gaps
),
numbered AS (
    SELECT n, sid, 1 + sum(CASE WHEN gap > {inactivity} AND gap <= {day} THEN 1 ELSE 0 END)
        OVER (PARTITION BY sid, epoch ORDER BY at_ms, n ROWS UNBOUNDED PRECEDING) AS number
    FROM epochs
)
SELECT c.n, CASE WHEN m.number = 1 THEN f.sid ELSE f.sid || '#' || m.number END AS session_id
FROM cut_in c
JOIN (SELECT n, sid, eid FROM cut_in) f ON f.sid = c.sid AND f.eid = c.eid
JOIN numbered m ON m.n = f.n
WHERE c.by_identity
"""


def cut_by_inactivity(rows: list[dict[str, Any]], inactivity_ms: int) -> list[dict[str, Any]]:
    """``rows`` (the oracle's input rows, in the order read) with every identity's events in
    their numbered sessions."""
    with _lock:
        db = _db()
        db.execute(
            "CREATE OR REPLACE TEMP TABLE cut_in "
            "(n INTEGER, sid VARCHAR, eid VARCHAR, at_ms BIGINT, by_identity BOOLEAN)"
        )
        if rows:
            db.executemany(
                "INSERT INTO cut_in VALUES (?, ?, ?, ?, ?)",
                [
                    (n, r["session_id"], r["event_id"], r["at_ms"], bool(r.get("by_identity")))
                    for n, r in enumerate(rows)
                ],
            )
        sessions = dict(
            db.execute(_CUT_SQL.format(day=_DAY_MS, inactivity=inactivity_ms)).fetchall()
        )
    return [
        row | {"session_id": sessions[n]} if n in sessions else row for n, row in enumerate(rows)
    ]
