"""The re-key stage's decode, handed to the sessions stage with each forwarded event.

The re-key stage decodes and validates every event before forwarding it; the sessions stage
used to do it all again (about a third of the re-key path's cost per event). The forward now
carries the result beside the original bytes, in a header: a JSON array

    [1, fingerprint, at_ms, event_id, event_type, fields, session_id, user_id, anonymous_id,
     inactivity_ms]

``fingerprint`` is the decoder's (:attr:`streamer.decoders.EventDecoder.fingerprint`): a
sessions stage whose decoder differs (another plan, other limits, funnels that keep other
fields: a deploy under way) decodes the original bytes instead. The header is read as
untrusted bytes: anything but that exact shape is a :class:`Rejection`, dead-lettered with
the original bytes. No I/O.
"""

from __future__ import annotations

from typing import Any

import orjson

from streamer.decode import Rejection
from streamer.decoders import DecodedEvent
from streamer.events import ReasonCode
from streamer.funnel.session import StoredEvent
from streamer.pipeline.messages import REKEY_DECODED_HEADER

__all__ = ["FORWARD_VERSION", "decode_forwarded", "encode_forwarded"]

FORWARD_VERSION = 1
_FIELDS = 10
_INT64 = 2**63


def encode_forwarded(decoded: DecodedEvent, fingerprint: str) -> bytes:
    event = decoded.event
    return orjson.dumps(
        [
            FORWARD_VERSION,
            fingerprint,
            event.at_ms,
            event.event_id,
            event.event_type,
            event.fields,
            decoded.session_id,
            decoded.user_id,
            decoded.anonymous_id,
            decoded.inactivity_ms,
        ]
    )


def decode_forwarded(raw: bytes, fingerprint: str) -> DecodedEvent | Rejection | None:
    """The decode ``raw`` carries, a :class:`Rejection` when it is not one, or None when it
    was made by a decoder other than the one ``fingerprint`` names (decode the original)."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _malformed(f"not JSON: {exc}")
    if not isinstance(document, list) or len(document) != _FIELDS:
        return _malformed(f"expected an array of {_FIELDS}")
    version, made_by, at_ms, event_id, event_type, fields, session, user, anonymous, gap = document
    if version != FORWARD_VERSION or type(version) is not int:
        return _malformed(f"unknown version {version!r:.40}")
    if not isinstance(made_by, str):
        return _malformed("fingerprint is not a string")
    if made_by != fingerprint:
        return None
    if not _is_int(at_ms) or not -_INT64 < at_ms < _INT64:
        return _malformed("at_ms is not a 64-bit integer")
    if not (isinstance(event_id, str) and isinstance(event_type, str) and event_type):
        return _malformed("event_id or event_type is not a string")
    if not isinstance(fields, dict):
        return _malformed("fields is not an object")
    if not (isinstance(session, str) and session):
        return _malformed("session_id is not a non-empty string")
    if not (_is_optional_str(user) and _is_optional_str(anonymous)):
        return _malformed("user_id or anonymous_id is not a string or null")
    if gap is not None and (not _is_int(gap) or not 0 <= gap < _INT64):
        return _malformed("inactivity_ms is not a non-negative integer or null")
    return DecodedEvent(
        StoredEvent(at_ms, event_id, event_type, fields), session, user, anonymous, gap
    )


def _is_int(value: Any) -> bool:
    return type(value) is int  # not a bool


def _is_optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _malformed(why: str) -> Rejection:
    return Rejection(
        ReasonCode.SCHEMA_VIOLATION,
        f"re-keyed event's decoded header is malformed: {why}",
        REKEY_DECODED_HEADER,
    )
