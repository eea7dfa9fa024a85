"""Published lifecycle figures in the SQL oracle's shape (tests/oracle/lifecycle.py), to compare
with it: the records' latest per partition summed here (by the records' documented rule, not
by streamer's aggregator), the merger's sum, and the gauges as Prometheus exposes them.

Every shape: ``acquisition`` (week start ms, channel) -> (users, buyers, value cents per
horizon); ``buyers`` week start ms -> (buyers, repeaters per horizon, advocates, churned);
``first_purchase`` channel -> (buyers per bucket, sum ms). The oracle's finality flags are
left out (they follow from the watermark alone)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from streamer.pipeline.lifecycle import LifecycleSum


def _ms(text: str) -> int:
    return round(datetime.fromisoformat(text).timestamp() * 1000)


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
    import orjson

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
