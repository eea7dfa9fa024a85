"""The sessions stage against malformed input: one dead letter each, the right reason, no raise."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamer.events import DeadLetter, ReasonCode
from streamer.funnel.task import Offer
from tests.support.stage_harness import NOW_MS, make_harness, valid_event

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


async def _reject(raw: bytes | None) -> DeadLetter:
    harness = make_harness()
    outcome, record = await harness.process(harness.message(raw))
    assert outcome == "dead_lettered"
    assert isinstance(record, DeadLetter)
    assert harness.stage.runtimes[0].task.sessions == {}
    assert len(harness.dead_letters.sent) == 1
    sent = DeadLetter.model_validate_json(harness.dead_letters.sent[0][1])
    assert sent == record
    assert base64.b64decode(sent.payload_base64) == (raw or b"")
    assert sent.source_topic == "clickstream"
    assert sent.dead_letter_id == f"clickstream/0/{sent.source_offset}"
    dead = harness.metrics.dead_letters.labels(topic="clickstream", reason=sent.reason.value)
    assert dead._value.get() == 1
    return sent


async def test_a_valid_event_is_taken_into_its_session() -> None:
    harness = make_harness()
    outcome, _ = await harness.process(harness.message(orjson.dumps(valid_event()), key=None))
    assert outcome is Offer.ACCEPTED
    [state] = harness.stage.runtimes[0].task.sessions.values()
    assert state.session_id == "s-1"
    [event] = state.buffered()
    assert event.at_ms == NOW_MS - 60_000
    assert event.fields["cart_value"] == 21.0
    assert harness.dead_letters.sent == []


@given(raw=st.binary(max_size=300))
@FAST
async def test_random_bytes_give_exactly_one_dead_letter(raw: bytes) -> None:
    harness = make_harness()
    outcome, record = await harness.process(harness.message(raw))
    assert outcome == "dead_lettered"
    assert len(harness.dead_letters.sent) == 1
    assert isinstance(record, DeadLetter)
    assert record.reason in {
        ReasonCode.NOT_UTF8, ReasonCode.NOT_JSON, ReasonCode.NOT_AN_OBJECT,
        ReasonCode.SCHEMA_VIOLATION, ReasonCode.UNKNOWN_EVENT_TYPE,
    }  # fmt: skip


@given(cut=st.integers(min_value=1, max_value=200))
@FAST
async def test_truncated_json_is_not_json(cut: int) -> None:
    raw = orjson.dumps(valid_event())
    letter = await _reject(raw[: min(cut, len(raw) - 1)])
    assert letter.reason is ReasonCode.NOT_JSON


@given(garbage=st.binary(min_size=1, max_size=8).filter(lambda b: any(x >= 0x80 for x in b)))
@FAST
async def test_invalid_utf8_is_not_utf8(garbage: bytes) -> None:
    try:
        garbage.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    else:
        valid = True
    # Valid UTF-8 is not this test's case: rejected (hypothesis then fails the test if it
    # cannot find enough invalid examples), not passed.
    assume(not valid)
    raw = orjson.dumps(valid_event(product_id="PLACEHOLDER")).replace(b"PLACEHOLDER", garbage)
    assert (await _reject(raw)).reason is ReasonCode.NOT_UTF8


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
async def test_nan_and_infinity_are_refused(literal: bytes) -> None:
    raw = orjson.dumps(valid_event(price=12345.5)).replace(b"12345.5", literal)
    assert (await _reject(raw)).reason is ReasonCode.NOT_JSON


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "two"),
        ("quantity", 0),
        ("quantity", 2.5),
        ("session_id", 17),
        ("session_id", ""),
        ("price", -1),
        ("currency", "euro"),
        ("context", {"device": "fridge"}),
        ("context", {"country": "Germany"}),
        ("occurred_at", "2026-11-22T11:59:00"),  # no offset
        ("occurred_at", "yesterday"),
        ("occurred_at", True),
        ("occurred_at", -5),
        ("occurred_at", 1e18),
        ("unexpected_field", 1),
        ("schema_version", 2),
    ],
)
async def test_wrong_types_and_values_name_the_field(field: str, value: object) -> None:
    letter = await _reject(orjson.dumps(valid_event(**{field: value})))
    assert letter.reason is ReasonCode.SCHEMA_VIOLATION
    assert letter.field is not None
    assert letter.field.split(".")[0] == field


@given(missing=st.sampled_from(["event_id", "session_id", "occurred_at", "product_id"]))
@FAST
async def test_missing_fields_are_named(missing: str) -> None:
    event = valid_event()
    del event[missing]
    letter = await _reject(orjson.dumps(event))
    assert (letter.reason, letter.field) == (ReasonCode.SCHEMA_VIOLATION, missing)


async def test_missing_or_unknown_event_type() -> None:
    event = valid_event()
    del event["event_type"]
    assert (await _reject(orjson.dumps(event))).field == "event_type"
    unknown = await _reject(orjson.dumps(valid_event(event_type="teleport")))
    assert unknown.reason is ReasonCode.UNKNOWN_EVENT_TYPE


@given(size=st.integers(min_value=300, max_value=100_000))
@settings(max_examples=30, deadline=None)
async def test_huge_strings_are_schema_violations_or_too_large(size: int) -> None:
    letter = await _reject(orjson.dumps(valid_event(product_id="x" * size)))
    expected = ReasonCode.TOO_LARGE if size > 64 * 1024 - 300 else ReasonCode.SCHEMA_VIOLATION
    if abs(size - (64 * 1024 - 300)) > 400:  # away from the boundary the reason is certain
        assert letter.reason is expected
    assert letter.reason in {ReasonCode.TOO_LARGE, ReasonCode.SCHEMA_VIOLATION}


async def test_huge_arrays_and_deep_nesting() -> None:
    assert (await _reject(orjson.dumps(list(range(100_000))))).reason is ReasonCode.TOO_LARGE
    assert (await _reject(orjson.dumps(list(range(100))))).reason is ReasonCode.NOT_AN_OBJECT
    deep = b"[" * 5000 + b"]" * 5000
    assert (await _reject(deep)).reason is ReasonCode.NOT_JSON
    nested = orjson.dumps(valid_event(context={"experiments": {"a": {"b": {"c": "d"}}}}))
    assert (await _reject(nested)).reason is ReasonCode.SCHEMA_VIOLATION


async def test_empty_and_tombstone_messages() -> None:
    assert (await _reject(b"")).reason is ReasonCode.NOT_JSON
    assert (await _reject(None)).reason is ReasonCode.NOT_JSON


async def test_events_too_far_in_the_future_or_past() -> None:
    ahead = await _reject(orjson.dumps(valid_event(occurred_at=NOW_MS + 6 * 60_000)))
    assert (ahead.reason, ahead.field) == (ReasonCode.FUTURE_EVENT, "occurred_at")
    old = await _reject(orjson.dumps(valid_event(occurred_at=NOW_MS - 8 * 86_400_000)))
    assert old.reason is ReasonCode.TOO_OLD


async def test_sent_at_corrects_a_device_clock_that_is_off() -> None:
    harness = make_harness()
    # The device clock is one hour ahead: occurred_at and sent_at both say 13:00.
    event = valid_event(occurred_at="2026-11-22T12:59:30Z", sent_at="2026-11-22T13:00:00Z")
    outcome, _ = await harness.process(harness.message(orjson.dumps(event)))
    assert outcome is Offer.ACCEPTED
    [state] = harness.stage.runtimes[0].task.sessions.values()
    assert [e.at_ms for e in state.buffered()] == [NOW_MS - 30_000]


async def test_a_decoder_bug_becomes_a_processing_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.decoders as decoders

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(decoders, "decode_event", broken)
    letter = await _reject(orjson.dumps(valid_event()))
    assert letter.reason is ReasonCode.PROCESSING_ERROR
    assert "ZeroDivisionError" in letter.message


async def test_repeated_event_ids_of_a_session_are_dropped_and_counted() -> None:
    harness = make_harness()
    raw = orjson.dumps(valid_event())
    other = orjson.dumps(valid_event(event_id="e-2"))
    outcomes = [
        (await harness.process(harness.message(value, timestamp_ms=NOW_MS + delay)))[0]
        for value, delay in ((raw, 0), (raw, 1_000), (other, 2_000), (raw, 600_000))
    ]
    assert outcomes == [Offer.ACCEPTED, Offer.DUPLICATE, Offer.ACCEPTED, Offer.DUPLICATE]
    assert harness.dead_letters.sent == []
    harness.stage.flush_metrics()  # per-event counts reach Prometheus at each publish
    duplicates = harness.metrics.events.labels(topic="clickstream", outcome="duplicate")
    assert duplicates._value.get() == 2


async def test_an_event_behind_the_watermark_is_dead_lettered_late() -> None:
    harness = make_harness(lateness_ms=60_000)
    await harness.process(harness.message(orjson.dumps(valid_event())))
    # Both inputs of the partition have fronts: the watermark is the lower one minus lateness.
    harness.stage.inputs.observe("checkout", 0, NOW_MS)
    fresh = valid_event(event_id="e-2", occurred_at=NOW_MS)
    assert (await harness.process(harness.message(orjson.dumps(fresh))))[0] is Offer.ACCEPTED
    stale = valid_event(event_id="e-3", occurred_at=NOW_MS - 5 * 60_000)
    outcome, letter = await harness.process(harness.message(orjson.dumps(stale)))
    assert outcome == "dead_lettered"
    assert letter is not None
    assert (letter.reason, letter.field) == (ReasonCode.LATE, "occurred_at")
    assert "behind the watermark" in letter.message
    assert harness.metrics.late_events._value.get() == 1


async def test_a_checkpoint_stores_state_with_offsets_then_acks() -> None:
    harness = make_harness()
    for index in range(3):
        event = valid_event(event_id=f"e-{index}")
        await harness.process(harness.message(orjson.dumps(event)))
    assert harness.acked == []  # nothing is acked before its effects are stored
    await harness.stage.checkpoint(0)
    assert harness.acked == [0, 1, 2]
    meta = orjson.loads(harness.table["t:0"])
    # The other input has no message yet: it starts at the log's start.
    assert meta["offsets"] == {"clickstream": 3, "checkout": 0}
    assert meta["log"] == [0, 1]  # one delta record holds every change of the checkpoint
    delta = orjson.loads(harness.table["d:0:000000000000"])
    assert delta["s"]["s-1"][1]  # the buffered events are in the state
    # A fresh stage on the same table resumes: the stored offsets skip what was applied.
    again = make_harness()
    again.table.update(harness.table)
    again.offset = 1
    outcome = await again.stage.process(again.message(orjson.dumps(valid_event())), lambda: None)
    assert outcome is None  # offset 2 was applied before the checkpoint
    assert len(again.stage.runtimes[0].task.sessions["s-1"].buffered()) == 3
