"""A lifecycle's cohort figures in SQL, written from docs/lifecycle.md: acquisition cohorts
(ISO week of the first visit, channel) with their value per horizon, first-order cohorts with
repeaters per horizon, advocates and churned buyers, and time to first purchase per channel,
from the raw events of every unit below a watermark. Nothing of ``streamer`` is used but the
declaration's fields.

Events are dicts: ``unit``, ``event_type``, ``at_ms``, ``properties``, ``context``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb

from streamer.funnel.definition import LifecycleDeclaration

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
HOUR_MS = 3_600_000
# docs/lifecycle.md, "Time to first purchase": the buckets' upper bounds, inclusive.
FIRST_PURCHASE_BOUNDS_MS = [
    HOUR_MS, 6 * HOUR_MS, DAY_MS, 3 * DAY_MS, 7 * DAY_MS, 14 * DAY_MS, 30 * DAY_MS, 60 * DAY_MS,
    90 * DAY_MS,
]  # fmt: skip


def _field(event: dict[str, Any], source: str) -> Any:
    kind, _, name = source.partition(".")
    holder = event.get("properties") if kind == "property" else event.get("context")
    return (holder or {}).get(name)


def lifecycle_figures(
    events: Sequence[dict[str, Any]], declaration: LifecycleDeclaration, watermark_ms: int
) -> dict[str, Any]:
    """``acquisition``: (week start ms, channel) -> (users, buyers, value cents per horizon,
    final per horizon); ``buyers``: week start ms -> (buyers, repeaters per horizon, final per
    horizon, advocates, churned); ``first_purchase``: channel -> (count per bucket, sum ms)."""
    rows = []
    for event in events:
        channel = _field(event, declaration.channel_from)
        value = _field(event, declaration.value_from)
        rows.append((
            str(event["unit"]),
            int(event["at_ms"]),
            str(event["event_type"]),
            None if channel is None else str(channel),
            None if value is None else json.dumps(value),
        ))  # fmt: skip
    db = duckdb.connect(":memory:")
    columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    db.execute(  # columns as lists, zipped by unnest: far quicker than a row at a time
        "CREATE TABLE ev AS SELECT unnest($unit::VARCHAR[]) AS unit,"
        " unnest($at::BIGINT[]) AS at_ms, unnest($type::VARCHAR[]) AS event_type,"
        " unnest($channel::VARCHAR[]) AS channel, unnest($value::VARCHAR[]) AS value_json",
        {
            "unit": list(columns[0]),
            "at": list(columns[1]),
            "type": list(columns[2]),
            "channel": list(columns[3]),
            "value": list(columns[4]),
        },
    )
    params = {
        "w": watermark_ms,
        "visits": [*declaration.visits, *declaration.orders],
        "orders": list(declaration.orders),
        "advocacy": list(declaration.advocacy),
        "channels": list(declaration.channels),
        "horizons": list(declaration.horizon_days),
        "churn_days": declaration.churn_days,
        "bounds": FIRST_PURCHASE_BOUNDS_MS,
    }
    db.execute(
        """
        CREATE TABLE users AS
        WITH seen AS (SELECT * FROM ev WHERE at_ms < $w),
        visit AS (SELECT * FROM seen WHERE list_contains($visits, event_type)),
        first_visit AS (SELECT unit, min(at_ms) AS fv FROM visit GROUP BY unit),
        acquired AS (  -- the smallest declared channel of the first instant, else other/unknown
            SELECT f.unit, f.fv,
                   coalesce(min(CASE WHEN v.channel IS NULL OR v.channel = '' THEN NULL
                                     WHEN list_contains($channels, v.channel) THEN v.channel
                                     ELSE 'other' END), 'unknown') AS channel
            FROM first_visit f JOIN visit v ON v.unit = f.unit AND v.at_ms = f.fv
            GROUP BY f.unit, f.fv
        ), ordered AS (
            SELECT unit, at_ms, row_number() OVER (PARTITION BY unit ORDER BY at_ms) AS nth
            FROM seen WHERE list_contains($orders, event_type)
        ), bought AS (
            SELECT unit, min(at_ms) AS fo, max(at_ms) AS last_order,
                   min(at_ms) FILTER (WHERE nth = 2) AS second_order
            FROM ordered GROUP BY unit
        )
        SELECT a.unit, a.fv, a.channel, b.fo, b.last_order, b.second_order,
               epoch_ms(date_trunc('week', make_timestamp(a.fv * 1000))) AS visit_week,
               epoch_ms(date_trunc('week', make_timestamp(b.fo * 1000))) AS order_week,
               coalesce(v.last_advocacy > b.fo, false) AS advocate,
               (b.last_order // 86400000 + $churn_days + 1) * 86400000::BIGINT <= $w AS churned
        FROM acquired a LEFT JOIN bought b USING (unit) LEFT JOIN (
            SELECT unit, max(at_ms) AS last_advocacy FROM seen
            WHERE list_contains($advocacy, event_type) GROUP BY unit
        ) v USING (unit)
        """,
        {k: params[k] for k in ("w", "visits", "orders", "advocacy", "channels", "churn_days")},
    )
    db.execute(
        """
        CREATE TABLE order_values AS
        SELECT unit, at_ms,
               CASE WHEN json_type(value_json) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                         AND CAST(value_json AS DOUBLE) >= 0
                    THEN CAST(round(CAST(value_json AS DOUBLE) * 100) AS BIGINT)
                    ELSE 0 END AS cents
        FROM ev WHERE at_ms < $w AND list_contains($orders, event_type)
        """,
        {"w": watermark_ms, "orders": list(declaration.orders)},
    )
    acquisition_rows = db.execute(
        """
        WITH horizon AS (SELECT unnest($horizons) AS days),
        per_user AS (
            SELECT u.unit, any_value(u.visit_week) AS visit_week, any_value(u.channel) AS channel,
                   any_value(u.fo) IS NOT NULL AS buyer, h.days,
                   coalesce(sum(o.cents) FILTER (
                       WHERE o.at_ms - u.fv <= h.days * 86400000::BIGINT), 0) AS cents
            FROM users u CROSS JOIN horizon h LEFT JOIN order_values o ON o.unit = u.unit
            GROUP BY u.unit, h.days
        )
        SELECT visit_week, channel, days, count(*), count(*) FILTER (WHERE buyer), sum(cents)
        FROM per_user GROUP BY ALL ORDER BY visit_week, channel, days
        """,
        {"horizons": params["horizons"]},
    ).fetchall()
    buyer_rows = db.execute(
        """
        WITH horizon AS (SELECT unnest($horizons) AS days)
        SELECT u.order_week, h.days, count(*),
               count(*) FILTER (WHERE u.second_order - u.fo <= h.days * 86400000::BIGINT),
               count(*) FILTER (WHERE u.advocate), count(*) FILTER (WHERE u.churned)
        FROM users u CROSS JOIN horizon h WHERE u.fo IS NOT NULL
        GROUP BY ALL ORDER BY u.order_week, h.days
        """,
        {"horizons": params["horizons"]},
    ).fetchall()
    purchase_rows = db.execute(
        """
        SELECT channel, (SELECT count(*) FROM unnest($bounds) AS b(bound)
                         WHERE b.bound < fo - fv) AS bucket,
               count(*), sum(fo - fv)
        FROM users WHERE fo IS NOT NULL GROUP BY ALL
        """,
        {"bounds": params["bounds"]},
    ).fetchall()

    def final(week: int, days: int) -> bool:
        return watermark_ms >= week + WEEK_MS + days * DAY_MS

    acquisition: dict[tuple[int, str], Any] = {}
    grouped: dict[tuple[int, str], list[tuple[int, int, int, int]]] = {}
    for week, channel, days, users, buyers, cents in acquisition_rows:
        grouped.setdefault((int(week), str(channel)), []).append(
            (int(days), int(users), int(buyers), int(cents))
        )
    for key, per_days in grouped.items():
        acquisition[key] = (
            per_days[0][1],
            per_days[0][2],
            tuple(c for _, _, _, c in per_days),
            tuple(final(key[0], d) for d, _, _, _ in per_days),
        )
    buyers: dict[int, Any] = {}
    by_week: dict[int, list[tuple[int, int, int, int, int]]] = {}
    for week, days, count, repeaters, advocates, churned in buyer_rows:
        by_week.setdefault(int(week), []).append(
            (int(days), int(count), int(repeaters), int(advocates), int(churned))
        )
    for week, per_days in by_week.items():
        buyers[week] = (
            per_days[0][1],
            tuple(r for _, _, r, _, _ in per_days),
            tuple(final(week, d) for d, _, _, _, _ in per_days),
            per_days[0][3],
            per_days[0][4],
        )
    first_purchase: dict[str, Any] = {}
    for channel, bucket, count, total in purchase_rows:
        counts, total_ms = first_purchase.get(
            channel, ([0] * (len(FIRST_PURCHASE_BOUNDS_MS) + 1), 0)
        )
        counts[int(bucket)] += int(count)
        first_purchase[str(channel)] = (counts, total_ms + int(total))
    return {
        "acquisition": acquisition,
        "buyers": buyers,
        "first_purchase": {ch: (tuple(c), t) for ch, (c, t) in first_purchase.items()},
    }
