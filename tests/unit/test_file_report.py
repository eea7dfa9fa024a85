"""`streamer report FILE`: the replay report over an exported file, no Kafka. The OTTO sample
through a plan in OTTO's own names, and Segment-shaped traffic through preset:segment, give
the SQL oracle's numbers (the oracle reads the same plan-decoded events); the same file gives a
byte-identical report; bad lines are counted and named, never raised."""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from streamer.cli import cli
from streamer.events import ReplayReport
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.plan.compile import compile_plan
from streamer.plan.load import load_plan
from streamer.settings import Settings
from tests.oracle import compute
from tests.support.compare import assert_replay_equals_oracle, oracle_rows
from tests.support.datasets import otto_sample

ROOT = Path(__file__).resolve().parents[2]
OTTO_PLAN = ROOT / "deploy/plans/otto.yaml"
OTTO_FUNNEL = ROOT / "deploy/plans/funnels/otto.yaml"
SEGMENT_EXAMPLE = ROOT / "tests/unit/plan_examples/segment.jsonl"
OTTO_FROM, OTTO_TO = "2022-07-31T00:00Z", "2022-10-01T00:00Z"  # every window final at --to


def otto_rows() -> list[dict[str, Any]]:
    """The sample's events one per line (the export deploy/plans/otto.yaml describes), in the
    file's order: session by session."""
    rows = []
    for line in otto_sample().read_bytes().splitlines():
        session = orjson.loads(line)
        for index, event in enumerate(session["events"]):
            rows.append(
                {
                    "id": f"{session['session']}-{index}",
                    "session": str(session["session"]),
                    "aid": event["aid"],
                    "ts": event["ts"],
                    "type": event["type"],
                }
            )
    return rows


def by_time(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda row: (row["ts"], row["id"]))


def write_jsonl(path: Path, documents: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in documents))
    return path


def report(*args: str | Path) -> tuple[ReplayReport, str, str]:
    """Run `streamer report`; (the report, its exact text, stderr)."""
    result = CliRunner().invoke(cli, ["report", *map(str, args)])
    assert result.exit_code == 0, result.stderr + result.stdout
    return ReplayReport.model_validate_json(result.stdout), result.stdout, result.stderr


def assert_equals_oracle(
    result: ReplayReport, funnel: FunnelDefinition, rows: list[Any], end: str
) -> None:
    # The report's engine keeps a unit's state for the default session retention, which
    # bounds what first-time stages remember (spec: "First-time steps").
    end_ms = round(datetime.fromisoformat(end).timestamp() * 1000)
    expected = compute([funnel], rows, end_ms, round(Settings().session_retention_seconds * 1000))
    [replayed] = result.funnels
    assert_replay_equals_oracle(replayed, funnel, expected)


def test_the_otto_sample_through_its_own_plan_gives_the_oracles_numbers(tmp_path: Path) -> None:
    rows = by_time(otto_rows())
    assert Counter(row["type"] for row in rows) == {"clicks": 800, "carts": 52, "orders": 10}
    path = write_jsonl(tmp_path / "otto.jsonl", rows)
    args = (path, "--plan", OTTO_PLAN, "--funnels", OTTO_FUNNEL, "--from", OTTO_FROM)
    result, text, stderr = report(*args, "--to", OTTO_TO)
    assert result.events.read == result.events.in_range == 862
    assert result.events.late == result.events.rejected == 0
    assert all(window.final for window in result.funnels[0].windows)
    lines = path.read_bytes().splitlines()
    plan = compile_plan(load_plan(OTTO_PLAN))
    funnel = load_funnel(OTTO_FUNNEL)
    assert_equals_oracle(result, funnel, oracle_rows(plan, lines, OTTO_FROM, OTTO_TO), OTTO_TO)
    entered = {s.stage: s.entered for s in result.funnels[0].totals.stages}
    assert entered["click"] >= 20
    assert entered["order"] >= 1
    assert "862 events in range" in stderr
    # The same file, the same report, to the byte (no wall clock in it).
    assert report(*args, "--to", OTTO_TO)[1] == text
    # A range that ends inside the data: sessions open at --to stay open, as the oracle says.
    middle = "2022-08-10T00:00Z"
    cut, _, _ = report(*args, "--to", middle)
    assert sum(s.open for s in cut.funnels[0].totals.stages) > 0
    assert_equals_oracle(cut, funnel, oracle_rows(plan, lines, OTTO_FROM, middle), middle)


def test_a_csv_export_with_a_column_mapping_gives_the_jsonl_report(tmp_path: Path) -> None:
    rows = by_time(otto_rows())
    jsonl = write_jsonl(tmp_path / "otto.jsonl", rows)
    path = tmp_path / "otto.csv"
    headers = {"id": "event_id", "session": "session_id", "aid": "article", "ts": "time_ms",
               "type": "event_type"}  # fmt: skip
    with path.open("w", newline="", encoding="utf-8-sig") as handle:  # a spreadsheet's BOM
        writer = csv.writer(handle)
        writer.writerow(headers.values())
        writer.writerows([[row[key] for key in headers] for row in rows])
    common = ("--plan", OTTO_PLAN, "--funnels", OTTO_FUNNEL, "--from", OTTO_FROM, "--to", OTTO_TO)
    mapping = [arg for key, column in headers.items() for arg in ("--column", f"{key}={column}")]
    from_csv, _, _ = report(path, *common, *mapping)
    from_jsonl, _, _ = report(jsonl, *common)
    assert from_csv.events.in_range == 862
    # The same events and numbers; only the input's name (the file's) differs.
    assert from_csv.model_dump(exclude={"topics"}) == from_jsonl.model_dump(exclude={"topics"})


def test_an_unsorted_export_counts_late_events_unless_sorted(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "otto.jsonl", otto_rows())  # session by session
    args = ("--plan", OTTO_PLAN, "--funnels", OTTO_FUNNEL, "--from", OTTO_FROM, "--to", OTTO_TO)
    as_read, _, _ = report(path, *args)
    assert as_read.events.late > 0  # sessions 1..19 start weeks before session 0 ends
    in_order, _, _ = report(path, *args, "--sort")
    ordered, _, _ = report(write_jsonl(tmp_path / "sorted.jsonl", by_time(otto_rows())), *args)
    assert in_order.events.late == 0
    assert in_order.model_dump(exclude={"topics"}) == ordered.model_dump(exclude={"topics"})


SEGMENT_FUNNEL = """
name: shop
conversion_window: 2h
window: 10m
stages:
  - {name: viewed, event_type: Product Viewed, where: {category: shoes}}
  - {name: added, event_type: Product Added}
  - {name: checkout, event_type: Checkout Started, timeout: 30m}
  - {name: ordered, event_type: Order Completed}
segments:
  locale: {source: context.locale, cap: 4}
abandonment: [added, checkout]
"""


def segment_traffic() -> list[dict[str, Any]]:
    """Sessions made of the Segment example's calls: 240 anonymous visitors, each stopping at
    a stage of its own, with three locales and two categories, a few seconds to hours apart."""
    example = [orjson.loads(line) for line in SEGMENT_EXAMPLE.read_bytes().splitlines()]
    start = datetime(2026, 11, 22, 8, 0, tzinfo=UTC).timestamp()
    documents = []
    for visitor in range(240):
        stop = 3 + visitor % 6  # 3..8 of the 8 calls
        gap = 5 + (visitor * 37) % 900  # seconds between calls: some steps time out
        for index, call in enumerate(example[:stop]):
            document = json.loads(json.dumps(call))
            at = datetime.fromtimestamp(start + visitor * 41 + index * gap, tz=UTC)
            document["timestamp"] = document["sentAt"] = at.isoformat().replace("+00:00", "Z")
            document["messageId"] = f"m-{visitor}-{index}"
            document["anonymousId"] = f"anon-{visitor}"
            document["context"]["locale"] = ("de-DE", "en-GB", "fr-FR")[visitor % 3]
            if document.get("event") == "Product Viewed" and visitor % 4 == 0:
                document["properties"]["category"] = "bags"
            documents.append(document)
    return sorted(documents, key=lambda d: (d["timestamp"], d["messageId"]))


def test_segment_traffic_through_the_preset_gives_the_oracles_numbers(tmp_path: Path) -> None:
    documents = segment_traffic()
    path = write_jsonl(tmp_path / "segment.jsonl", documents)
    funnel_path = tmp_path / "shop.yaml"
    funnel_path.write_text(SEGMENT_FUNNEL)
    start, end = "2026-11-22T08:00Z", "2026-11-22T16:00Z"
    common = ("--plan", "preset:segment", "--funnels", funnel_path, "--from", start, "--to", end)
    result, text, _ = report(path, *common)
    assert result.events.in_range == len(documents)
    assert result.events.rejected == result.events.ignored == 0
    plan = compile_plan(load_plan("preset:segment"))
    rows = oracle_rows(plan, path.read_bytes().splitlines(), start, end)
    assert_equals_oracle(result, load_funnel(funnel_path), rows, end)
    stages = {s.stage: s for s in result.funnels[0].totals.stages}
    assert stages["viewed"].entered == 180  # the bags views are filtered out
    assert stages["added"].dropped > 0
    assert stages["ordered"].entered > 0
    assert report(path, *common)[1] == text
    # The example file itself, as it is in the repository.
    example, _, _ = report(SEGMENT_EXAMPLE, *common)
    assert example.events.in_range == 8
    assert example.funnels[0].totals.stages[0].entered == 1


def test_bad_lines_are_counted_and_named_never_raised(tmp_path: Path) -> None:
    rows = by_time(otto_rows())[:50]
    lines = [orjson.dumps(row) for row in rows]
    lines[3] = lines[3][:20]  # truncated
    lines[7] = b"\xff\xfe not utf-8"
    lines[9] = orjson.dumps(
        {**rows[9], "ts": rows[9]["ts"] / 1000}
    )  # seconds where ms are declared
    lines[11] = orjson.dumps({**rows[11], "type": "wishlist"})  # unplanned: dead_letter
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    args = ("--plan", OTTO_PLAN, "--funnels", OTTO_FUNNEL, "--from", OTTO_FROM, "--to", OTTO_TO)
    result, _, stderr = report(path, *args)
    assert result.events.read == 50
    assert result.events.rejected == 3
    assert result.events.out_of_range == 1  # read as milliseconds: January 1970
    assert result.events.in_range == 46
    assert f"{path}:4: not_json" in stderr
    assert f"{path}:8: not_utf8" in stderr
    assert f"{path}:12: unknown_event_type" in stderr


def test_file_errors_are_one_line_naming_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("id,session,ts,type\n1,s,1659304800025,clicks,extra\n")
    args = ("--plan", OTTO_PLAN, "--funnels", OTTO_FUNNEL, "--from", OTTO_FROM, "--to", OTTO_TO)
    result = CliRunner().invoke(cli, ["report", str(path), *map(str, args)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == f"error: {path}:2: 5 cells, the header has 4"
    mapped = CliRunner().invoke(
        cli, ["report", str(path), *map(str, args), "--column", "aid=article"]
    )
    assert mapped.exit_code == 2
    assert f"error: {path}:1: --column maps 'article', which the header" in mapped.stderr


def test_streamers_own_events_need_no_plan(tmp_path: Path) -> None:
    """No --plan and no STREAMER_TRACKING_PLAN: streamer's own contract (preset:streamer)."""
    examples = sorted((ROOT / "schemas/examples").glob("*.json"))
    documents = [orjson.loads(p.read_bytes()) for p in examples]
    events = [d for d in documents if "event_type" in d and "occurred_at" in d]
    assert len(events) == 12
    path = write_jsonl(tmp_path / "events.jsonl", sorted(events, key=lambda d: d["occurred_at"]))
    funnels = ROOT / "deploy/funnels/checkout.yaml"
    args = (path, "--funnels", funnels, "--from", "2026-11-22T09:00Z", "--to", "2026-11-22T10:00Z")
    result, _, stderr = report(*args)
    assert result.events.in_range == 12
    assert result.events.rejected == 0
    assert "through preset:streamer" in stderr
    stages = {s.stage: s.entered for s in result.funnels[0].totals.stages}
    assert stages["landing"] == 1


EVERY_MODE = {
    "otto_strict": "order: strict\nstages: [{name: click, event_types: [clicks]}, "
    "{name: cart, event_types: [carts]}, {name: order, event_types: [orders]}]\n"
    "abandonment: [cart]",
    "otto_unordered": "order: unordered\nstages: [{name: click, event_types: [clicks]}, "
    "{name: cart, event_types: [carts]}, {name: order, event_types: [orders]}]",
    "otto_excluding": "stages: [{name: click, event_types: [clicks]}, "
    "{name: order, event_types: [orders]}]\nexclusions: [{event_type: carts}]",
    "otto_optional": "stages: [{name: click, event_types: [clicks]}, "
    "{name: cart, event_types: [carts], optional: true}, {name: order, event_types: [orders]}]\n"
    "abandonment: [cart]",
    "otto_uniques": "uniques: true\nstages: [{name: click, event_types: [clicks]}, "
    "{name: cart, event_types: [carts]}, {name: order, event_types: [orders]}]",
    "otto_first_cart": "stages: [{name: click, event_types: [clicks]}, "
    "{name: cart, event_types: [carts], first_time: true}, {name: order, event_types: [orders]}]",
}


def test_a_file_gives_the_oracles_numbers_in_every_mode(tmp_path: Path) -> None:
    """Issue 29 item 13: strict, unordered, exclusion, optional-step, uniques and first-time
    funnels over one export (the OTTO sample), each equal to the SQL oracle (units included),
    final at the end and open in the middle."""
    folder = tmp_path / "funnels"
    folder.mkdir()
    for name, body in EVERY_MODE.items():
        (folder / f"{name}.yaml").write_text(
            f"name: {name}\nconversion_window: 30d\nstep_timeout: 2d\nwindow: 1h\n{body}\n"
        )
    funnels = {name: load_funnel(folder / f"{name}.yaml") for name in EVERY_MODE}
    path = write_jsonl(tmp_path / "otto.jsonl", by_time(otto_rows()))
    lines = path.read_bytes().splitlines()
    plan = compile_plan(load_plan(OTTO_PLAN))
    for end in (OTTO_TO, "2022-08-10T00:00Z"):
        result, _, _ = report(path, "--plan", OTTO_PLAN, "--funnels", folder,
                              "--from", OTTO_FROM, "--to", end)  # fmt: skip
        assert result.events.late == result.events.rejected == 0
        rows = oracle_rows(plan, lines, OTTO_FROM, end)
        assert {f.funnel for f in result.funnels} == set(EVERY_MODE)
        for replayed in result.funnels:
            one = result.model_copy(update={"funnels": [replayed]})
            assert_equals_oracle(one, funnels[replayed.funnel], rows, end)
        totals = {f.funnel: f.totals.stages for f in result.funnels}
        by_name = {f.funnel: f for f in result.funnels}
        # Each mode's own rule acted on this data: an exclusion excluded, a strict break
        # dropped, an optional stage was skipped (more went on from click than reached cart).
        assert totals["otto_excluding"][0].excluded > 0
        assert totals["otto_strict"][0].dropped > 0
        optional = totals["otto_optional"]
        assert optional[0].converted > optional[1].entered
        # Units (equal to the oracle's above) only where the funnel counts them.
        assert all(s.units is not None for w in by_name["otto_uniques"].windows for s in w.stages)
        assert all(s.units is None for s in totals["otto_strict"])
    assert sum(s.open for s in totals["otto_unordered"]) > 0  # the middle: open attempts
