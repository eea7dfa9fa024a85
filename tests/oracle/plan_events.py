"""The oracle's reading of events in a tracking plan's shape: raw JSON documents -> its input
rows (``session_id``, ``event_id``, ``event_type``, ``at_ms``, ``properties``, ``context``).

Written from docs/tracking-plan.md, not from ``streamer.plan``: the plan's YAML files are read
with PyYAML (a folder's ``events`` merged), and DuckDB extracts every field by the envelope's
dotted paths (the first path present of a list), converts the declared time format, names the
session (the session id, else ``<identity>:<id>`` of the first identity of the plan's sessions
rule present, cut into sessions by inactivity: ``tests.oracle.inactivity``) and keeps the
properties object and the declared context fields. Events the plan
does not declare are left out (``unplanned.events: ignore``). The documents fed to it are valid
for the plan: invalid ones (which the worker dead-letters) are not its concern.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.oracle import _db, _lock
from tests.oracle.inactivity import cut_by_inactivity, duration_ms

__all__ = ["plan_rows"]


def _read_plan(source: Path) -> dict[str, Any]:
    files = sorted(source.glob("*.y*ml")) if source.is_dir() else [source]
    plan: dict[str, Any] = {"events": {}}
    for file in files:
        data = yaml.safe_load(file.read_text())
        for key, value in data.items():
            if key == "events":
                plan["events"].update(value)
            else:
                plan[key] = value
    return plan


def _json_path(dotted: str) -> str:
    if not dotted:
        return "'$'"
    return "'$" + "".join(f'."{part}"' for part in dotted.split(".")) + "'"


def _paths(value: Any) -> list[str]:
    if isinstance(value, dict):
        value = value["path"]
    return [value] if isinstance(value, str) else list(value)


def _text(paths: list[str]) -> str:
    """The first of ``paths`` present (and not null), as text."""
    parts = [f"json_extract_string(doc, {_json_path(p)})" for p in paths]
    return parts[0] if len(parts) == 1 else f"COALESCE({', '.join(parts)})"


def _time_ms(field: dict[str, Any]) -> str:
    formats = field["format"]
    formats = [formats] if isinstance(formats, str) else formats
    text = _text(_paths(field))
    if "iso8601" in formats:
        return f"epoch_ms(CAST({text} AS TIMESTAMPTZ))"
    if "epoch_s" in formats:
        return f"CAST(ROUND(CAST({text} AS DOUBLE) * 1000) AS BIGINT)"
    return f"CAST({text} AS BIGINT)"


def plan_rows(plan_source: Path, documents: list[bytes]) -> list[dict[str, Any]]:
    """The oracle's input rows for ``documents`` read by the plan at ``plan_source``."""
    plan = _read_plan(plan_source)
    envelope = plan["envelope"]
    sessions = [_text(_paths(envelope["session_id"]))] if envelope.get("session_id") else []
    # Keyed by identity: no session id (cut into sessions by inactivity afterwards).
    by_identity = f"{sessions[0]} IS NULL" if sessions else "TRUE"
    rule = plan.get("sessions") or {}
    by = rule.get("by", [])
    for identity in [by] if isinstance(by, str) else by:
        sessions.append(f"'{identity}:' || {_text(_paths(envelope[identity]))}")
    context = envelope.get("context") or {}
    context_sql = ", ".join(
        f"'{name}', json_extract(doc, {_json_path(spec['path'])})"
        for name, spec in sorted(context.items())
    )
    names = ", ".join("'" + name.replace("'", "''") + "'" for name in plan["events"])
    sql = f"""
        SELECT * FROM (
            SELECT
                {_text(_paths(envelope["event_name"]))} AS event_type,
                {_text(_paths(envelope["event_id"]))} AS event_id,
                {_time_ms(envelope["event_time"])} AS at_ms,
                COALESCE({", ".join(sessions)}) AS session_id,
                {by_identity} AS by_identity,
                CAST(json_extract(doc, {_json_path(envelope.get("properties", "properties"))})
                     AS VARCHAR) AS properties,
                CAST({f"json_object({context_sql})" if context_sql else "'{{}}'"} AS VARCHAR)
                    AS context,
                n
            FROM raw
        ) WHERE event_type IN ({names})
        ORDER BY n
    """
    with _lock:
        db = _db()
        db.execute("CREATE OR REPLACE TEMP TABLE raw (n INTEGER, doc JSON)")
        db.executemany(
            "INSERT INTO raw VALUES (?, ?)", [(i, d.decode()) for i, d in enumerate(documents)]
        )
        rows = db.execute(sql).fetchall()
    out = []
    for event_type, event_id, at_ms, session_id, identity, properties, context_json, _ in rows:
        fields = orjson.loads(context_json) if context_json else {}
        out.append(
            {
                "session_id": session_id,
                "event_id": event_id,
                "event_type": event_type,
                "at_ms": int(at_ms),
                "properties": orjson.loads(properties) if properties else {},
                "context": {k: v for k, v in fields.items() if v is not None},
                "by_identity": bool(identity),
            }
        )
    if not rule:
        return out
    return cut_by_inactivity(out, duration_ms(rule.get("inactivity", "30m")))
