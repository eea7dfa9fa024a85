"""Put the pipeline's records in the oracle's shape, and compare two engines' numbers with a
readable diff (what differs, key by key, with both sides' values)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from streamer.events import Abandonment, ReplayFunnel, StageStats, WindowStats
from streamer.funnel.definition import FunnelDefinition
from streamer.plan.compile import CompiledPlan, PlannedEvent

if TYPE_CHECKING:
    from tests.oracle import OracleResult

WindowKey = tuple[str, int, str]
SegmentKey = tuple[str, int, str, str, str]


def ms(moment: Any) -> int:
    return round(moment.timestamp() * 1000)


def latest_windows(values: Iterable[bytes | None]) -> dict[str, WindowStats]:
    """What a sink keeps of ``funnel.windows``: the final record of a window once there is one
    (the contract: final is the last word), else its newest revision."""
    latest: dict[str, WindowStats] = {}
    for value in values:
        if value is None:
            continue
        stats = WindowStats.model_validate_json(value)
        known = latest.get(stats.window_id)
        if known is None or (not known.final and (stats.final or stats.revision >= known.revision)):
            latest[stats.window_id] = stats
    return latest


def time_to_convert_summary(stage: StageStats) -> dict[str, Any]:
    """A published stage's mean and median bucket of its time to convert (oracle shape)."""
    histogram = stage.time_to_convert
    if histogram is None:
        return {"ttc_mean_s": None, "ttc_median_s": None}
    return {
        "ttc_mean_s": histogram.mean_seconds,
        "ttc_median_s": (histogram.median_at_least_seconds, histogram.median_at_most_seconds),
    }


def window_numbers(
    windows: Iterable[WindowStats],
) -> tuple[dict[WindowKey, dict[str, Any]], dict[SegmentKey, dict[str, int]]]:
    """Records -> (per window per stage numbers, per segment numbers), entered > 0 only."""
    stages: dict[WindowKey, dict[str, Any]] = {}
    segments: dict[SegmentKey, dict[str, int]] = {}
    for stats in windows:
        start = ms(stats.window_start)
        for stage in stats.stages:
            if not stage.entered:
                continue
            histogram = stage.time_to_convert
            stages[(stats.funnel, start, stage.stage)] = {
                "entered": stage.entered,
                "converted": stage.converted,
                "dropped": stage.dropped,
                "excluded": stage.excluded,
                "open": stage.open,
                "ttc_sum_ms": round(histogram.sum_seconds * 1000) if histogram else 0,
                "ttc_buckets": [count for _, count in histogram.buckets] if histogram else [0] * 13,
                "dropped_value": round(stage.dropped_value, 2),
                **time_to_convert_summary(stage),
            }
            if stage.units is not None:  # funnels with uniques
                stages[(stats.funnel, start, stage.stage)]["units"] = stage.units
        for segment in stats.segments:
            for stage in segment.stages:
                if stage.entered:
                    key = (stats.funnel, start, stage.stage, segment.dimension, segment.value)
                    segments[key] = {
                        "entered": stage.entered,
                        "converted": stage.converted,
                        "dropped": stage.dropped,
                        "excluded": stage.excluded,
                        "open": stage.open,
                    }
    return stages, segments


def abandonment_numbers(values: Iterable[bytes | None]) -> dict[str, dict[str, Any]]:
    """Records of ``funnel.abandonments`` (copies by id collapse) in the oracle's shape."""
    out: dict[str, dict[str, Any]] = {}
    retracted: dict[str, int] = {}
    for value in values:
        if value is None:
            continue
        record = Abandonment.model_validate(orjson.loads(value))
        if record.kind == "retracted":
            assert record.ordered_at is not None
            retracted[record.abandonment_id] = ms(record.ordered_at)
            continue
        out[record.abandonment_id] = {
            "funnel": record.funnel,
            "stage": record.stage,
            "session_id": record.session_id,
            "attempt_ms": ms(record.attempt_started_at),
            "abandoned_ms": ms(record.abandoned_at),
            "last_activity_ms": ms(record.last_activity_at),
            "cart_value": record.cart_value,
            "segments": dict(record.segments),
            "retracted_ms": None,
        }
    for key, order_ms in retracted.items():
        out[key]["retracted_ms"] = order_ms
    return out


def differences(
    expected: Mapping[Any, Any], actual: Mapping[Any, Any], *, limit: int = 12
) -> list[str]:
    """Key by key: what only one side has, and values that differ."""
    lines = []
    for key in sorted(set(expected) | set(actual), key=repr):
        if key not in actual:
            lines.append(f"  {key}: oracle {expected[key]}, streamer has nothing")
        elif key not in expected:
            lines.append(f"  {key}: streamer {actual[key]}, oracle has nothing")
        elif expected[key] != actual[key]:
            want, got = expected[key], actual[key]
            if isinstance(want, dict) and isinstance(got, dict):
                fields = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
                detail = ", ".join(f"{f}: oracle {want.get(f)} vs {got.get(f)}" for f in fields)
                lines.append(f"  {key}: {detail}")
            else:
                lines.append(f"  {key}: oracle {want} vs {got}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... and {len(lines) - limit} more"]
    return lines


def assert_same(what: str, expected: Mapping[Any, Any], actual: Mapping[Any, Any]) -> None:
    lines = differences(expected, actual)
    assert not lines, f"{what}: the two engines disagree on {len(lines)} keys\n" + "\n".join(lines)


def assert_replay_equals_oracle(
    replayed: ReplayFunnel, funnel: FunnelDefinition, expected: OracleResult
) -> None:
    """A funnel of a replay (or file) report against the oracle's result for that funnel
    alone: its windows per stage and per segment, and its abandonments and retractions per
    stage (the report counts them; the oracle lists them)."""
    windows, segments = window_numbers(replayed.windows)
    assert_same("windows", expected.windows, windows)
    assert_same("segments", expected.segments, segments)
    by_stage = Counter(a["stage"] for a in expected.abandonments.values())
    retracted = Counter(
        a["stage"] for a in expected.abandonments.values() if a["retracted_ms"] is not None
    )
    assert {a.stage: (a.abandoned, a.retracted) for a in replayed.abandonments} == {
        stage: (by_stage[stage], retracted[stage]) for stage in funnel.abandonment
    }


def oracle_rows(plan: CompiledPlan, lines: list[bytes], start: str, end: str) -> list[Any]:
    """The oracle's input: the lines as the plan decodes them, in [start, end)."""
    low, high = (round(datetime.fromisoformat(t).timestamp() * 1000) for t in (start, end))
    rows = []
    for line in lines:
        event = plan.decode(line)
        assert isinstance(event, PlannedEvent), event
        if low <= event.event_time_ms < high:
            rows.append(
                {
                    "session_id": event.session_key,
                    "event_id": event.event_id,
                    "event_type": event.name,
                    "at_ms": event.event_time_ms,
                    "properties": event.properties,
                    "context": event.context,
                }
            )
    return rows
