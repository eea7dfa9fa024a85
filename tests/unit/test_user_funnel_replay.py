"""The replay engine with a user funnel (``follows: user``) beside a session funnel, without
Kafka: users on two devices whose sessions are on different inputs, offered in any
interleaving, give the SQL oracle's numbers for both funnels (at the end of the data, every
window final, and at a cut inside it, units still open), and the same report every time; so
does `streamer report` over an export of the same traffic.

The engine counts user funnels as the worker does (docs/decisions/0008-user-funnels-pipeline.md):
its session task forwards what it releases to a unit task, in process."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from streamer.cli import cli
from streamer.events import ReplayReport
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.range_replay import RangeReplay
from tests.oracle import OracleResult, compute
from tests.support.compare import assert_replay_equals_oracle
from tests.support.traffic import (
    Dataset,
    at_ms,
    generate_users,
    oracle_event,
    partition_of,
    product_cart_order_yaml,
    users_across_partitions,
)

INPUTS = 4


@cache
def dataset() -> Dataset:
    return generate_users(
        seed=29, users=250, minutes=20, later_hours=(0.5, 1.5), closing_after_hours=1
    )


def funnels(tmp_path: Path) -> tuple[FunnelDefinition, ...]:
    """The same stages followed by user and by session: each task's funnel list differs."""
    for name, by_user in (("by_session", False), ("by_user", True)):
        text = product_cart_order_yaml(name, by_user=by_user, conversion_window="2h")
        (tmp_path / f"{name}.yaml").write_text(text)
    return load_funnel(tmp_path / "by_session.yaml"), load_funnel(tmp_path / "by_user.yaml")


def inputs() -> dict[str, list[dict[str, Any]]]:
    """The arrivals split into inputs as a producer keying by session splits them."""
    split: dict[str, list[dict[str, Any]]] = {f"clickstream/{p}": [] for p in range(INPUTS)}
    for event in dataset().arrivals:
        split[f"clickstream/{partition_of(event['session_id'], INPUTS)}"].append(event)
    return split


def the_range() -> tuple[datetime, datetime, datetime]:
    """(from, a cut inside the data, past its end), on hour boundaries."""
    first = min(at_ms(e) for e in dataset().arrivals)
    last = max(at_ms(e) for e in dataset().arrivals)
    start = datetime.fromtimestamp(first // 3_600_000 * 3600, UTC)
    past = datetime.fromtimestamp((last // 3_600_000 + 1) * 3600, UTC)
    return start, start + timedelta(hours=1), past


def replay(
    definitions: tuple[FunnelDefinition, ...], end: datetime, seed: int, drain: bool = False
) -> RangeReplay:
    """Offer the inputs interleaved at random (each in its own arrival order) to the end."""
    start, _, _ = the_range()
    engine = RangeReplay(
        definitions,
        start=start,
        end=end,
        inputs=list(inputs()),
        allowed_lateness_ms=120_000,
        retention_ms=3_600_000,
        partitions=INPUTS,
        drain=drain,
    )
    received = datetime.now(UTC)  # after every generated event: none is from the future
    rng = random.Random(seed)
    pending = {name: list(events) for name, events in inputs().items()}
    while pending:
        name = rng.choice(sorted(pending))
        engine.offer(name, "clickstream", orjson.dumps(pending[name].pop(0)), received)
        if not pending[name]:
            del pending[name]
            engine.finish(name)
        engine.advance()
    return engine


def test_a_user_funnel_replayed_gives_the_oracles_numbers_beside_a_session_funnel(
    tmp_path: Path,
) -> None:
    definitions = funnels(tmp_path)
    start, cut, past = the_range()
    assert users_across_partitions(dataset(), INPUTS) > 100  # the hop is needed
    # Past the data's end, drained (every window final), and at a cut inside it.
    for end, drain in ((past, True), (cut, False)):
        engine = replay(definitions, end, seed=1, drain=drain)
        report = engine.report()
        low, high = round(start.timestamp() * 1000), round(end.timestamp() * 1000)
        rows = [e for e in map(oracle_event, dataset().arrivals) if low <= e["at_ms"] < high]
        assert report.events.late == report.events.rejected == 0
        replayed = {f.funnel: f for f in report.funnels}
        for definition in definitions:
            expected = compute([definition], rows, engine.until_ms)
            assert_replay_equals_oracle(replayed[definition.name], definition, expected)
        by_user = {s.stage: s for s in replayed["by_user"].totals.stages}
        assert by_user["cart"].converted > 0
        if drain:
            assert all(w.final for w in replayed["by_user"].windows)
            assert sum(a.abandoned for a in replayed["by_user"].abandonments) > 0
        else:
            assert sum(s.open for s in by_user.values()) > 0, "units still open at the cut"


def test_drained_at_a_cut_counts_the_later_sessions_of_open_units_as_live(
    tmp_path: Path,
) -> None:
    """`--drain` with `--to` inside the data: the windows before the cut are decided by every
    later event, a user's sessions that start after the cut (another device) included, so
    they equal the oracle's over all the data, cohorts before the cut (what live counts)."""
    definitions = funnels(tmp_path)
    start, cut, _ = the_range()
    engine = replay(definitions, cut, seed=3, drain=True)
    report = engine.report()
    low, high = round(start.timestamp() * 1000), round(cut.timestamp() * 1000)
    rows = [e for e in map(oracle_event, dataset().arrivals) if low <= e["at_ms"] < engine.until_ms]
    later_sessions = {e["session_id"] for e in rows if e["at_ms"] >= high} - {
        e["session_id"] for e in rows if e["at_ms"] < high
    }
    later_users = {e["user_id"] for e in rows if e["session_id"] in later_sessions}
    earlier_users = {e["user_id"] for e in rows if e["at_ms"] < high}
    assert later_users & earlier_users - {None}, "no user goes on in a session after the cut"
    replayed = {f.funnel: f for f in report.funnels}
    for definition in definitions:
        full = compute([definition], rows, engine.until_ms)
        expected = OracleResult(
            windows={k: v for k, v in full.windows.items() if k[1] < high},
            segments={k: v for k, v in full.segments.items() if k[1] < high},
            abandonments={
                k: v
                for k, v in full.abandonments.items()
                if v["attempt_ms"] // definition.window_ms * definition.window_ms < high
            },
        )
        assert_replay_equals_oracle(replayed[definition.name], definition, expected)
    assert all(w.final for w in replayed["by_user"].windows)


def test_any_interleaving_gives_the_same_user_funnel_report(tmp_path: Path) -> None:
    definitions = funnels(tmp_path)
    _, cut, _ = the_range()
    first = replay(definitions, cut, seed=1).report().model_dump_json()
    assert replay(definitions, cut, seed=2).report().model_dump_json() == first


def test_streamer_report_of_a_user_funnel_gives_the_oracles_numbers_byte_identical_twice(
    tmp_path: Path,
) -> None:
    """`streamer report` over an export of the same traffic (one file, in arrival order)."""
    folder = tmp_path / "funnels"
    folder.mkdir()
    definitions = funnels(folder)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in dataset().arrivals))
    start, cut, _ = the_range()
    args = ["report", str(path), "--funnels", str(folder)]
    args += ["--from", start.isoformat(), "--to", cut.isoformat()]
    outputs = [CliRunner().invoke(cli, args) for _ in range(2)]
    assert all(o.exit_code == 0 for o in outputs), outputs[0].output
    assert outputs[0].stdout == outputs[1].stdout
    report = ReplayReport.model_validate_json(outputs[0].stdout)
    assert report.events.late == report.events.rejected == 0
    low, high = round(start.timestamp() * 1000), round(cut.timestamp() * 1000)
    rows = [e for e in map(oracle_event, dataset().arrivals) if low <= e["at_ms"] < high]
    replayed = {f.funnel: f for f in report.funnels}
    for definition in definitions:
        expected = compute([definition], rows, high)
        assert_replay_equals_oracle(replayed[definition.name], definition, expected)
