"""The re-key stage's decode as the sessions stage takes it (``streamer.pipeline.forwarded``):
a round trip gives the same event; bytes of any shape give an event, a rejection saying why
or "another decoder's", and never an exception."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.decode import Rejection
from streamer.decoders import DecodedEvent
from streamer.events import ReasonCode
from streamer.funnel.session import StoredEvent
from streamer.pipeline.forwarded import FORWARD_VERSION, decode_forwarded, encode_forwarded

FINGERPRINT = "0123456789abcdef"

json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
decoded_events = st.builds(
    DecodedEvent,
    event=st.builds(
        StoredEvent,
        at_ms=st.integers(-(2**62), 2**62),
        event_id=st.text(),
        event_type=st.text(min_size=1),
        fields=st.dictionaries(st.text(), json_values, max_size=5),
    ),
    session_id=st.text(min_size=1),
    user_id=st.none() | st.text(),
    anonymous_id=st.none() | st.text(),
    inactivity_ms=st.none() | st.integers(0, 2**62),
)


@settings(max_examples=300)
@given(decoded_events)
def test_a_round_trip_gives_the_same_event(decoded: DecodedEvent) -> None:
    assert decode_forwarded(encode_forwarded(decoded, FINGERPRINT), FINGERPRINT) == decoded


@settings(max_examples=100)
@given(decoded_events, st.text().filter(lambda other: other != FINGERPRINT))
def test_another_decoders_decode_is_not_taken(decoded: DecodedEvent, other: str) -> None:
    assert decode_forwarded(encode_forwarded(decoded, other), FINGERPRINT) is None


def _check(result: DecodedEvent | Rejection | None) -> None:
    if isinstance(result, Rejection):
        assert result.reason is ReasonCode.SCHEMA_VIOLATION
        assert "decoded header is malformed" in result.message
    elif result is not None:
        event = result.event
        assert type(event.at_ms) is int
        assert isinstance(event.fields, dict)
        assert isinstance(result.session_id, str)
        assert result.session_id


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _check(decode_forwarded(raw, FINGERPRINT))


@settings(max_examples=200)
@given(st.lists(json_values, min_size=10, max_size=10), st.booleans())
def test_hostile_arrays_of_the_right_length_never_raise(parts: list[Any], ours: bool) -> None:
    if ours:  # past the version and fingerprint checks: the rest is what is hostile
        parts[:2] = [FORWARD_VERSION, FINGERPRINT]
    _check(decode_forwarded(orjson.dumps(parts), FINGERPRINT))


@settings(max_examples=300)
@given(decoded_events, st.integers(0, 9), json_values)
def test_one_hostile_part_of_a_valid_decode_never_raises(
    decoded: DecodedEvent, index: int, value: Any
) -> None:
    parts = orjson.loads(encode_forwarded(decoded, FINGERPRINT))
    parts[index] = value
    _check(decode_forwarded(orjson.dumps(parts), FINGERPRINT))


def test_truncated_and_wrong_typed_decodes_say_why() -> None:
    valid = orjson.loads(
        encode_forwarded(DecodedEvent(StoredEvent(5, "e", "t", {}), "s", None), FINGERPRINT)
    )
    cases = {
        b"": "not JSON",
        orjson.dumps(valid)[:-1]: "not JSON",
        orjson.dumps(valid[:9]): "array of 10",
        orjson.dumps([2, *valid[1:]]): "unknown version",
        orjson.dumps([True, *valid[1:]]): "unknown version",
        orjson.dumps([*valid[:2], True, *valid[3:]]): "at_ms",
        orjson.dumps([*valid[:2], 5.0, *valid[3:]]): "at_ms",
        orjson.dumps([*valid[:5], [], *valid[6:]]): "fields",
        orjson.dumps([*valid[:6], "", *valid[7:]]): "session_id",
        orjson.dumps([*valid[:7], 7, *valid[8:]]): "user_id",
        orjson.dumps([*valid[:9], -1]): "inactivity_ms",
    }
    for raw, why in cases.items():
        result = decode_forwarded(raw, FINGERPRINT)
        assert isinstance(result, Rejection), raw
        assert why in result.message, (raw, result.message)
