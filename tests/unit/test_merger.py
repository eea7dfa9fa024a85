"""The window merger on a plain dict table: partials replace by version, a window is published
final once every partition's progress is past its finality, revisions are rate-limited, and
its in-memory view is rebuilt from the table after a reset (a rebalance)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from streamer.cli.funnels import print_summary
from streamer.funnel.definition import FunnelDefinition, Segment, Survey, load_funnel
from streamer.funnel.session import NEVER, Kind, Outcome
from streamer.funnel.windows import LOOKS_PER_WINDOW, WindowCounts, look_ms
from streamer.metrics import Metrics
from streamer.pipeline.merger import (
    REVISION_INTERVAL_S,
    REVISIONS_PER_WINDOW,
    JudgeFn,
    WindowMerger,
    revision_period_ms,
)
from streamer.query import FunnelView
from tests.support.stage_harness import CHECKOUT

FUNNEL = load_funnel(CHECKOUT)
START = 1_700_000_040_000 - 1_700_000_040_000 % FUNNEL.window_ms


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def partial(partition: int, entered: int, version: list[int], excluded: int = 0) -> bytes:
    counts = WindowCounts.empty(len(FUNNEL.stages))
    for _ in range(entered):
        counts.apply(Outcome(Kind.ENTERED, 0, START, START, (None,) * len(FUNNEL.segments)))
    for _ in range(excluded):
        counts.apply(Outcome(Kind.EXCLUDED, 0, START, START, (None,) * len(FUNNEL.segments)))
    record: dict[str, Any] = {
        "kind": "partial",
        "funnel": FUNNEL.name,
        "start": START,
        "end": START + FUNNEL.window_ms,
        "partition": partition,
        "counts": counts.to_json(),
        "version": version,
    }
    return orjson.dumps(record)


def progress(partition: int, watermark: int) -> bytes:
    return orjson.dumps({"kind": "progress", "partition": partition, "watermark": watermark})


def merger(
    table: dict[str, bytes],
    clock: Clock,
    judge: JudgeFn | None = None,
    on_send: Callable[[], None] = lambda: None,
    registry: CollectorRegistry | None = None,
    funnel: FunnelDefinition = FUNNEL,
) -> tuple[WindowMerger, list[bytes]]:
    sent: list[bytes] = []

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append(value)
        on_send()

    made = WindowMerger(
        funnels=(funnel,),
        source_partitions=2,
        table=table,
        metrics=Metrics.create(registry or CollectorRegistry(), funnels=(funnel,)),
        send_window=send,
        monotonic=clock,
        judge=judge,
    )
    return made, sent


FINAL_AT = START + FUNNEL.window_ms + FUNNEL.finality_lag_ms


async def test_final_once_every_partition_is_past_finality_with_the_newest_partials() -> None:
    table: dict[str, bytes] = {}
    clock = Clock()
    merge, sent = merger(table, clock)
    await merge.process(partial(0, 3, [1, 10, 0]))
    await merge.process(partial(0, 5, [1, 20, 0]))  # replaces the first
    await merge.process(partial(0, 4, [1, 15, 0]))  # older view of partition 0: ignored
    await merge.process(partial(1, 2, [7, 3, 0]))
    assert await merge.process(progress(0, FINAL_AT)) != []  # a revision (not final)
    revision = orjson.loads(sent[-1])
    assert (revision["final"], revision["stages"][0]["entered"]) == (False, 7)
    assert await merge.process(progress(0, FINAL_AT)) == []  # nothing new: nothing sent
    final = await merge.process(progress(1, FINAL_AT))
    assert [(w.final, w.stages[0].entered, w.revision) for w in final] == [(True, 7, 1)]
    assert not any(key.startswith(("pending:", "part:")) for key in table)
    await merge.process(partial(1, 9, [8, 0, 0]))  # a re-send after a restart: already final
    assert await merge.process(progress(1, FINAL_AT + 1)) == []


async def test_a_window_with_answers_and_no_stage_entry_is_published_with_them() -> None:
    """Answers count in the window of their own time, after their stage's: the last minute
    of traffic (answers given 20 s after a session's last event) or a survey sent later holds
    answers and no stage entry. Its final record carries them (it is not input volume)."""
    surveyed = FUNNEL.model_copy(
        update={
            "surveys": (
                Survey(name="review", event_type="review_submitted", score="rating", kind="csat"),
            )
        }
    )
    order = len(FUNNEL.stages) - 1
    counts = WindowCounts.empty(len(FUNNEL.stages))
    counts.volume[("clickstream", "review_submitted")] = 1
    segments = ("ios", "paid_search", "FR", "card")  # device, channel, country, payment
    answer = Outcome(Kind.ANSWERED, order, START, START, segments, 0, 4.0)
    counts.apply(answer)
    record = {"kind": "partial", "funnel": FUNNEL.name, "start": START,
              "end": START + FUNNEL.window_ms, "partition": 0, "counts": counts.to_json(),
              "version": [1, 1, 0]}  # fmt: skip
    table: dict[str, bytes] = {}
    merge, _ = merger(table, Clock(), funnel=surveyed)
    await merge.process(orjson.dumps(record))
    await merge.process(progress(1, FINAL_AT))
    [final] = await merge.process(progress(0, FINAL_AT))
    assert final.final
    assert all(stage.entered == 0 for stage in final.stages)
    assert [
        (a.stage, a.dimension, a.value, a.answers, a.distribution["4"]) for a in final.answers
    ] == [
        ("order", None, None, 1, 1),
        ("order", "device", "ios", 1, 1),
        ("order", "channel", "paid_search", 1, 1),
        ("order", "country", "FR", 1, 1),
        ("order", "payment_method", "card", 1, 1),
    ]
    assert not any(key.startswith(("pending:", "part:")) for key in table)


async def test_revisions_at_most_once_per_interval() -> None:
    table: dict[str, bytes] = {}
    clock = Clock()
    merge, sent = merger(table, clock)
    await merge.process(partial(0, 1, [1, 1, 0]))
    await merge.process(progress(0, START))
    assert len(sent) == 1
    await merge.process(partial(0, 2, [1, 2, 0]))
    await merge.process(progress(0, START + 1))
    clock.now += REVISION_INTERVAL_S - 0.1
    await merge.process(progress(0, START + 2))
    assert len(sent) == 1  # changed, but revised less than an interval ago
    clock.now += 0.1
    await merge.process(progress(1, START))
    assert len(sent) == 2
    assert orjson.loads(sent[-1])["stages"][0]["entered"] == 2


async def test_a_reset_rebuilds_the_view_from_the_table() -> None:
    table: dict[str, bytes] = {}
    clock = Clock()
    first, _ = merger(table, clock)
    await first.process(partial(0, 3, [1, 1, 0]))
    await first.process(partial(1, 4, [1, 1, 0]))
    await first.process(progress(0, START))
    second, sent = merger(table, clock)  # another worker took the partition over
    second.reset()
    final = await second.process(progress(1, FINAL_AT))
    assert final == []
    assert sent == []
    final = await second.process(progress(0, FINAL_AT))
    # The revision number goes on from the table's (the first merger published revision 0).
    assert [(w.final, w.stages[0].entered, w.revision) for w in final] == [(True, 7, 1)]


async def test_each_partial_is_stored_once_as_received_not_the_whole_window_again() -> None:
    table: dict[str, bytes] = {}
    merge, _ = merger(table, Clock())
    first, second = partial(0, 3, [1, 1, 0]), partial(1, 4, [1, 1, 0])
    await merge.process(first)
    await merge.process(second)
    window = f"{FUNNEL.name}:{START:015d}"
    assert table[f"part:{window}:0"] == first
    assert table[f"part:{window}:1"] == second
    newer = partial(0, 5, [1, 2, 0])
    await merge.process(newer)
    assert table[f"part:{window}:0"] == newer
    assert not any(key.startswith("pending:") for key in table)  # no revision published yet


async def test_a_table_written_before_partials_had_records_of_their_own_is_read() -> None:
    # The earlier layout: one record per window with every partition's counts in it.
    counts = [orjson.loads(partial(p, n, [1, 1, 0]))["counts"] for p, n in ((0, 3), (1, 4))]
    window = f"{FUNNEL.name}:{START:015d}"
    table: dict[str, bytes] = {
        f"pending:{window}": orjson.dumps(
            {
                "start": START,
                "parts": {"0": counts[0], "1": counts[1]},
                "versions": {"0": [1, 1, 0], "1": [1, 1, 0]},
                "revision": 2,
            }
        )
    }
    merge, _ = merger(table, Clock())
    await merge.process(partial(1, 6, [1, 0, 0]))  # older than the stored view: ignored
    await merge.process(progress(0, FINAL_AT))
    final = await merge.process(progress(1, FINAL_AT))
    assert [(w.final, w.stages[0].entered, w.revision) for w in final] == [(True, 7, 3)]
    assert not any(key.startswith(("pending:", "part:")) for key in table)


async def test_the_funnel_view_shows_open_sessions_until_the_final_record() -> None:
    table: dict[str, bytes] = {}
    merge, _ = merger(table, Clock())
    await merge.process(partial(0, 3, [1, 1, 0]))
    await merge.process(partial(1, 4, [1, 1, 0]))
    view = FunnelView()
    for stats in await merge.process(progress(0, START)):
        view.add(stats)
    shown = view.summary()[FUNNEL.name]["last_window"]
    assert shown["final"] is False
    assert shown["stages"][0]["open"] == 7  # entered, neither converted nor dropped yet
    await merge.process(progress(1, FINAL_AT))
    for stats in await merge.process(progress(0, FINAL_AT)):
        view.add(stats)
    assert view.summary()[FUNNEL.name]["last_window"]["final"] is True


async def test_excluded_attempts_are_published_counted_and_shown_beside_the_others(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The `excluded` outcome reaches the record, the Prometheus counter (once the window is
    final, as entered/converted/dropped), `/funnel` and `streamer funnel show`."""
    registry = CollectorRegistry()
    step = FUNNEL.step_names[0]
    labels = {"funnel": FUNNEL.name, "step": step}
    assert registry.get_sample_value("streamer_funnel_sessions_excluded_total", labels) is None
    merge, _ = merger({}, Clock(), registry=registry)
    assert registry.get_sample_value("streamer_funnel_sessions_excluded_total", labels) == 0
    await merge.process(partial(0, 5, [1, 1, 0], excluded=2))
    await merge.process(partial(1, 4, [1, 1, 0], excluded=1))
    await merge.process(progress(1, FINAL_AT))
    view = FunnelView()
    [stats] = await merge.process(progress(0, FINAL_AT))
    assert (stats.final, stats.stages[0].excluded) == (True, 3)
    view.add(stats)
    assert registry.get_sample_value("streamer_funnel_sessions_excluded_total", labels) == 3
    [row, *_] = view.summary()[FUNNEL.name]["last_window"]["stages"]
    assert (row["entered"], row["excluded"], row["open"]) == (9, 3, 6)
    print_summary(view.summary())
    header = next(line for line in capsys.readouterr().out.splitlines() if "excluded" in line)
    assert header.index("dropped") < header.index("excluded") < header.index("open")


async def test_the_detector_judges_every_look_once_with_the_merged_windows() -> None:
    table: dict[str, bytes] = {}
    calls: list[tuple[int, dict[int, int]]] = []

    async def judge(funnel: Any, watermarks: Sequence[int], windows: Any) -> None:
        entered = {s: c.stages[0].entered for s, c in windows.items()}
        calls.extend((watermark, entered) for watermark in watermarks)

    made, _ = merger(table, Clock(), judge)
    size, look = FUNNEL.window_ms, look_ms(FUNNEL.window_ms)
    assert size == LOOKS_PER_WINDOW * look
    await made.process(partial(0, 5, [1, 1, 0]))
    await made.process(partial(1, 2, [1, 1, 0]))
    await made.process(progress(0, START + 3 * size))
    assert calls == []  # partition 1 never reported: nothing is known yet
    await made.process(progress(1, START + 2 * size + 10))
    await made.process(progress(1, START + 2 * size + 20))  # same look: judged once
    await made.process(progress(1, START + 4 * size + 5))  # partition 0 holds it at 3
    # A first start judges from the end of the first window held, whatever the watermark
    # was when it first ran: the looks a replay of the same input judges (window boundaries
    # and the early looks between them).
    assert calls == [
        (watermark, {START: 7}) for watermark in range(START + size, START + 3 * size + 1, look)
    ]
    # After a rebalance (reset), the look judged last is remembered in the table.
    made.reset()
    await made.process(progress(0, START + 4 * size))
    assert [watermark for watermark, _ in calls[2 * LOOKS_PER_WINDOW + 1 :]] == list(
        range(START + 3 * size + look, START + 4 * size + 1, look)
    )


async def test_a_window_decided_between_two_boundaries_is_judged_final_before_it_goes() -> None:
    """5 s windows, 4 s timeouts: a window's cohorts are all decided 4 s after its end, between
    two boundaries; the detector judges on boundaries, so the merger keeps the window (and
    publishes it final) until the next one, where the detector reads it final once."""
    funnel = FunnelDefinition.model_validate({
        "name": "quick",
        "conversion_window": "1m",
        "window": "5s",
        "step_timeout": "4s",
        "stages": [{"name": "cart", "event_type": "add_to_cart"},
                   {"name": "order", "event_type": "order_placed"}],
    })  # fmt: skip
    start = START - START % 5_000
    seen: list[tuple[int, list[int]]] = []

    async def judge(judged: Any, watermarks: Sequence[int], windows: Any) -> None:
        seen.extend((watermark, sorted(windows)) for watermark in watermarks)

    sent: list[dict[str, Any]] = []

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append(orjson.loads(value))

    merge = WindowMerger(
        funnels=(funnel,),
        source_partitions=1,
        table={},
        metrics=Metrics.create(CollectorRegistry(), funnels=(funnel,)),
        send_window=send,
        monotonic=Clock(),
        judge=judge,
    )
    counts = WindowCounts.empty(2)
    counts.apply(Outcome(Kind.ENTERED, 0, start, start, ()))
    record = {"kind": "partial", "funnel": "quick", "start": start, "end": start + 5_000,
              "partition": 0, "counts": counts.to_json(), "version": [1, 1, 0]}  # fmt: skip
    await merge.process(orjson.dumps(record))
    await merge.process(progress(0, start + 9_500))  # decided at +9 s: no boundary yet
    assert not any(r["final"] for r in sent)
    await merge.process(progress(0, start + 10_000))
    assert seen[-1] == (start + 10_000, [start])  # read at the boundary where it is final
    assert [r["final"] for r in sent][-1:] == [True]  # then published final and let go
    await merge.process(progress(0, start + 15_000))
    assert seen[-1] == (start + 15_000, [])


def progress_of(partition: int, watermark: int, generation: int) -> bytes:
    record = {"kind": "progress", "partition": partition, "watermark": watermark}
    return orjson.dumps({**record, "generation": generation})


async def test_a_new_owners_progress_replaces_its_predecessors_even_when_behind() -> None:
    """A restarted partition resumes from its checkpoint, behind what its previous owner had
    reported: its windows are final only once it is past them again."""
    merge, sent = merger({}, Clock())
    await merge.process(progress_of(0, FINAL_AT + 60_000, generation=1))
    await merge.process(partial(0, 3, [2, 10, FINAL_AT - 60_000]))
    await merge.process(progress_of(0, FINAL_AT - 60_000, generation=2))  # the new owner
    await merge.process(progress_of(0, FINAL_AT + 90_000, generation=1))  # a late zombie
    assert await merge.process(progress_of(1, FINAL_AT, generation=1)) == []
    [published] = await merge.process(progress_of(0, FINAL_AT, generation=2))
    assert published.final
    assert published.stages[0].entered == 3
    assert [orjson.loads(value)["final"] for value in sent] == [False, True]  # a revision first


def start_of(partition: int, first_window: int) -> bytes:
    return orjson.dumps(
        {"kind": "start", "partition": partition, "funnel": FUNNEL.name, "from": first_window}
    )


async def test_an_added_funnel_starts_where_every_partition_counted_it_whole() -> None:
    """Partition 1 had the window final at its hand-over: never counted there. The funnel is
    held until both partitions took it up, and starts at the next window."""
    merge, sent = merger({}, Clock())
    await merge.process(start_of(0, START))
    await merge.process(partial(0, 3, [1, 10, START]))
    for partition in (0, 1):
        assert await merge.process(progress_of(partition, FINAL_AT, generation=1)) == []
    await merge.process(start_of(1, START + FUNNEL.window_ms))
    assert await merge.process(progress_of(0, FINAL_AT + 1, generation=1)) == []
    assert sent == []  # the window short of partition 1's sessions was dropped
    assert await merge.process(partial(0, 4, [1, 11, START])) == []  # and stays dropped


async def test_a_start_for_a_funnel_already_running_changes_nothing() -> None:
    """A partition with no checkpoint (it never had input) says so at every restart: for a
    funnel the merger runs already, that holds nothing back."""
    merge, _ = merger({}, Clock())
    for partition in (0, 1):
        await merge.process(start_of(partition, NEVER))  # a first start: whole from the start
    await merge.process(partial(0, 3, [1, 10, START]))
    await merge.process(progress_of(0, FINAL_AT, generation=1))
    await merge.process(start_of(1, NEVER))  # partition 1 restarts, still without input
    [published] = await merge.process(progress_of(1, FINAL_AT, generation=1))
    assert (published.final, published.stages[0].entered) == (True, 3)


async def test_a_reset_while_a_final_record_is_being_sent_loses_nothing() -> None:
    # A rebalance resets the merger while it awaits the broker in the middle of publishing.
    table: dict[str, bytes] = {}
    made: list[WindowMerger] = []
    merge, _ = merger(table, Clock(), on_send=lambda: made[0].reset())
    made.append(merge)
    await merge.process(partial(0, 3, [1, 1, 0]))
    await merge.process(partial(1, 4, [1, 1, 0]))
    await merge.process(progress(0, FINAL_AT))
    final = await merge.process(progress(1, FINAL_AT))
    assert [(w.final, w.stages[0].entered) for w in final] == [(True, 7)]
    assert not any(key.startswith(("pending:", "part:")) for key in table)
    assert await merge.process(progress(1, FINAL_AT + 1)) == []  # reloaded: nothing pending


class _JournalTable(dict[str, bytes]):
    """A table that notes its deletes in a journal shared with the sends."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    def __delitem__(self, key: str) -> None:
        self.journal.append(f"delete {key.split(':')[0]}")
        super().__delitem__(key)


async def test_a_final_record_is_on_the_broker_before_its_window_is_forgotten() -> None:
    journal: list[str] = []
    table = _JournalTable(journal)

    async def send(key: bytes | None, value: bytes) -> None:
        journal.append("final" if orjson.loads(value)["final"] else "revision")

    async def confirm() -> None:
        journal.append("confirmed")

    merge = WindowMerger(
        funnels=(FUNNEL,),
        source_partitions=2,
        table=table,
        metrics=Metrics.create(CollectorRegistry()),
        send_window=send,
        confirm_windows=confirm,
        monotonic=Clock(),
    )
    await merge.process(partial(0, 3, [1, 1, 0]))
    await merge.process(partial(1, 2, [1, 1, 0]))
    await merge.process(progress(0, FINAL_AT))
    journal.clear()
    await merge.process(progress(1, FINAL_AT))
    # Killed before the confirmation, the state still holds the window: published again.
    assert journal[:2] == ["final", "confirmed"]
    assert journal[2:]
    assert all(entry.startswith("delete") for entry in journal[2:])


async def test_a_multi_day_window_is_revised_once_an_hour_and_final_after_its_days() -> None:
    """docs/funnel-semantics.md, "Multi-day windows": a 14-day funnel's hourly window, changed
    at every progress record for 15 days of watermark (every 10 min, 6 s apart), is revised at
    most once per hour of watermark (REVISIONS_PER_WINDOW + 1 revisions in its life) and
    published final once the watermark is 14 days past its end, not before; the merger holds at
    most the windows whose cohorts can still change (1 + 14 days of hours, plus the newest)."""
    hour = 3_600_000
    fortnight = FunnelDefinition.model_validate(
        {"name": "fortnight", "follows": "user", "conversion_window": "14d", "window": "1h",
         "stages": [{"name": "visit", "event_type": "page_view"},
                    {"name": "order", "event_type": "order_placed"}]}
    )  # fmt: skip
    assert revision_period_ms(fortnight) == hour
    assert revision_period_ms(FUNNEL) == 0  # a session funnel: only the wall-clock interval
    start = START - START % hour
    final_at = start + hour + 14 * 24 * hour
    clock, sent = Clock(), []

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append(value)

    merge = WindowMerger(
        funnels=(fortnight,),
        source_partitions=1,
        table={},
        metrics=Metrics.create(CollectorRegistry()),
        send_window=send,
        monotonic=clock,
    )

    def changed(window_start: int, entered: int, step: int) -> bytes:
        counts = WindowCounts.empty(2)
        counts.stages[0].entered = entered
        return orjson.dumps({"kind": "partial", "funnel": "fortnight", "start": window_start,
                             "end": window_start + hour, "partition": 0,
                             "counts": counts.to_json(), "version": [1, step, 0]})  # fmt: skip

    watermark, ours, held = start, [], 0
    for step in range(1, 15 * 24 * 6 + 1):
        watermark += hour // 6
        clock.now += 6.0
        await merge.process(changed(start, step, step))  # the old window changes every time
        newest = watermark - watermark % hour
        await merge.process(changed(newest, step, step))  # and the newest one
        # A user funnel's windows wait for the unit tasks too (partitions N..2N-1).
        for partition in (0, 1):
            for stats in await merge.process(progress(partition, watermark)):
                if stats.window_id == f"fortnight/{start}":
                    ours.append((watermark, stats.final))
        held = max(held, len(merge._load()))
    revisions = [at for at, final in ours if not final]
    assert all(b - a >= hour for a, b in pairwise(revisions))
    assert len(revisions) <= REVISIONS_PER_WINDOW + 1
    finals = [at for at, final in ours if final]
    assert finals == [final_at]  # the first progress at or past it, and only once
    assert held <= 14 * 24 + 2


async def test_landing_bounce_is_counted_per_campaign_within_the_segments_cap() -> None:
    """A funnel with a utm_campaign segment (cap 2): each final window adds its first step's
    converted and dropped attempts per campaign to streamer_funnel_landing_outcomes_total; a
    third campaign folds into `other`, attempts without one are `unknown`."""
    campaign = Segment(name="utm_campaign", source="context.utm_campaign", cap=2)
    segments = (*FUNNEL.segments, campaign)
    funnel = FUNNEL.model_copy(update={"segments": segments})
    registry = CollectorRegistry()
    table: dict[str, bytes] = {}
    sent: list[bytes] = []

    async def send(key: bytes | None, value: bytes) -> None:
        sent.append(value)

    merge = WindowMerger(
        funnels=(funnel,),
        source_partitions=1,
        table=table,
        metrics=Metrics.create(registry, funnels=(funnel,)),
        send_window=send,
        monotonic=Clock(),
    )
    counts = WindowCounts.empty(len(funnel.stages))
    dims = len(funnel.segments) - 1
    # campaign -> (continued, bounced)
    planted = {"winter": (5, 1), "reels": (1, 4), "radio": (1, 0), None: (2, 2)}
    for value, (continued, bounced) in planted.items():
        segs = (None,) * dims + (value,)
        for kind, n in ((Kind.CONVERTED, continued), (Kind.DROPPED, bounced)):
            for _ in range(n):
                counts.apply(Outcome(Kind.ENTERED, 0, START, START, segs))
                counts.apply(Outcome(kind, 0, START, START + 1_000, segs))
    record = {
        "kind": "partial",
        "funnel": funnel.name,
        "start": START,
        "end": START + funnel.window_ms,
        "partition": 0,
        "counts": counts.to_json(),
        "version": [1, 1, 0],
    }
    await merge.process(orjson.dumps(record))
    [stats] = await merge.process(progress(0, FINAL_AT))
    assert stats.final

    def outcomes(value: str) -> list[float | None]:
        return [
            registry.get_sample_value(
                "streamer_funnel_landing_outcomes_total",
                {"funnel": funnel.name, "campaign": value, "outcome": outcome},
            )
            for outcome in ("continued", "bounced")
        ]

    # Ranked by entries: winter 6, reels 5, kept; radio's 1 folds into other.
    assert outcomes("winter") == [5, 1]
    assert outcomes("reels") == [1, 4]
    assert outcomes("other") == [1, 0]
    assert outcomes("unknown") == [2, 2]
    assert outcomes("radio") == [None, None]
