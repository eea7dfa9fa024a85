"""Input on a real broker: valid, invalid and duplicate messages, restarts, DLQ replay."""

from __future__ import annotations

import ast
import asyncio
import base64
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from streamer.dlq import parse_dead_letters
from streamer.events import ReasonCode
from streamer.kafka_io import ensure_topics, read_topic
from streamer.pipeline.messages import DLQ_MAX_MESSAGE_BYTES
from streamer.settings import Settings
from streamer.simulate import TrafficModel, topic_for
from streamer.testing import (
    MetricValues,
    WorkerProcess,
    metric,
    produce,
    run_cli,
    scrape_metrics,
)
from tests.support.kafka_waits import (
    end_markers_read,
    processed,
    read_at_least,
    read_exactly,
    send_end_markers,
    wait_for,
    wait_processed,
)
from tests.support.pipeline_run import limit_message_bytes

Message = tuple[str, bytes | None, bytes | None]


def _valid_events(
    count_sessions: int, seed: int, hours_ago: float = 2.0
) -> list[dict[str, object]]:
    """Sessions of a while ago, in time order as a shop's producers send them."""
    start = datetime.now(UTC) - timedelta(hours=hours_ago)
    sessions = TrafficModel().sessions(seed=seed, count=count_sessions, start=start)
    return sorted((e for session in sessions for e in session), key=lambda e: str(e["occurred_at"]))


def _as_messages(settings: Settings, events: list[dict[str, object]]) -> list[Message]:
    """Events as a shop's producers send them: to their topic, keyed by session id."""
    return [
        (topic_for(settings, str(e["event_type"])), str(e["session_id"]).encode(), orjson.dumps(e))
        for e in events
    ]


def _accepted(values: MetricValues, settings: Settings) -> float:
    return sum(
        metric(values, "streamer_events_total", topic=t, outcome="accepted")
        for t in (settings.clickstream_topic, settings.checkout_topic)
    )


def _applied(worker: WorkerProcess, settings: Settings) -> float:
    return processed(scrape_metrics(worker.metrics_url), settings)


def _invalid(settings: Settings, now_ms: int) -> list[tuple[Message, ReasonCode]]:
    click, checkout = settings.clickstream_topic, settings.checkout_topic
    base = {"event_id": "bad", "event_type": "add_to_cart", "session_id": "s-bad",
            "occurred_at": now_ms - 60_000, "product_id": "p"}  # fmt: skip
    cases: list[tuple[Message, ReasonCode]] = [
        ((click, b"k1", b"\xff\xfe\xfd"), ReasonCode.NOT_UTF8),
        ((click, b"k2", b'{"event_type": "page_view", '), ReasonCode.NOT_JSON),
        ((click, None, b"[1, 2, 3]"), ReasonCode.NOT_AN_OBJECT),
        ((click, b"k4", orjson.dumps({**base, "event_type": "teleport"})),
         ReasonCode.UNKNOWN_EVENT_TYPE),
        ((checkout, b"k5", orjson.dumps({**base, "quantity": "many"})),
         ReasonCode.SCHEMA_VIOLATION),
        ((click, b"k6", orjson.dumps({**base, "occurred_at": "2026-01-01T10:00:00"})),
         ReasonCode.SCHEMA_VIOLATION),
        ((click, b"k7", b'{"pad": "' + b"x" * 70_000 + b'"}'), ReasonCode.TOO_LARGE),
        ((click, b"k8", orjson.dumps({**base, "occurred_at": now_ms + 3_600_000})),
         ReasonCode.FUTURE_EVENT),
        ((checkout, b"k9", orjson.dumps({**base, "occurred_at": now_ms - 30 * 86_400_000})),
         ReasonCode.TOO_OLD),
        ((checkout, b"k10", None), ReasonCode.NOT_JSON),
    ]  # fmt: skip
    return cases


async def test_valid_invalid_and_duplicates_land_where_they_belong(
    settings: Settings, tmp_path: Path
) -> None:
    rng = random.Random(11)
    events = _valid_events(120, seed=5)
    valid = _as_messages(settings, events)
    duplicates = rng.sample(valid, 25)  # producer retries: the same bytes, same key
    now_ms = round(datetime.now(UTC).timestamp() * 1000)
    invalid_cases = _invalid(settings, now_ms)
    invalid = [message for message, _ in invalid_cases]
    mixed = list(valid)
    for message in invalid:  # garbage anywhere in the stream
        mixed.insert(rng.randrange(len(mixed) + 1), message)
    # A retry follows its original (it cannot come before the first attempt).
    for dup in duplicates:
        mixed.insert(mixed.index(dup) + rng.randint(1, 20), dup)

    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    with WorkerProcess(settings, tmp_path / "worker.log") as worker:
        await produce(settings, mixed)
        values = wait_processed(worker, settings, len(mixed))
        assert _accepted(values, settings) == len(valid)

        dead = await read_exactly(settings, settings.dlq_topic, len(invalid), [worker])
        letters, unreadable = parse_dead_letters(dead)
        assert unreadable == 0
        by_payload = {base64.b64decode(letter.payload_base64): letter for letter in letters}
        for (topic, key, value), reason in invalid_cases:
            letter = by_payload[value or b""]
            assert letter.reason is reason, letter
            assert letter.source_topic == topic
            assert letter.key_base64 == (base64.b64encode(key).decode() if key else None)

        duplicate_count = sum(
            metric(values, "streamer_events_total", topic=t, outcome="duplicate")
            for t in (settings.clickstream_topic, settings.checkout_topic)
        )
        assert duplicate_count == len(duplicates)
        assert metric(values, "streamer_dead_letters_total", topic=settings.clickstream_topic,
                      reason="not_utf8") == 1  # fmt: skip

        # Still running and processing: a new batch goes through.
        later = _valid_events(10, seed=99, hours_ago=1.0)
        await produce(settings, _as_messages(settings, later))
        values = wait_processed(worker, settings, len(mixed) + len(later))
        assert _accepted(values, settings) == len(valid) + len(later)


async def test_duplicates_are_caught_after_a_worker_restart(
    settings: Settings, tmp_path: Path
) -> None:
    events = _valid_events(30, seed=8)
    messages = _as_messages(settings, events)
    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    with WorkerProcess(settings, tmp_path / "first.log") as worker:
        await produce(settings, messages)
        wait_processed(worker, settings, len(messages))
    # A new worker process, same group and state folder: the retries arrive after the restart.
    retries = messages[:15]
    with WorkerProcess(settings, tmp_path / "second.log") as worker:
        await produce(settings, retries)
        duplicates = 0.0
        for _ in range(300):  # the retries come after whatever the first worker left unacked
            values = scrape_metrics(worker.metrics_url)
            duplicates = sum(
                metric(values, "streamer_events_total", topic=t, outcome="duplicate")
                for t in (settings.clickstream_topic, settings.checkout_topic)
            )
            if duplicates >= len(retries):
                break
            await asyncio.sleep(0.2)
        assert duplicates == len(retries), worker.log_tail()


async def test_dlq_inspect_and_replay_after_a_fix(settings: Settings, tmp_path: Path) -> None:
    events = _valid_events(40, seed=21)
    messages = _as_messages(settings, events)
    strict = settings.model_copy(update={"max_event_bytes": 290})
    too_big = [m for m in messages if len(m[2] or b"") > 290]
    assert 5 < len(too_big) < len(messages)
    # One rejected event was also retried by its producer in a form that fitted: after the fix,
    # replaying the rejected copy must not make a second accepted event.
    first = orjson.loads(too_big[0][2] or b"")
    slim = {k: v for k, v in first.items() if k not in ("context", "referrer")}
    messages.insert(
        messages.index(too_big[0]) + 1, (too_big[0][0], too_big[0][1], orjson.dumps(slim))
    )

    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    with WorkerProcess(strict, tmp_path / "strict.log") as worker:
        await produce(settings, messages)
        wait_processed(worker, settings, len(messages))

    inspect = run_cli(settings, "dlq", "inspect", "--limit", "3")
    assert inspect.returncode == 0, inspect.stderr
    assert f"3 of {len(too_big)} dead letters" in inspect.stdout
    assert f"by reason: too_large={len(too_big)}" in inspect.stdout
    as_json = run_cli(settings, "dlq", "inspect", "--json", "--limit", "0")
    assert len(as_json.stdout.splitlines()) == len(too_big)

    dry = run_cli(settings, "dlq", "replay", "--dry-run")
    assert f"would replay {len(too_big)} dead letter(s)" in dry.stdout, dry.stderr

    # The fix: the limit goes back to its default; the worker restarts, then the replay.
    with WorkerProcess(settings, tmp_path / "fixed.log") as worker:
        replay = run_cli(settings, "dlq", "replay", "--reason", "too_large")
        assert replay.returncode == 0, replay.stderr
        assert f"replayed {len(too_big)} dead letter(s)" in replay.stdout
        # (Replayed events older than the allowed lateness come back as new `late` letters.)
        again = run_cli(settings, "dlq", "replay", "--reason", "too_large")
        assert f"replayed 0 dead letter(s) ; {len(too_big)} already replayed" in again.stdout
        values = wait_processed(worker, settings, len(too_big))
        duplicate_count = sum(
            metric(values, "streamer_events_total", topic=t, outcome="duplicate")
            for t in (settings.clickstream_topic, settings.checkout_topic)
        )
        assert duplicate_count == 1
        # The others come back after their windows moved on: those older than the allowed
        # lateness are refused again, as late, and kept in the DLQ; none is lost.
        late = sum(
            metric(values, "streamer_dead_letters_total", topic=t, reason="late")
            for t in (settings.clickstream_topic, settings.checkout_topic)
        )
        assert _accepted(values, settings) + late >= len(too_big) - 1


async def test_a_polite_stop_stores_what_was_applied_and_a_restart_reads_none_of_it_again(
    settings: Settings, tmp_path: Path
) -> None:
    """SIGTERM right after the last message is applied, long before the next checkpoint is
    due (the interval raised to an hour so that only the stop can store it): the worker writes
    a last checkpoint and acks it, so the restarted worker resumes after it."""
    hourly = settings.model_copy(update={"checkpoint_interval_seconds": 3600.0})
    events = _valid_events(30, seed=5)
    messages = _as_messages(settings, events)
    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    worker = WorkerProcess(hourly, tmp_path / "first.log").start()
    try:
        await produce(settings, messages)
        wait_for(lambda: _applied(worker, settings) >= len(messages), worker)
        values = scrape_metrics(worker.metrics_url)
        unacked = sum(v for (name, _), v in values.items() if name == "streamer_unacked_messages")
        assert unacked == len(messages)  # nothing stored yet: only the stop can store it
    finally:
        assert worker.stop() == 0, worker.log_tail()
    first_log = (tmp_path / "first.log").read_text()
    assert "stopping: last checkpoint of partition(s) 0,1,2,3 written" in first_log

    late_session = _valid_events(1, seed=6, hours_ago=0.1)
    with WorkerProcess(hourly, tmp_path / "second.log") as worker:
        await produce(settings, _as_messages(settings, late_session))
        # Then an end marker on every input partition: once all are read, anything of the
        # first run read again has been applied before them (a partition is read in order).
        markers = await send_end_markers(settings)
        wait_for(
            lambda: end_markers_read(scrape_metrics(worker.metrics_url), settings) >= markers,
            worker,
        )
        # (Per-event counts reach Prometheus at the worker's next publish, within a second.)
        wait_for(lambda: _applied(worker, settings) >= len(late_session) + markers, worker)
        values = scrape_metrics(worker.metrics_url)
        assert end_markers_read(values, settings) == markers
        assert _accepted(values, settings) == len(late_session)  # none of the first run's
        assert processed(values, settings) == len(late_session) + markers  # nor duplicates
        replayed = sum(
            metric(values, "streamer_replayed_messages_total", topic=t)
            for t in (settings.clickstream_topic, settings.checkout_topic)
        )
        assert replayed == 0
    restored = [
        line for line in (tmp_path / "second.log").read_text().splitlines() if ": restored " in line
    ]
    assert len(restored) == 4
    assert not any("first start" in line for line in restored)


async def _run_until_the_broker_refuses(
    settings: Settings, log: Path, messages: list[Message]
) -> None:
    """A worker fed ``messages`` meets a record the broker refuses (too large): it exits 1,
    and its log names the refusal and that it stopped without a last checkpoint."""
    worker = WorkerProcess(settings, log).start()
    try:
        await produce(settings, messages)
        assert worker.process is not None
        for _ in range(180):
            if worker.process.poll() is not None:
                break
            await asyncio.sleep(0.5)
        assert worker.process.returncode == 1, worker.log_tail()
    finally:
        worker.stop()
    text = worker.log_tail(lines=100_000)
    assert "MessageSizeTooLargeError" in text
    refused = "OutputRefusedError('the broker refused a record: MessageSizeTooLargeError()')"
    assert f"stopping after a crash ({refused})" in text


def _applied_twice(values: MetricValues, settings: Settings) -> float:
    return sum(
        metric(values, "streamer_events_total", topic=t, outcome="duplicate")
        for t in (settings.clickstream_topic, settings.checkout_topic)
    )


async def test_a_dead_letter_the_broker_refuses_stops_the_worker_and_is_written_after_the_fix(
    settings: Settings, tmp_path: Path
) -> None:
    """The dead-letter topic was created by hand with a 1 KB message limit: the broker refuses
    the dead letter of a 2 KB message. The worker stops (exit 1) rather than ack it; once the
    topic's limit is raised, the restarted worker writes it, and nothing is lost or doubled."""
    await ensure_topics(
        settings,
        [settings.dlq_topic],
        partitions=1,
        configs={settings.dlq_topic: {"max.message.bytes": "1024"}},
    )
    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    valid = _as_messages(settings, _valid_events(10, seed=12))
    hostile: Message = (settings.clickstream_topic, b"k-big", b"{" + b"x" * 2048)
    await _run_until_the_broker_refuses(settings, tmp_path / "refused.log", [*valid, hostile])
    assert await read_topic(settings, settings.dlq_topic) == []

    await limit_message_bytes(settings, settings.dlq_topic, DLQ_MAX_MESSAGE_BYTES)
    with WorkerProcess(settings, tmp_path / "fixed.log") as worker:
        [(key, value)] = await read_exactly(settings, settings.dlq_topic, 1, [worker])
        values = wait_processed(worker, settings, 1)
        [letter], unreadable = parse_dead_letters([(key, value)])
        assert unreadable == 0
        assert base64.b64decode(letter.payload_base64) == hostile[2]
        assert letter.reason is ReasonCode.NOT_JSON
        # What the stopped worker had not checkpointed is applied once, not twice.
        assert metric(values, "streamer_dead_letters_total", topic=settings.clickstream_topic,
                      reason="not_json") == 1  # fmt: skip
        assert _applied_twice(values, settings) == 0


async def test_a_state_write_the_broker_refuses_stops_the_worker_and_acks_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    """The state table's changelog topic was created by hand with a 1 KB message limit: the
    broker refuses the first checkpoint's delta record. Faust only logs such a refusal; the
    worker stops (exit 1) having acked nothing, and after the fix the restarted worker applies
    every event once."""
    changelog = f"{settings.app_id}-funnel-state-changelog"
    await ensure_topics(settings, [changelog], configs={changelog: {"max.message.bytes": "1024"}})
    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    valid = _as_messages(settings, _valid_events(20, seed=13))
    await _run_until_the_broker_refuses(settings, tmp_path / "refused.log", valid)

    await limit_message_bytes(settings, changelog, DLQ_MAX_MESSAGE_BYTES)
    with WorkerProcess(settings, tmp_path / "fixed.log") as worker:
        # Checkpoints the broker took before the refusal are restored; every event is either
        # in one of them or applied now, once.
        wait_for(lambda: len(_restored_offsets(tmp_path / "fixed.log")) == 4, worker)
        stored = sum(_restored_offsets(tmp_path / "fixed.log").values())
        assert stored < len(valid)  # the refused checkpoint's input was not acked
        values = wait_processed(worker, settings, len(valid) - stored)
        assert _accepted(values, settings) == len(valid) - stored
        assert _applied_twice(values, settings) == 0


def _restored_offsets(log: Path) -> dict[int, int]:
    """partition -> input messages its restored checkpoint reflects, from the worker's log."""
    found: dict[int, int] = {}
    for line in log.read_text().splitlines():
        restored = re.search(r"partition (\d+): restored .* offsets (none|\{[^}]*\})", line)
        if restored:
            offsets = restored.group(2)
            found[int(restored.group(1))] = (
                0 if offsets == "none" else sum(ast.literal_eval(offsets).values())
            )
    return found


async def test_a_window_record_the_broker_refuses_stops_the_worker_and_is_published_after_the_fix(
    settings: Settings, tmp_path: Path
) -> None:
    """The windows topic was created by hand with a 100-byte message limit: the broker refuses
    the merger's first window record. Faust would leave that refusal in a future nobody reads;
    the worker stops (exit 1) with the partial that caused it unacked, and once the topic's
    limit is raised, the restarted worker publishes the window."""
    await ensure_topics(
        settings,
        [settings.windows_topic],
        partitions=1,
        configs={settings.windows_topic: {"max.message.bytes": "100"}},
    )
    await ensure_topics(settings, [settings.clickstream_topic, settings.checkout_topic])
    valid = _as_messages(settings, _valid_events(10, seed=14))
    await _run_until_the_broker_refuses(settings, tmp_path / "refused.log", valid)
    assert "windows stage could not write its outputs" in (tmp_path / "refused.log").read_text()
    assert await read_topic(settings, settings.windows_topic) == []

    await limit_message_bytes(settings, settings.windows_topic, DLQ_MAX_MESSAGE_BYTES)
    with WorkerProcess(settings, tmp_path / "fixed.log"):
        records = await read_at_least(settings, settings.windows_topic, 1, timeout=60)
    assert records, "the restarted worker published no window"
    assert all(orjson.loads(value or b"{}")["funnel"] == "checkout" for _, value in records)
