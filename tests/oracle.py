"""An independent batch computation of funnel window counts, from the README's rules.

It imports nothing of ``streamer.funnel``: it reads the funnel YAML itself and walks each
session's events once, in event time, as a person would with a spreadsheet. The streaming
pipeline must publish exactly what this computes (given the events that were on time).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SEGMENT_SOURCES = {
    "device": ("context", "device"),
    "channel": ("context", "channel"),
    "country": ("context", "country"),
    "utm_source": ("context", "utm_source"),
    "app_version": ("context", "app_version"),
    "payment_method": ("event", "payment_method"),
}
# counts[window_start][stage] = [entered, converted, dropped]
Counts = dict[int, list[list[int]]]
# segments[window_start][(dimension, value)][stage] = [entered, converted, dropped]
Segments = dict[int, dict[tuple[str, str], list[list[int]]]]


def ms(text: Any) -> int:
    if isinstance(text, int | float):
        return int(text * 1000)
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text.strip()).groups()  # type: ignore[union-attr]
    return int(float(number) * UNITS[unit])


def load(path: Path) -> dict[str, Any]:
    spec = yaml.safe_load(path.read_text())
    window = ms(spec["conversion_window"])
    stages = []
    for raw in spec["stages"]:
        types = raw.get("event_types") or [raw["event_type"]]
        stages.append(
            {
                "types": set(types),
                "where": raw.get("where") or {},
                "timeout": min(ms(raw["timeout"]), window) if "timeout" in raw else window,
            }
        )
    segments = [
        (name, (opts or {}).get("cap", 10)) for name, opts in (spec.get("segments") or {}).items()
    ]
    return {
        "window": window,
        "bucket": ms(spec.get("window", "1m")),
        "stages": stages,
        "segments": segments,
    }


def _holds(event: dict[str, Any], prop: str, rule: Any) -> bool:
    value = event.get(prop)
    if not isinstance(rule, dict):
        return value == rule
    ((op, target),) = rule.items()
    if value is None:
        return op == "ne"
    checks = {
        "eq": lambda: value == target,
        "ne": lambda: value != target,
        "gt": lambda: value > target,
        "ge": lambda: value >= target,
        "lt": lambda: value < target,
        "le": lambda: value <= target,
        "in": lambda: value in target,
    }
    return bool(checks[op]())


def _is(stage: dict[str, Any], event: dict[str, Any]) -> bool:
    return event["event_type"] in stage["types"] and all(
        _holds(event, prop, rule) for prop, rule in stage["where"].items()
    )


def _segment(event: dict[str, Any], name: str) -> str | None:
    where, field = SEGMENT_SOURCES[name]
    value = (event.get("context") or {}).get(field) if where == "context" else event.get(field)
    return None if value in (None, "") else str(value)[:64]


def session_timeline(
    spec: dict[str, Any], events: list[dict[str, Any]]
) -> list[tuple[str, int, int, dict[str, str | None]]]:
    """(kind, stage, time, segments) for one session, every attempt decided."""
    stages = spec["stages"]
    timeline = sorted(events, key=lambda e: (e["t"], e["event_id"]))
    out: list[tuple[str, int, int, dict[str, str | None]]] = []
    cursor = 0
    while cursor < len(timeline):
        starts = [i for i in range(cursor, len(timeline)) if _is(stages[0], timeline[i])]
        if not starts:
            break
        begin = starts[0]
        opened = timeline[begin]["t"]
        seen = {name: _segment(timeline[begin], name) for name, _ in spec["segments"]}
        at, last, finished = 0, opened, False
        out.append(("entered", 0, opened, dict(seen)))
        i = begin + 1
        while i < len(timeline):
            event = timeline[i]
            if event["t"] > min(opened + spec["window"], last + stages[at]["timeout"]):
                break
            if any(_is(stage, event) for stage in stages):
                for name in seen:
                    seen[name] = seen[name] or _segment(event, name)
            last = event["t"]
            i += 1
            if _is(stages[at + 1], event):
                out.append(("converted", at, event["t"], dict(seen)))
                at += 1
                out.append(("entered", at, event["t"], dict(seen)))
                if at == len(stages) - 1:
                    finished = True
                    break
        if finished:
            cursor = i
            continue
        deadline = min(opened + spec["window"], last + stages[at]["timeout"])
        out.append(("dropped", at, deadline, dict(seen)))
        cursor = next((k for k, e in enumerate(timeline) if e["t"] > deadline), len(timeline))
    return out


def compute(
    spec: dict[str, Any], sessions: dict[str, list[dict[str, Any]]]
) -> tuple[Counts, Segments]:
    """Every session fully decided; events need ``t`` (epoch ms) besides their contract fields."""
    size = len(spec["stages"])
    column = {"entered": 0, "converted": 1, "dropped": 2}
    counts: Counts = defaultdict(lambda: [[0, 0, 0] for _ in range(size)])
    raw_segments: Segments = defaultdict(dict)
    for events in sessions.values():
        for kind, stage, at, seen in session_timeline(spec, events):
            bucket = at - at % spec["bucket"]
            counts[bucket][stage][column[kind]] += 1
            for name, value in seen.items():
                per = raw_segments[bucket].setdefault(
                    (name, value or "unknown"), [[0, 0, 0] for _ in range(size)]
                )
                per[stage][column[kind]] += 1
    segments: Segments = {}
    caps = dict(spec["segments"])
    for bucket, by_value in raw_segments.items():
        folded: dict[tuple[str, str], list[list[int]]] = {}
        for name in caps:
            values = sorted(
                ((v, c) for (n, v), c in by_value.items() if n == name),
                key=lambda item: (-sum(row[0] for row in item[1]), item[0]),
            )
            for rank, (value, rows) in enumerate(values):
                label = value if rank < caps[name] or value in ("unknown", "other") else "other"
                target = folded.setdefault((name, label), [[0, 0, 0] for _ in range(size)])
                for row, add in zip(target, rows, strict=True):
                    for k in range(3):
                        row[k] += add[k]
        segments[bucket] = folded
    return dict(counts), segments
