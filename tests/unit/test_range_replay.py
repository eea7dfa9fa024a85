"""The replay engine without Kafka: any interleaving of its inputs gives the same report, the
range's edges are exact, and ``--drain`` decides the sessions open at ``to`` with their own
later events while new sessions stay out."""

from __future__ import annotations

import random
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streamer.events import Alert, ReplayReport
from streamer.funnel.definition import load_funnel
from streamer.range_replay import RangeReplay, diff_reports
from streamer.schemas import EXAMPLES
from streamer.simulate import TrafficModel

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"
START = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
END = START + timedelta(minutes=20)
NOW = datetime(2026, 11, 29, tzinfo=UTC)


def engine(inputs: list[str], drain: bool = False) -> RangeReplay:
    return RangeReplay(
        (load_funnel(CHECKOUT),),
        start=START,
        end=END,
        inputs=inputs,
        allowed_lateness_ms=120_000,
        retention_ms=3_600_000,
        partitions=4,
        drain=drain,
    )


def offer(replay: RangeReplay, name: str, event: dict[str, Any]) -> None:
    topic = name.rsplit("/", 1)[0]
    replay.offer(name, topic, orjson.dumps(event), NOW)
    replay.advance()


def traffic() -> dict[str, list[dict[str, Any]]]:
    """Sessions from before the range to after it, split into 4 inputs by session."""
    model = TrafficModel(mean_gap_seconds=20.0)
    sessions = model.sessions(seed=3, count=900, start=START - timedelta(minutes=5),
                              sessions_per_second=0.5)  # fmt: skip
    inputs: dict[str, list[dict[str, Any]]] = {f"clickstream/{p}": [] for p in range(4)}
    for session in sessions:
        name = f"clickstream/{zlib.crc32(session[0]['session_id'].encode()) % 4}"
        inputs[name].extend(session)
    for events in inputs.values():
        events.sort(key=lambda e: str(e["occurred_at"]))
    return inputs


def run(inputs: dict[str, list[dict[str, Any]]], seed: int, drain: bool = False) -> str:
    """Offer the inputs interleaved at random (each in its own order), then report."""
    replay = engine(list(inputs), drain)
    rng = random.Random(seed)
    cursors = dict.fromkeys(inputs, 0)
    while cursors:
        name = rng.choice(sorted(cursors))
        offer(replay, name, inputs[name][cursors[name]])
        cursors[name] += 1
        if cursors[name] == len(inputs[name]):
            del cursors[name]
            replay.finish(name)
    return replay.report().model_dump_json()


def test_any_interleaving_of_the_inputs_gives_the_same_report() -> None:
    inputs = traffic()
    first = run(inputs, seed=1)
    assert run(inputs, seed=2) == first
    report = orjson.loads(first)
    events = report["events"]
    assert events["late"] == 0
    assert events["in_range"] > 1000
    assert events["out_of_range"] > 100  # before --from and after --to
    assert report["drained_to"] is None


def test_drain_decides_the_sessions_open_at_to_with_their_own_later_events() -> None:
    plain = orjson.loads(run(traffic(), seed=1))
    drained = orjson.loads(run(traffic(), seed=1, drain=True))
    assert drained["drained_to"] is not None
    assert drained["events"]["drained"] > 0
    assert drained["events"]["in_range"] == plain["events"]["in_range"]
    [before], [after] = plain["funnels"], drained["funnels"]
    assert [w["window_id"] for w in after["windows"]] == [w["window_id"] for w in before["windows"]]
    assert all(w["final"] for w in after["windows"])
    assert not all(w["final"] for w in before["windows"])
    opened = {s["stage"]: s for s in before["totals"]["stages"]}
    decided = {s["stage"]: s for s in after["totals"]["stages"]}
    # The same cohorts entered; what was open at --to is decided, more of it converted.
    for stage, counts in opened.items():
        assert decided[stage]["entered"] == counts["entered"]
    assert sum(s["open"] for s in decided.values()) == 0
    assert sum(s["open"] for s in opened.values()) > 0
    assert sum(s["converted"] for s in decided.values()) > sum(
        s["converted"] for s in opened.values()
    )


def test_a_window_with_survey_answers_and_no_stage_entry_is_in_the_report(tmp_path: Path) -> None:
    """Answers count in the window of their own time: one given minutes after the session's
    last stage entry makes a window of answers only, reported as live publishes it."""
    funnel_file = tmp_path / "checkout.yaml"
    funnel_file.write_text(
        CHECKOUT.read_text()
        + "surveys:\n  - {name: review, event_type: review_submitted, score: rating, kind: csat}\n"
    )
    replay = RangeReplay(
        (load_funnel(funnel_file),),
        start=START,
        end=END,
        inputs=["clickstream/0"],
        allowed_lateness_ms=120_000,
        retention_ms=3_600_000,
        partitions=1,
    )
    landed, answered = START + timedelta(minutes=1), START + timedelta(minutes=5, seconds=30)
    for seq, (kind, at) in enumerate((("page_view", landed), ("review_submitted", answered))):
        event = {**EXAMPLES[kind], "event_id": f"e-{seq}", "occurred_at": at.isoformat()}
        del event["sent_at"]  # (the example's, days before: the clock correction would move it)
        offer(replay, "clickstream/0", event)
    replay.finish("clickstream/0")
    [funnel] = replay.report().funnels
    windows = {w.window_start: w for w in funnel.windows}
    assert windows[landed].stages[0].entered == 1
    assert not windows[landed].answers
    only = windows[answered - timedelta(seconds=30)]
    assert not any(stage.entered for stage in only.stages)
    assert [
        (a.stage, a.answers, a.distribution["5"]) for a in only.answers if a.dimension is None
    ] == [("landing", 1, 1)]


def test_the_median_time_to_convert_is_the_bound_of_the_bucket_holding_it() -> None:
    report = orjson.loads(run(traffic(), seed=1, drain=True))
    checked = 0
    for stage in report["funnels"][0]["totals"]["stages"]:
        histogram = stage["time_to_convert"]
        if not histogram:
            continue
        bounds = [bound for bound, _ in histogram["buckets"]]
        index = bounds.index(histogram["median_at_most_seconds"])
        below = sum(n for _, n in histogram["buckets"][:index])
        assert 2 * below < histogram["count"] <= 2 * (below + histogram["buckets"][index][1])
        checked += 1
    assert checked >= 3


def test_diff_lists_alerts_added_removed_and_changed_on_the_same_id() -> None:
    base = ReplayReport.model_validate_json(run(traffic(), seed=1))
    example = Path(__file__).resolve().parents[2] / "schemas/examples/alert.json"
    alert = Alert.model_validate_json(example.read_bytes()).model_copy(
        update={"funnel": base.funnels[0].funnel}
    )
    other = alert.model_copy(update={"event_id": alert.event_id + "-other"})
    paged = alert.model_copy(update={"severity": "page" if alert.severity != "page" else "warning"})

    def with_alerts(*alerts: Alert) -> ReplayReport:
        funnel = base.funnels[0].model_copy(update={"alerts": list(alerts)})
        return base.model_copy(update={"funnels": [funnel]})

    [changes] = diff_reports(with_alerts(alert, other), with_alerts(paged))["funnels"]
    assert changes["alerts_added"] == []
    assert [a["event_id"] for a in changes["alerts_removed"]] == [other.event_id]
    assert [(a["event_id"], a["severity"]) for a in changes["alerts_changed"]] == [
        (alert.event_id, paged.severity)
    ]
    [same] = diff_reports(with_alerts(alert), with_alerts(alert))["funnels"]
    assert same["alerts_added"] == same["alerts_removed"] == same["alerts_changed"] == []
    assert [s["conversion_before"] for s in same["steps"]] == [
        s["conversion_after"] for s in same["steps"]
    ]
