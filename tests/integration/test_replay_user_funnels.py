"""`streamer replay` of a user funnel (``follows: user``) on the real broker, default settings:
users on two devices whose sessions the producers' keys put on different partitions, replayed
from the input topics beside a session funnel of the same stages. Both funnels equal the SQL
oracle (every window decided with ``--drain``, and at a cut inside the data with units still
open), and the same range replayed again, by the library or the command, gives the same
report byte for byte.

The replay counts a user funnel as the worker does, its unit task fed by the session task in
process (docs/decisions/0008-user-funnels-pipeline.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path

import pytest

from streamer.app import topic_plan
from streamer.events import ReplayReport
from streamer.funnel.definition import FunnelDefinition, load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.range_replay import replay_range
from streamer.settings import Settings
from streamer.testing import produce
from tests.oracle import compute
from tests.support.alert_pipeline import cli
from tests.support.compare import assert_replay_equals_oracle
from tests.support.traffic import (
    Dataset,
    at_ms,
    generate_users,
    oracle_event,
    product_cart_order_yaml,
    users_across_partitions,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


@cache
def dataset() -> Dataset:
    return generate_users(
        seed=2912, users=600, minutes=20, later_hours=(0.5, 1.5), closing_after_hours=1
    )


def funnels(folder: Path) -> tuple[FunnelDefinition, ...]:
    folder.mkdir()
    for name, by_user in (("by_session", False), ("by_user", True)):
        text = product_cart_order_yaml(name, by_user=by_user, conversion_window="2h")
        (folder / f"{name}.yaml").write_text(text)
    return load_funnel(folder / "by_session.yaml"), load_funnel(folder / "by_user.yaml")


def hour_of(moment_ms: int) -> datetime:
    return datetime.fromtimestamp(moment_ms // 3_600_000 * 3600, UTC)


def assert_equals_oracle(
    report: ReplayReport, definitions: tuple[FunnelDefinition, ...], watermark_ms: int
) -> None:
    """Both funnels of ``report`` against the oracle over the events of its range."""
    low, high = (round(t.timestamp() * 1000) for t in (report.range_from, report.range_to))
    rows = [e for e in map(oracle_event, dataset().arrivals) if low <= e["at_ms"] < high]
    replayed = {f.funnel: f for f in report.funnels}
    for definition in definitions:
        expected = compute([definition], rows, watermark_ms)
        assert expected.windows, f"{definition.name}: nothing to compare"
        assert_replay_equals_oracle(replayed[definition.name], definition, expected)


async def test_a_user_funnel_replayed_from_kafka_equals_the_oracle_and_again_the_same(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "funnels"
    definitions = funnels(folder)
    config = settings.model_copy(update={"topic_partitions": PARTITIONS, "funnels": (folder,)})
    data = dataset()
    across = users_across_partitions(data, PARTITIONS)
    assert across >= 250, f"only {across} users have sessions on two partitions"
    await ensure_topic_plan(config, topic_plan(config, definitions))
    await produce(config, data.messages(config))
    first = min(at_ms(e) for e in data.arrivals)
    last = max(at_ms(e) for e in data.arrivals)
    start, cut = hour_of(first), hour_of(first) + timedelta(hours=1)
    past = hour_of(last) + timedelta(hours=1)

    drained = await replay_range(config, definitions, start, past, run_info=False, drain=True)
    assert drained.drained_to is not None
    assert drained.events.in_range == len({e["event_id"] for e in data.arrivals})
    assert drained.events.late == drained.events.rejected == 0
    assert_equals_oracle(drained, definitions, round(drained.drained_to.timestamp() * 1000))
    [by_user] = [f for f in drained.funnels if f.funnel == "by_user"]
    assert all(window.final for window in by_user.windows)
    assert sum(a.abandoned for a in by_user.abandonments) > 0

    at_cut = await replay_range(config, definitions, start, cut, run_info=False)
    assert_equals_oracle(at_cut, definitions, round(cut.timestamp() * 1000))
    [open_at_cut] = [f for f in at_cut.funnels if f.funnel == "by_user"]
    assert sum(stage.open for stage in open_at_cut.totals.stages) > 0

    # The same range again, by the library and by the command: the same report.
    again = await replay_range(config, definitions, start, cut, run_info=False)
    assert again.model_dump_json() == at_cut.model_dump_json()
    command = cli(config, "replay", "--from", start.isoformat(), "--to", cut.isoformat(),
                  "--no-run-info")  # fmt: skip
    assert json.loads(command) == json.loads(at_cut.model_dump_json())
    assert cli(config, "replay", "--from", start.isoformat(), "--to", cut.isoformat(),
               "--no-run-info") == command  # fmt: skip
    # Read-only: the replays wrote nothing (no units topic record, no window).
    for topic in (config.units_topic, config.windows_topic, config.partials_topic):
        assert await read_topic(config, topic) == []
    stages = {s.stage: s for s in by_user.totals.stages}
    print(
        f"\nuser funnel replay: {len(data.arrivals)} messages, {across} users on two "
        f"partitions; drained: {len(by_user.windows)} windows, "
        + ", ".join(f"{n} {s.entered}/{s.converted}" for n, s in stages.items())
        + f"; at the cut: {sum(s.open for s in open_at_cut.totals.stages)} open"
    )
