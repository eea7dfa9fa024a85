"""A report over an exported file (``streamer report FILE``): the ``streamer replay --from --to``
report, computed from a JSONL or CSV export of events in any shape a tracking plan declares,
with no Kafka.

The file is one input of :class:`streamer.range_replay.RangeReplay` (the replay engine, the
worker's core): every line is decoded by the plan as the worker decodes a message, and offered
with a *received time* that comes from the line itself, never from the wall clock, so the same
file gives a byte-identical report:

- the line's ``sent_at`` when the plan declares one and the line carries it, else its event
  time (an export keeps no broker time: no clock-skew correction is applied, and an event
  more than the allowed clock skew ahead of its own ``sent_at`` is refused as the worker would);
- a line the plan refuses (or ignores) is offered at the previous line's received time (the
  range's start for the first): it is counted, rejected or ignored, and moves nothing.

Lines are read in file order, as a broker delivers a topic: an event more than the allowed
lateness behind the newest one read is counted ``late``, as live. Export sorted by time, or
pass ``sort=True`` (``--sort``) to order the lines by received time first (in memory).

A CSV row becomes a JSON document: each column is put at a dotted path of the document (its
header, or the path a ``--column PATH=COLUMN`` mapping gives it); an empty cell is absent, and
a cell is read as the type the plan declares at its path (integer, number, boolean, epoch
time, a map as a JSON object), else kept as text for the plan to judge.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from streamer.decode import Rejection
from streamer.decoders import PlanDecoder
from streamer.errors import InputFileError
from streamer.events import ReplayReport
from streamer.formatting import utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.plan.compile import CompiledPlan, Ignored, PlannedEvent
from streamer.plan.model import PropertySpec, split_path
from streamer.range_replay import RangeReplay
from streamer.settings import Settings

__all__ = [
    "FORMATS",
    "FileRejection",
    "column_mapping",
    "file_format",
    "file_messages",
    "report_file",
]

FORMATS = ("jsonl", "csv")
SHOWN_REJECTIONS = 10  # the first rejected lines are named on stderr; all are counted
_CSV_FIELD_LIMIT = 1024 * 1024  # one cell: the worker refuses larger messages anyway
_INT_TEXT = re.compile(r"^[+-]?\d{1,19}$")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$")

Progress = Callable[[int, int], None]  # (bytes read, bytes in the file)


@dataclass(frozen=True)
class FileRejection:
    """A line the plan refused: where it is and why."""

    line: int
    rejection: Rejection

    def __str__(self) -> str:
        return f"{self.line}: {self.rejection.reason.value}: {self.rejection.message}"


def file_format(path: Path, given: str | None) -> str:
    """``given``, else ``csv`` for a ``.csv`` file and ``jsonl`` for anything else."""
    if given is not None:
        return given
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def column_mapping(items: Sequence[str]) -> dict[str, str]:
    """``PATH=COLUMN`` items -> {column: path}; a malformed one is an InputFileError."""
    mapping: dict[str, str] = {}
    for item in items:
        path, sep, column = item.partition("=")
        path, column = path.strip(), column.strip()
        if not sep or not path or not column:
            raise InputFileError(f"--column {item!r}: use PATH=COLUMN, e.g. timestamp=ts")
        if column in mapping:
            raise InputFileError(f"--column {item!r}: column {column!r} is mapped twice")
        mapping[column] = path
    return mapping


# --- CSV: text cells -> the plan's types ------------------------------------------------
def _declared_kinds(plan: CompiledPlan) -> dict[tuple[str | None, str], str]:
    """(event name or None for every event, dotted path) -> the type the plan declares there:
    a property's or context field's type, ``epoch`` for a numeric time, ``text`` for ids."""
    tracking = plan.plan
    env = tracking.envelope
    kinds: dict[tuple[str | None, str], str] = {}
    for paths in (env.event_name, env.event_id, env.session_id, env.user_id, env.anonymous_id):
        for path in paths or ():
            kinds[(None, path)] = "text"
    for time_field in (env.event_time, env.sent_at):
        if time_field is not None:
            numeric = any(fmt != "iso8601" for fmt in time_field.format)
            for path in time_field.path:
                kinds[(None, path)] = "epoch" if numeric else "text"
    for spec in env.context.values():
        kinds[(None, spec.path)] = _kind_of(spec)
    for name, event in tracking.events.items():
        holder = event.properties_path if event.properties_path is not None else env.properties
        for prop, declared in event.properties.items():
            path = f"{holder}.{prop}" if holder else prop
            kinds[(name, path)] = _kind_of(declared)
    return kinds


def _kind_of(spec: PropertySpec) -> str:
    kind, formats = spec.type, spec.format
    if kind == "enum":  # an enum of numbers reads numbers; of text, text
        return "integer" if all(isinstance(v, int) for v in spec.values or ()) else "text"
    if kind == "timestamp":
        return "epoch" if any(fmt != "iso8601" for fmt in formats) else "text"
    return kind


def _cell(text: str, kind: str) -> Any:
    """A CSV cell read as ``kind``; text that is not one is kept, for the plan to refuse."""
    if kind == "integer" and _INT_TEXT.match(text):
        return int(text)
    if kind in ("number", "epoch") and _NUMBER_TEXT.match(text):
        return int(text) if _INT_TEXT.match(text) else float(text)
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind == "map" and text.startswith("{"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return text
    return text


class _CsvDocuments:
    """CSV rows -> JSON documents at the plan's paths."""

    def __init__(self, plan: CompiledPlan, header: list[str], mapping: Mapping[str, str]) -> None:
        missing = sorted(set(mapping) - set(header))
        if missing:
            raise InputFileError(
                f"1: --column maps {', '.join(map(repr, missing))}, which the header "
                f"does not have (columns: {', '.join(header)})"
            )
        self.paths = [split_path(mapping.get(column, column)) for column in header]
        self.shown = [mapping.get(column, column) for column in header]
        self.kinds = _declared_kinds(plan)
        name_paths = plan.plan.envelope.event_name
        self.name_columns = [self.shown.index(p) for p in name_paths if p in self.shown]

    def document(self, row: list[str]) -> dict[str, Any]:
        name = next((row[i] for i in self.name_columns if row[i]), None)
        document: dict[str, Any] = {}
        for parts, shown, text in zip(self.paths, self.shown, row, strict=True):
            if not text or not parts:
                continue
            kind = self.kinds.get((name, shown)) or self.kinds.get((None, shown), "text")
            value = _cell(text, kind)
            holder = document
            for part in parts[:-1]:
                child = holder.setdefault(part, {})
                if not isinstance(child, dict):
                    raise InputFileError(f"column {shown!r}: {part!r} is also a value")
                holder = child
            holder[parts[-1]] = value
        return document


def _csv_messages(
    handle: io.BufferedReader, plan: CompiledPlan, mapping: Mapping[str, str]
) -> Iterator[tuple[int, bytes]]:
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    text = io.TextIOWrapper(handle, encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    documents = _CsvDocuments(plan, [column.strip() for column in header], mapping)
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise InputFileError(
                f"{reader.line_num}: {len(row)} cells, the header has {len(header)}"
            )
        try:
            document = documents.document(row)
        except InputFileError as exc:
            raise InputFileError(f"{reader.line_num}: {exc}") from None
        yield reader.line_num, orjson.dumps(document)


def file_messages(
    path: Path,
    fmt: str,
    plan: CompiledPlan,
    mapping: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[int, bytes]]:
    """(line number, message bytes) of every event of the file: a JSONL line as it is (the
    plan decodes it: a broken one is rejected, never raised), a CSV row as a JSON document.
    A file that is not in its format (a CSV row with too many cells, a mapping naming no
    column, a CSV that is not UTF-8) is an InputFileError naming the file and line."""
    if fmt not in FORMATS:
        raise InputFileError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    total = path.stat().st_size
    with path.open("rb") as handle:
        try:
            if fmt == "jsonl":
                messages: Iterator[tuple[int, bytes]] = (
                    (number, line.rstrip(b"\r\n"))
                    for number, line in enumerate(handle, start=1)
                    if line.strip()
                )
            else:
                messages = _csv_messages(handle, plan, mapping or {})
            for count, item in enumerate(messages, start=1):
                if progress is not None and count % 1000 == 0:
                    progress(handle.tell(), total)
                yield item
        except InputFileError as exc:  # "<line>: what is wrong"
            raise InputFileError(f"{path}:{exc}") from None
        except (UnicodeDecodeError, csv.Error) as exc:
            raise InputFileError(f"{path}: not a {fmt.upper()} file ({exc})") from None
    if progress is not None:
        progress(total, total)


def _received_ms(decoded: PlannedEvent) -> int:
    """The rule of the module docstring: the line's sent_at, else its event time."""
    return decoded.sent_at_ms if decoded.sent_at_ms is not None else decoded.event_time_ms


def report_file(
    settings: Settings,
    plan: CompiledPlan,
    funnels: Sequence[FunnelDefinition],
    path: Path,
    start: datetime,
    end: datetime,
    *,
    fmt: str = "jsonl",
    columns: Mapping[str, str] | None = None,
    topic: str | None = None,
    sort: bool = False,
    drain: bool = False,
    progress: Progress | None = None,
    rejected: list[FileRejection] | None = None,
) -> ReplayReport:
    """The replay report of ``[start, end)`` over the events of ``path``, decoded by ``plan``
    with the worker's limits of ``settings`` (events of any age). Each line goes to ``topic``,
    else the first topic its event is planned on, else the file's name. The first rejected
    lines are appended to ``rejected`` (when given)."""
    if end <= start:
        raise ValueError("--to must be after --from")
    funnels = tuple(funnels)
    source = path.name
    engine = RangeReplay.configured(
        settings, funnels, plan, start=start, end=end, inputs=[source], drain=drain
    )
    planned_topics = {
        name: event.topics[0] if event.topics else source
        for name, event in plan.plan.events.items()
    }

    decoder = engine.decoder
    assert isinstance(decoder, PlanDecoder)  # configured with a plan

    def arrivals() -> Iterator[tuple[int, int, str, PlannedEvent | Rejection | Ignored]]:
        """(received ms, line, topic, the plan's decode) in file order: each line decoded
        once, its time of arrival read from the decode."""
        received_ms = engine.start_ms
        for line, message in file_messages(path, fmt, plan, columns, progress):
            decoded = plan.decode(message, None, max_bytes=settings.max_event_bytes)
            name = None
            if isinstance(decoded, PlannedEvent):
                received_ms, name = _received_ms(decoded), decoded.name
            yield received_ms, line, topic or planned_topics.get(name or "", source), decoded

    ordered = sorted(arrivals(), key=lambda item: item[:2]) if sort else arrivals()
    for received_ms, line, line_topic, planned in ordered:
        outcome = engine.offer_decoded(
            source, line_topic, decoder.timed(planned, utc_datetime(received_ms))
        )
        if (
            isinstance(outcome, Rejection)
            and rejected is not None
            and len(rejected) < SHOWN_REJECTIONS
        ):
            rejected.append(FileRejection(line, outcome))
        engine.advance()
    engine.finish(source)
    return engine.report()
