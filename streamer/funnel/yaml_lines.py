"""YAML files whose errors name the file, the line and the field: one mechanism for every
definition streamer reads (funnels, tracking plans).

``compose`` keeps the node tree next to the data; ``line_index`` maps each key and list item
to its 1-based line; ``line_of`` finds the line of a field (or of its nearest enclosing node) for a
``file:line: field: message`` error; ``problem_message`` is a pydantic error's message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["YamlSourceError", "line_index", "line_of", "problem_message", "read_yaml"]

Lines = Mapping[tuple[Any, ...], int]


class YamlSourceError(ValueError):
    """A file could not be read or is not YAML; the message is ``file[:line]: problem``."""


def line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """YAML path -> 1-based line, for keys and list items."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(line_index(item, (*path, index)))
    return lines


def line_of(lines: Lines, loc: tuple[Any, ...]) -> int:
    """The line of ``loc``, or of its nearest enclosing node that has one (1 if none)."""
    for cut in range(len(loc), -1, -1):
        line = lines.get(loc[:cut])
        if line is not None:
            return line
    return 1


def read_yaml(
    path: Path, text: str | None = None, *, fast: bool = False
) -> tuple[Any, yaml.Node | None]:
    """The data and the node tree of a YAML file (``text``: already read). ``fast``: parse once
    with libyaml when PyYAML has it (large files), building the data from the node tree."""
    if text is None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise YamlSourceError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        if fast:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            node = yaml.compose(text, Loader=loader)
            data = None if node is None else loader("").construct_document(node)
        else:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlSourceError(f"{path}{where}: not valid YAML: {problem}") from None
    return data, node


def problem_message(error: Mapping[str, Any]) -> str:
    """A pydantic error's message, without its ``Value error, `` prefix (it says nothing)."""
    return str(error["msg"]).removeprefix("Value error, ")
