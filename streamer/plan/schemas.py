"""JSON Schemas (draft 2020-12) generated from a tracking plan: one per event and one for the
envelope, for producers to validate against before they send.

The schemas describe the strict JSON form of the plan (a plan with ``coercion: lax`` also
accepts numeric text where a number is declared: the schemas do not). Where an envelope field
has fallback paths (``event_name: [event, type]``), only the first path is described. A path
through a list (``contexts_..._1.0``) describes every item of the list. ``streamer schemas
write|check`` (``streamer.schemas``) uses these for a configured plan other than the default.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from streamer.plan.load import LoadedPlan
from streamer.plan.model import PropertySpec, TimeField, TrackingPlan, split_path

__all__ = ["dump_schema", "event_slug", "render_plan_schemas", "write_plan_schemas"]

_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_BASE_ID = "https://streamer.dev/schemas/plan/"
_TIME_LIMIT = {"epoch_ms": 1e15, "epoch_s": 1e12}


def event_slug(name: str) -> str:
    """A file name for an event name: ``"Product Viewed"`` -> ``product_viewed``."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return slug or "event"


def dump_schema(document: Any) -> str:
    """A schema file's text (every generated schema file is written alike)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _time_schema(formats: tuple[str, ...]) -> dict[str, Any]:
    options: list[dict[str, Any]] = []
    for fmt in formats:
        if fmt == "iso8601":
            options.append({"type": "string", "format": "date-time"})
        else:
            options.append({"type": "number", "minimum": 0, "exclusiveMaximum": _TIME_LIMIT[fmt]})
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "description": f"declared format: {' or '.join(formats)}"}


def _number(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _value_schema(spec: PropertySpec) -> dict[str, Any]:
    schema: dict[str, Any]
    if spec.type == "string":
        schema = {"type": "string"}
        if spec.min_length is not None:
            schema["minLength"] = spec.min_length
        if spec.max_length is not None:
            schema["maxLength"] = spec.max_length
        if spec.pattern is not None:
            schema["pattern"] = spec.pattern
    elif spec.type in ("integer", "number"):
        schema = {"type": spec.type}
        if spec.min is not None:
            schema["minimum"] = _number(spec.min)
        if spec.max is not None:
            schema["maximum"] = _number(spec.max)
    elif spec.type == "boolean":
        schema = {"type": "boolean"}
    elif spec.type == "enum":
        schema = {"enum": list(spec.values or ())}
    elif spec.type == "timestamp":
        schema = _time_schema(spec.format)
    else:  # map
        schema = {"type": "object", "additionalProperties": {"type": "string"}}
        if spec.min_length is not None:
            schema["minProperties"] = spec.min_length
        if spec.max_length is not None:
            schema["maxProperties"] = spec.max_length
    if spec.description:
        schema["description"] = spec.description
    if not spec.required and spec.nullable:
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


class _Tree:
    """An object schema built from dotted paths."""

    def __init__(self) -> None:
        self.children: dict[str, _Tree] = {}
        self.leaves: dict[str, dict[str, Any]] = {}
        self.required: set[str] = set()
        self.closed = False
        self.is_list = False

    def node(self, parts: tuple[str, ...]) -> _Tree:
        tree = self
        for part in parts:
            if part.isdigit():  # a list: every item is described
                tree.is_list = True
                continue
            tree = tree.children.setdefault(part, _Tree())
        return tree

    def put(self, path: str, schema: dict[str, Any], required: bool) -> None:
        parts = split_path(path)
        if not parts:
            return
        parent = self
        for depth, part in enumerate(parts[:-1]):
            if required and not part.isdigit():
                parent.required.add(part)
            parent = parent.node(parts[depth : depth + 1])
        leaf = parts[-1]
        parent.leaves[leaf] = schema
        if required:
            parent.required.add(leaf)

    def render(self) -> dict[str, Any]:
        properties = {name: child.render() for name, child in sorted(self.children.items())}
        properties.update(sorted(self.leaves.items()))
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if self.required:
            schema["required"] = sorted(self.required)
        if self.closed:
            schema["additionalProperties"] = False
        if self.is_list:
            return {"type": "array", "items": schema}
        return schema


def _envelope(plan: TrackingPlan, tree: _Tree, name: str | None) -> None:
    env = plan.envelope
    ident = {"type": "string", "minLength": 1, "maxLength": env.id_max_length}
    name_schema: dict[str, Any] = {"const": name} if name is not None else {"type": "string"}
    tree.put(env.event_name[0], name_schema, required=len(env.event_name) == 1)
    tree.put(env.event_id[0], ident, required=len(env.event_id) == 1)
    _time(tree, env.event_time, required=True)
    if env.sent_at is not None:
        _time(tree, env.sent_at, required=False)
    session_required = plan.sessions is None
    for field, paths in (
        ("session_id", env.session_id),
        ("user_id", env.user_id),
        ("anonymous_id", env.anonymous_id),
    ):
        if paths:
            required = field == "session_id" and session_required and len(paths) == 1
            schema = ident if required else {"anyOf": [ident, {"type": "null"}]}
            tree.put(paths[0], schema, required=required)
    for spec in env.context.values():
        tree.put(spec.path, _value_schema(spec), required=spec.required)
    if env.context_object and plan.unplanned.properties == "dead_letter":
        tree.node(split_path(env.context_object)).closed = True


def _time(tree: _Tree, field: TimeField, *, required: bool) -> None:
    tree.put(field.path[0], _time_schema(field.format), required=required and len(field.path) == 1)


def _header(schema: dict[str, Any], path: str, title: str) -> dict[str, Any]:
    return {"$schema": _DIALECT, "$id": _BASE_ID + path, "title": title, **schema}


def render_plan_schemas(loaded: LoadedPlan) -> dict[str, dict[str, Any]]:
    """``relative path -> schema``: ``envelope.schema.json`` and ``events/<slug>.schema.json``."""
    plan = loaded.plan
    envelope = _Tree()
    _envelope(plan, envelope, None)
    files = {"envelope.schema.json": _header(envelope.render(), "envelope.schema.json", "envelope")}
    used: set[str] = set()
    for name, spec in plan.events.items():
        slug = event_slug(name)
        while slug in used:
            slug += "_"
        used.add(slug)
        tree = _Tree()
        _envelope(plan, tree, name)
        path = (
            spec.properties_path if spec.properties_path is not None else plan.envelope.properties
        )
        holder = tree.node(split_path(path))
        for prop, prop_spec in spec.properties.items():
            holder.leaves[prop] = _value_schema(prop_spec)
            if prop_spec.required:
                holder.required.add(prop)
        if plan.unplanned.properties == "dead_letter":
            holder.closed = True
        schema = tree.render()
        if spec.description:
            schema["description"] = spec.description
        relative = f"events/{slug}.schema.json"
        files[relative] = _header(schema, relative, name)
    return files


def write_plan_schemas(loaded: LoadedPlan, root: Path) -> list[Path]:
    """Write the plan's schemas under ``root``; the paths written."""
    written = []
    for relative, schema in render_plan_schemas(loaded).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_schema(schema))
        written.append(path)
    return written
