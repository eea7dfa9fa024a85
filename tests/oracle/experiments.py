"""The guardrail's counts in SQL, from docs/experiments.md and docs/funnel-semantics.md, for a
three-stage funnel ``first -> exposure -> next`` over traffic with one attempt per session:
per variant, the attempts whose exposure-stage entry falls in the cohort windows of
``[from_ms, to_ms)``, how many of them converted to ``next`` within the step's timeout, and the
exposures (the same entries). The variant is the one the exposure's events carry at the
attempt's first exposure instant (the smallest in text order at a tie); a variant outside the
declared ones, or none, is not counted. Nothing of ``streamer`` is used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb


def guardrail_counts(
    events: Sequence[dict[str, Any]],
    *,
    experiment: str,
    variants: Sequence[str],
    event_types: tuple[str, str, str],
    conversion_window_ms: int,
    timeouts_ms: tuple[int, int],
    window_ms: int,
    from_ms: int,
    to_ms: int,
) -> dict[str, tuple[int, int]]:
    """variant -> (decided, converted) at the step ``exposure -> next``; every attempt of
    those windows must be decided (the caller picks windows older than the timeout)."""
    rows = [
        (
            str(e["session_id"]),
            str(e["event_type"]),
            int(e["occurred_at"]),
            ((e.get("context") or {}).get("experiments") or {}).get(experiment),
        )
        for e in events
    ]
    db = duckdb.connect(":memory:")
    db.execute(
        "CREATE TABLE ev (session_id VARCHAR, event_type VARCHAR, at_ms BIGINT, variant VARCHAR)"
    )
    db.executemany("INSERT INTO ev VALUES (?, ?, ?, ?)", rows)
    first, exposure, after = event_types
    query = """
    WITH start AS (
        SELECT session_id, min(at_ms) AS start_ms FROM ev WHERE event_type = $first
        GROUP BY session_id
    ), entry AS (  -- the exposure stage's entry: the first later instant within its timeout
        SELECT e.session_id, min(e.at_ms) AS entry_ms, any_value(s.start_ms) AS start_ms
        FROM ev e JOIN start s USING (session_id)
        WHERE e.event_type = $exposure AND e.at_ms > s.start_ms
          AND e.at_ms <= s.start_ms + least($t0, $cw)
        GROUP BY e.session_id
    ), exposed AS (
        SELECT n.session_id, n.entry_ms, n.start_ms,
               (SELECT min(e.variant) FROM ev e WHERE e.session_id = n.session_id
                  AND e.event_type = $exposure AND e.at_ms = n.entry_ms) AS variant
        FROM entry n
    ), judged AS (
        SELECT x.variant,
               EXISTS (SELECT 1 FROM ev e WHERE e.session_id = x.session_id
                         AND e.event_type = $after AND e.at_ms > x.entry_ms
                         AND e.at_ms <= x.entry_ms + least($t1, $cw)
                         AND e.at_ms <= x.start_ms + $cw) AS converted
        FROM exposed x
        WHERE x.entry_ms - x.entry_ms % $window >= $from_ms
          AND x.entry_ms - x.entry_ms % $window < $to_ms
          AND list_contains($variants, x.variant)
    )
    SELECT variant, count(*), count(*) FILTER (WHERE converted) FROM judged GROUP BY variant
    """
    found = db.execute(
        query,
        {
            "first": first,
            "exposure": exposure,
            "after": after,
            "t0": timeouts_ms[0],
            "t1": timeouts_ms[1],
            "cw": conversion_window_ms,
            "window": window_ms,
            "from_ms": from_ms,
            "to_ms": to_ms,
            "variants": list(variants),
        },
    ).fetchall()
    return {str(variant): (int(n), int(ok)) for variant, n, ok in found}
