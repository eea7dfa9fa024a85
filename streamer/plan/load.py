"""Read a tracking plan: a YAML file, a folder of them, or a preset shipped with streamer.

Errors are :class:`streamer.errors.PlanError`, one line naming ``file:line`` and the field, as
funnel files report theirs (the same mechanism: ``streamer.funnel.yaml_lines``). A hostile plan is
refused before it costs much: the text is capped in bytes and in items before it is parsed,
then every collection of the model is capped (``streamer.plan.model``'s ``MAX_*``).

A folder is every ``*.yaml`` in it, sorted: their ``events`` are merged (an event name in two
files is an error naming both); every other top-level key is given by one file only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streamer.errors import PlanError
from streamer.funnel.yaml_lines import (
    YamlSourceError,
    line_index,
    line_of,
    problem_message,
    read_yaml,
)
from streamer.plan.model import TrackingPlan

__all__ = [
    "MAX_PLAN_BYTES",
    "MAX_PLAN_ITEMS",
    "PRESETS",
    "LoadedPlan",
    "load_plan",
    "preset_path",
]

MAX_PLAN_BYTES = 2 * 1024 * 1024  # every file of a plan together
# Lines plus commas: an upper bound of the YAML items, counted before parsing (100,000 enum
# values in one flow list are refused here in microseconds instead of parsed in seconds).
MAX_PLAN_ITEMS = 60_000
MAX_PLAN_FILES = 200
MAX_YAML_DEPTH = 16  # a plan needs 7 (events.<name>.properties.<name>.values.<item>)
_SHOWN_PROBLEMS = 3

PRESETS = ("streamer", "segment", "posthog", "snowplow")


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan and where each of its parts was written (for messages)."""

    plan: TrackingPlan
    source: str
    lines: Mapping[tuple[Any, ...], int] = field(default_factory=dict, repr=False)
    files: Mapping[tuple[Any, ...], str] = field(default_factory=dict, repr=False)

    def where(self, *loc: Any) -> str:
        """``file:line`` of a part of the plan (``"events", "page_view", "properties", "x"``)."""
        return _where(self.lines, self.files, self.source, loc)

    def summary(self) -> str:
        """One line: the plan, its version, events and topics."""
        plan = self.plan
        topics = ", ".join(plan.topics) or "any"
        return (
            f"{self.source}: plan version {plan.version}, {len(plan.events)} "
            f"event{'' if len(plan.events) == 1 else 's'}, "
            f"topics: {topics}; unplanned events {plan.unplanned.events}, properties "
            f"{plan.unplanned.properties}"
        )


def _where(
    lines: Mapping[tuple[Any, ...], int],
    files: Mapping[tuple[Any, ...], str],
    source: str,
    loc: tuple[Any, ...],
) -> str:
    name = source
    for cut in range(min(len(loc), 2), -1, -1):
        found = files.get(loc[:cut])
        if found is not None:
            name = found
            break
    return f"{name}:{line_of(lines, loc)}"


def preset_path(name: str) -> Path:
    """The file of a preset shipped with streamer (``streamer``, ``segment``...)."""
    if name not in PRESETS:
        raise PlanError(f"no preset {name!r}; presets: {', '.join(PRESETS)}")
    return Path(str(resources.files("streamer.plan").joinpath("presets").joinpath(f"{name}.yaml")))


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.yaml"))
        if not files:
            raise PlanError(f"{path}: no *.yaml plan files in this folder")
        if len(files) > MAX_PLAN_FILES:
            raise PlanError(f"{path}: {len(files)} plan files, limit {MAX_PLAN_FILES}")
        return files
    return [path]


def _read(file: Path, budget: int) -> str:
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise PlanError(f"{file}: cannot read: {exc.strerror}") from None
    if size > budget:
        raise PlanError(
            f"{file}:1: the plan is larger than {MAX_PLAN_BYTES:,} bytes (limit of a plan)"
        )
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(f"{file}: cannot read: {exc}") from None
    items = text.count("\n") + text.count(",")
    if items > MAX_PLAN_ITEMS:
        raise PlanError(
            f"{file}:1: the plan has {items:,} lines and list items, limit {MAX_PLAN_ITEMS:,} "
            "(at most 2,000 events, 500 properties each, 1,000 enum values)"
        )
    return text


def _bounded_nodes(file: Path, root: yaml.Node) -> None:
    """Refuse a node tree that is larger than the text suggests (YAML aliases repeat a node
    wherever they are used: a few lines can stand for billions of nodes) or nested deeper than
    any plan needs; counted without recursion, stopping at the limit."""
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > 2 * MAX_PLAN_ITEMS:
            raise PlanError(
                f"{file}:1: the plan expands to more than {2 * MAX_PLAN_ITEMS:,} YAML nodes "
                "(aliases?)"
            )
        if depth > MAX_YAML_DEPTH:
            raise PlanError(
                f"{file}:{node.start_mark.line + 1}: the plan is nested deeper than "
                f"{MAX_YAML_DEPTH} levels"
            )
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def load_plan(source: Path | str) -> LoadedPlan:
    """A plan file, a folder of plan files, or ``preset:NAME``; validated."""
    text_source = str(source)
    preset = text_source.startswith("preset:")
    path = preset_path(text_source.removeprefix("preset:")) if preset else Path(source)
    if not path.exists():
        raise PlanError(f"{path}: no such file or folder")
    merged: dict[str, Any] = {}
    lines: dict[tuple[Any, ...], int] = {}
    files: dict[tuple[Any, ...], str] = {}
    budget = MAX_PLAN_BYTES
    for file in _files(path):
        text = _read(file, budget)
        budget -= len(text.encode())
        try:
            data, node = read_yaml(file, text, fast=True)
            if node is not None:
                _bounded_nodes(file, node)
            file_lines = line_index(node) if node is not None else {}
        except YamlSourceError as exc:
            raise PlanError(str(exc)) from None
        except RecursionError:
            raise PlanError(f"{file}:1: the plan is nested too deeply") from None
        if not isinstance(data, dict):
            raise PlanError(f"{file}:1: a plan file must be a mapping")
        shown_file = Path("presets", file.name) if preset else file
        _merge(shown_file, data, file_lines, merged, lines, files)
    shown = text_source if preset else str(path)
    try:
        plan = TrackingPlan.model_validate(merged)
    except ValidationError as exc:
        problems = [
            f"{_where(lines, files, str(path), tuple(error['loc']))}: "
            f"{'.'.join(str(p) for p in error['loc']) or '<plan>'}: {problem_message(error)}"
            for error in exc.errors(include_url=False)[:_SHOWN_PROBLEMS]
        ]
        more = exc.error_count() - len(problems)
        raise PlanError("; ".join(problems) + (f" (+{more} more)" if more > 0 else "")) from None
    return LoadedPlan(plan=plan, source=shown, lines=lines, files=files)


def _merge(
    file: Path,
    data: dict[Any, Any],
    file_lines: Mapping[tuple[Any, ...], int],
    merged: dict[str, Any],
    lines: dict[tuple[Any, ...], int],
    files: dict[tuple[Any, ...], str],
) -> None:
    for key, value in data.items():
        if key == "events" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            for name, spec in value.items():
                if name in merged["events"]:
                    first = files.get(("events", name), "?")
                    raise PlanError(
                        f"{file}:{line_of(file_lines, ('events', name))}: events.{name}: "
                        f"already declared in {first}"
                    )
                merged["events"][name] = spec
                files[("events", name)] = str(file)
        elif key in merged:
            raise PlanError(
                f"{file}:{line_of(file_lines, (key,))}: {key}: already given in "
                f"{files.get((key,), '?')}; one file of a folder gives it"
            )
        else:
            merged[key] = dict(value) if key == "events" and isinstance(value, dict) else value
            files[(key,)] = str(file)
            if key == "events" and isinstance(value, dict):
                for name in value:
                    files[("events", name)] = str(file)
    for loc, line in file_lines.items():
        if loc == ("events",):
            lines.setdefault(loc, line)
        elif loc and (loc[0] != "events" or files.get(loc[:2]) == str(file)):
            lines[loc] = line
