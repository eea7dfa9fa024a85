"""Generated lifecycle rows as the shop sends them, and published lifecycle figures in the SQL
oracle's shape (tests/oracle/lifecycle.py), to compare
with it: the records' latest per partition summed here (by the records' documented rule, not
by streamer's aggregator), the merger's sum, and the gauges as Prometheus exposes them.

Every shape: ``acquisition`` (week start ms, channel) -> (users, buyers, value cents per
horizon); ``buyers`` week start ms -> (buyers, repeaters per horizon, advocates, churned);
``first_purchase`` channel -> (buyers per bucket, sum ms). The oracle's finality flags are
left out (they follow from the watermark alone)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from streamer.pipeline.lifecycle import LifecycleSum
from streamer.schemas import EXAMPLES


def _ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def shop_event(event: dict[str, Any], index: int) -> dict[str, Any]:
    """A generated row as the shop sends it: the type's example with the row's fields."""
    shaped = {**EXAMPLES[event["event_type"]], **event["properties"]}
    del shaped["sent_at"]  # the example's: it would move the event to the example's day
    shaped |= {
        "event_id": event["event_id"],
        "session_id": f"{event['unit']}-{index % 3}",
        "user_id": event["unit"],
        "occurred_at": event["at_ms"],
        "context": {k: v for k, v in event["context"].items() if v is not None},
    }
    return shaped


def oracle_counts(sql: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle's figures without their finality flags."""
    return {
        "acquisition": {k: (u, b, cents) for k, (u, b, cents, _) in sql["acquisition"].items()},
        "buyers": {w: (b, r, adv, ch) for w, (b, r, _, adv, ch) in sql["buyers"].items()},
        "first_purchase": dict(sql["first_purchase"]),
    }


def latest_records(values: Iterable[bytes | dict[str, Any]]) -> dict[tuple[str, int], Any]:
    """The latest lifecycle record of each (funnel, partition) among partials-topic values:
    the highest ``version`` (docs/lifecycle.md, "Published")."""
    latest: dict[tuple[str, int], Any] = {}
    for value in values:
        record = orjson.loads(value) if isinstance(value, bytes) else value
        if record.get("kind") != "lifecycle":
            continue
        key = (record["funnel"], record["partition"])
        if key not in latest or record["version"] >= latest[key]["version"]:
            latest[key] = record
    return latest


def summed_records(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Records of one funnel, one per partition, added up."""
    acquisition: dict[tuple[int, str], tuple[int, int, tuple[int, ...]]] = {}
    buyers: dict[int, tuple[int, tuple[int, ...], int, int]] = {}
    first_purchase: dict[str, tuple[tuple[int, ...], int]] = {}
    for record in records:
        for c in record["acquisition"]:
            key = (_ms(c["week_start"]), c["channel"])
            u, b, cents = acquisition.get(key, (0, 0, (0,) * len(c["value_cents"])))
            acquisition[key] = (
                u + c["users"],
                b + c["buyers"],
                tuple(x + y for x, y in zip(cents, c["value_cents"], strict=True)),
            )
        for c in record["buyer_cohorts"]:
            week = _ms(c["week_start"])
            n, rep, adv, ch = buyers.get(week, (0, (0,) * len(c["repeaters"]), 0, 0))
            buyers[week] = (
                n + c["buyers"],
                tuple(x + y for x, y in zip(rep, c["repeaters"], strict=True)),
                adv + c["advocates"],
                ch + c["churned"],
            )
        for h in record["first_purchase"]:
            counts = tuple(n for _, n in h["buckets"])
            held, total = first_purchase.get(h["channel"], ((0,) * len(counts), 0))
            first_purchase[h["channel"]] = (
                tuple(x + y for x, y in zip(held, counts, strict=True)),
                total + round(h["sum_seconds"] * 1000),
            )
    return {"acquisition": acquisition, "buyers": buyers, "first_purchase": first_purchase}


def merged_counts(total: LifecycleSum) -> dict[str, Any]:
    """The merger's sum (streamer.pipeline.lifecycle) in the same shape."""
    return {
        "acquisition": {k: (u, b, tuple(c)) for k, (u, b, c) in total.acquisition.items()},
        "buyers": {w: (b, tuple(r), a, ch) for w, (b, r, a, ch) in total.buyers.items()},
        "first_purchase": {
            ch: (tuple(counts), round(seconds * 1000))
            for ch, (counts, seconds) in total.first_purchase.items()
        },
    }


def count_diff(got: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    """What differs, figure by figure (empty: equal)."""
    out = []
    for part in ("acquisition", "buyers", "first_purchase"):
        for key in sorted(set(got[part]) | set(want[part]), key=str):
            if got[part].get(key) != want[part].get(key):
                out.append(f"{part} {key}: got {got[part].get(key)} want {want[part].get(key)}")
    return out


def iso_week(week_start_ms: int) -> str:
    """``2026-W10``: the cohort label of a week (docs/lifecycle.md, "Definitions")."""
    year, week, _ = datetime.fromtimestamp(week_start_ms / 1000, UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _le(bound_ms: int | None) -> str:
    """A bucket's ``le`` label as Prometheus' client writes a float bound."""
    return "+Inf" if bound_ms is None else f"{bound_ms / 1000:g}"


def expected_gauges(
    counts: Mapping[str, Any],
    funnel: str,
    horizon_days: Sequence[int],
    bounds_ms: Sequence[int],
    weeks: int,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The ``streamer_lifecycle_*`` samples docs/operations.md describes for figures in the
    oracle's shape (:func:`oracle_counts`): every channel's time to first purchase, the newest
    ``weeks`` cohort weeks of each kind."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

    def put(name: str, value: float, **labels: str) -> None:
        out[(f"streamer_lifecycle_{name}", frozenset({"funnel": funnel, **labels}.items()))] = value

    horizons = [f"{days}d" for days in horizon_days]
    for channel, (buckets, sum_ms) in counts["first_purchase"].items():
        running = 0
        for bound, count in zip([*bounds_ms, None], buckets, strict=True):
            running += count
            put("first_purchase_buyers", running, channel=channel, le=_le(bound))
        put("first_purchase_mean_seconds", sum_ms / 1000 / running, channel=channel)
    for week in sorted(counts["buyers"])[-weeks:]:
        buyers, repeaters, _, churned = counts["buyers"][week]
        put("buyers", buyers, cohort=iso_week(week))
        put("churned_ratio", churned / buyers, cohort=iso_week(week))
        for horizon, repeated in zip(horizons, repeaters, strict=True):
            put("repeat_ratio", repeated / buyers, cohort=iso_week(week), horizon=horizon)
    newest = set(sorted({week for week, _ in counts["acquisition"]})[-weeks:])
    for (week, channel), (users, _, cents) in counts["acquisition"].items():
        if week in newest:
            put("acquired_users", users, cohort=iso_week(week), channel=channel)
            for horizon, total in zip(horizons, cents, strict=True):
                put(
                    "value_per_user",
                    total / 100 / users,
                    cohort=iso_week(week),
                    channel=channel,
                    horizon=horizon,
                )
    return out


def lifecycle_gauges(
    values: Mapping[tuple[str, frozenset[tuple[str, str]]], float], funnel: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The scraped ``streamer_lifecycle_*`` samples of ``funnel``."""
    return {
        key: value
        for key, value in values.items()
        if key[0].startswith("streamer_lifecycle_") and ("funnel", funnel) in key[1]
    }


def gauge_diff(
    got: Mapping[tuple[str, frozenset[tuple[str, str]]], float],
    want: Mapping[tuple[str, frozenset[tuple[str, str]]], float],
) -> list[str]:
    """Samples missing, extra or off by more than float rounding (empty: equal)."""
    out = []
    for key in sorted(set(got) | set(want), key=str):
        a, b = got.get(key), want.get(key)
        if a is None or b is None or abs(a - b) > 1e-9 * max(1.0, abs(b)):
            out.append(f"{key[0]} {sorted(key[1])}: got {a} want {b}")
    return out
