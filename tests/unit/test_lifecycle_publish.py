"""Published lifecycle figures (docs/lifecycle.md, "Published"): a unit partition's record
replaces its previous one at the merger (never adds to it), a late copy from an older owner is
kept out, the partitions are summed, the sum survives a reset of the merger (a rebalance), and
the gauges show it within their bounds: all equal to the SQL oracle's figures over the same
events (the oracle is independent of the core; the core's own test checks it against it)."""

from __future__ import annotations

import random
import zlib
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streamer.funnel.definition import load_funnel
from streamer.funnel.lifecycle import Lifecycle
from streamer.metrics import Metrics
from streamer.pipeline.merger import WindowMerger
from streamer.pipeline.sessions.records import lifecycle_record
from streamer.schemas import EXAMPLES
from tests.oracle.lifecycle import FIRST_PURCHASE_BOUNDS_MS, lifecycle_figures
from tests.support.lifecycle_records import (
    count_diff,
    expected_gauges,
    gauge_diff,
    latest_records,
    lifecycle_gauges,
    merged_counts,
    oracle_counts,
    summed_records,
)
from tests.support.traffic import generate_lifecycle
from tests.unit.test_lifecycle import SHIPPED, START_MS, _stored, worked_example

FUNNEL = load_funnel(SHIPPED)
DECLARATION = FUNNEL.lifecycle
assert DECLARATION is not None
PARTITIONS = 3


def _partition(unit: str) -> int:
    return zlib.crc32(unit.encode()) % PARTITIONS


class Partition:
    """One unit partition's lifecycle core and what it publishes, as a unit task does."""

    def __init__(self, partition: int, events: list[dict[str, Any]]) -> None:
        self.partition = partition
        self.events = [e for e in events if _partition(e["unit"]) == partition]
        self.position = 0
        self.generation = 1
        self.core = Lifecycle(DECLARATION)

    def run_to(self, watermark_ms: int) -> None:
        while self.position < len(self.events) and self.events[self.position]["at_ms"] < (
            watermark_ms
        ):
            event = self.events[self.position]
            self.core.apply(event["unit"], _stored(event, DECLARATION))
            self.position += 1
        self.core.advance(watermark_ms)

    def restart_from_scratch(self) -> None:
        """A new owner whose checkpoint is the beginning: its figures start again."""
        self.generation += 1
        self.position = 0
        self.core = Lifecycle(DECLARATION)

    def record(self) -> bytes:
        version = [self.generation, self.position, self.core.watermark_ms]
        made = lifecycle_record(
            FUNNEL.name,
            self.core,
            partition=PARTITIONS + self.partition,  # unit tasks report as N..2N-1
            generation=self.generation,
            version=version,
        )
        return made.model_dump_json().encode()


def _merger(table: dict[str, bytes], registry: CollectorRegistry, weeks: int) -> WindowMerger:
    async def send(key: bytes | None, value: bytes) -> None:
        raise AssertionError("a lifecycle record publishes no window")

    return WindowMerger(
        funnels=(FUNNEL,),
        source_partitions=PARTITIONS,
        table=table,
        metrics=Metrics.create(registry, funnels=(FUNNEL,)),
        send_window=send,
        lifecycle_cohort_weeks=weeks,
    )


def _events(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = generate_lifecycle(seed=seed, users=400, days=120, start_ms=START_MS)
    events.sort(key=lambda e: (e["at_ms"], rng.random()))
    return events


def _merged(merger: WindowMerger) -> dict[str, Any]:
    total = merger.lifecycle.figures(FUNNEL.name)
    assert total is not None
    return merged_counts(total)


async def test_records_replace_per_partition_and_sum_to_the_oracle() -> None:
    events = _events(5)
    last_ms = events[-1]["at_ms"]
    cuts = [START_MS + 40 * 86_400_000, START_MS + 95 * 86_400_000, last_ms + 1]
    partitions = [Partition(p, events) for p in range(PARTITIONS)]
    table: dict[str, bytes] = {}
    registry = CollectorRegistry()
    merger = _merger(table, registry, weeks=26)
    sent: list[bytes] = []
    for cut in cuts:
        for part in partitions:
            part.run_to(cut)
            sent.append(part.record())
            await merger.process(sent[-1])
        want = oracle_counts(lifecycle_figures(events, DECLARATION, cut))
        # Three records per partition by now: added up they would count everyone again.
        assert count_diff(_merged(merger), want) == [], f"at {cut}"
        assert count_diff(summed_records(latest_records(sent).values()), want) == []
    final = _merged(merger)
    assert sum(b[0] for b in final["buyers"].values()) > 100
    assert sum(b[3] for b in final["buyers"].values()) > 0  # churn reached

    # A late copy of an older record (a previous owner's, delivered after): kept out.
    late = registry.get_sample_value("streamer_window_partials_superseded_total") or 0.0
    await merger.process(sent[0])
    assert count_diff(_merged(merger), final) == []
    assert registry.get_sample_value("streamer_window_partials_superseded_total") == late + 1

    # A new owner restored from an old checkpoint (here: the beginning) replaces the
    # partition's figures with its own, behind, until it catches up again.
    restarted = partitions[1]
    restarted.restart_from_scratch()
    restarted.run_to(cuts[0])
    await merger.process(restarted.record())
    behind = summed_records(
        [orjson.loads(p.record()) for p in partitions]  # partition 1 at cuts[0] now
    )
    assert count_diff(_merged(merger), behind) == []
    assert count_diff(_merged(merger), final) != []
    restarted.run_to(cuts[-1])
    await merger.process(restarted.record())
    assert count_diff(_merged(merger), final) == []

    # The merger's view after a rebalance: rebuilt from its table alone.
    again = _merger(table, CollectorRegistry(), weeks=26)
    assert count_diff(_merged(again), final) == []


async def test_the_gauges_show_the_sum_within_their_bounds() -> None:
    events = _events(6)
    watermark = events[-1]["at_ms"] + 1
    registry = CollectorRegistry()
    weeks = 4
    merger = _merger({}, registry, weeks=weeks)
    for partition in range(PARTITIONS):
        part = Partition(partition, events)
        part.run_to(watermark)
        await merger.process(part.record())
    sql = oracle_counts(lifecycle_figures(events, DECLARATION, watermark))
    want = expected_gauges(
        sql, FUNNEL.name, DECLARATION.horizon_days, FIRST_PURCHASE_BOUNDS_MS, weeks
    )
    scraped = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }
    got = lifecycle_gauges(scraped, FUNNEL.name)
    assert gauge_diff(got, want) == []
    # Bounded: the newest weeks of each kind only, every channel of each.
    cohorts = {dict(labels)["cohort"] for name, labels in got if name.endswith("lifecycle_buyers")}
    assert len(cohorts) == weeks
    acquired = [labels for name, labels in got if name == "streamer_lifecycle_acquired_users"]
    assert weeks < len(acquired) < len(sql["acquisition"])

    # A worker that loses the merger (a rebalance) shows none until its next record.
    merger.reset()
    scraped_again = [s for m in registry.collect() for s in m.samples if "lifecycle" in s.name]
    assert scraped_again == []


def test_the_schema_example_is_the_worked_example() -> None:
    """schemas/examples/lifecycle.json is docs/lifecycle.md's worked example as the core
    publishes it, at a watermark past its last churn day and horizon."""
    example = EXAMPLES["lifecycle"]
    monday, feed = worked_example()
    core = Lifecycle(DECLARATION)
    for unit, event in feed:
        core.apply(unit, event)
    core.advance(example["version"][2])
    made = lifecycle_record(
        example["funnel"],
        core,
        partition=example["partition"],
        generation=example["generation"],
        version=example["version"],
    )
    assert made.model_dump(mode="json") == example
    assert made.buyer_cohorts[0].week_start.timestamp() * 1000 == monday
