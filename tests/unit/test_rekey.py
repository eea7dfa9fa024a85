"""The re-key path without a broker: the re-key stage forwards validated events by session id
with their origin and sends source fronts in-band; a sessions stage reading the re-keyed
topic holds its watermark until every source partition has a front, applies a re-forwarded
event once, and dead-letters a late one under its original coordinates."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from streamer.decode import DecodeLimits
from streamer.decoders import ContractDecoder, EventDecoder, needed_fields
from streamer.events import DeadLetter
from streamer.funnel.definition import load_funnel
from streamer.funnel.task import Offer
from streamer.metrics import Metrics
from streamer.pipeline.input_order import STALL_REPAIR_S
from streamer.pipeline.messages import (
    REKEY_DECODED_HEADER,
    REKEY_KIND_HEADER,
    REKEY_SOURCE_HEADER,
    SourceMessage,
)
from streamer.pipeline.rekey import RekeyStage
from streamer.pipeline.sessions import SessionsStage
from streamer.pipeline.timers import Beside
from tests.support.stage_harness import CHECKOUT, NOW, NOW_MS, Recorder, valid_event

SOURCES = ("clickstream", "checkout")


class Forwarded:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes, int | None, list[tuple[str, bytes]]]] = []

    async def __call__(
        self, key: bytes | None, value: bytes, partition: int | None, headers: Any
    ) -> Any:
        self.sent.append((key, value, partition, list(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def _flush() -> None:
    return None


def metrics() -> Metrics:
    return Metrics.create(
        CollectorRegistry(), source_topics=SOURCES, funnels=(load_funnel(CHECKOUT),)
    )


def rekey_stage(
    forwarded: Forwarded,
    letters: Recorder,
    source_log: SourceLog | None = None,
    positions: RecordedPositions | None = None,
    decoder: EventDecoder | None = None,
) -> RekeyStage:
    async def send_letter(key: bytes | None, value: bytes) -> Any:
        return await letters(key, value, None)

    stage = RekeyStage(
        topics=SOURCES,
        out_partitions=2,
        metrics=metrics(),
        limits=DecodeLimits(),
        forward=forward_to(forwarded),
        send_dead_letter=send_letter,
        flush_producer=_flush,
        read_range=source_log.read if source_log else None,
        committed=source_log.committed_offset if source_log else None,
        recorded=positions.recorded if positions else None,
        record=positions.record if positions else None,
        clock=lambda: NOW,
        decoder=decoder or worker_decoder(),
    )
    stage.assign({("clickstream", 0), ("clickstream", 1), ("checkout", 0)})
    return stage


def worker_decoder() -> EventDecoder:
    """The decoder a worker gives both stages (the sessions stage's default here)."""
    return ContractDecoder(DecodeLimits(), needed_fields((load_funnel(CHECKOUT),)))


def forward_to(forwarded: Forwarded) -> Any:
    return forwarded


def sessions_stage(letters: Recorder) -> SessionsStage:
    return SessionsStage(
        funnels=(load_funnel(CHECKOUT),),
        topics=("rekeyed",),
        table={},
        metrics=metrics(),
        limits=DecodeLimits(),
        allowed_lateness_ms=120_000,
        retention_ms=600_000,
        checkpoint_interval_s=3600,
        send_partial=Recorder(),
        send_dead_letter=letters,
        send_abandonment=Recorder(),
        flush_producer=_flush,
        clock=lambda: NOW,
        rekeyed_from=SOURCES,
    )


def source(topic: str, partition: int, offset: int, event: dict[str, Any]) -> SourceMessage:
    return SourceMessage(topic, partition, offset, NOW_MS, b"not-the-session", orjson.dumps(event))


def as_rekeyed(offset: int, sent: tuple[Any, ...]) -> SourceMessage:
    key, value, partition, headers = sent
    return SourceMessage("rekeyed", partition or 0, offset, NOW_MS, key, value, tuple(headers))


async def test_events_are_forwarded_by_session_and_bad_bytes_dead_lettered_at_the_source() -> None:
    forwarded, letters, acked = Forwarded(), Recorder(), []
    stage = rekey_stage(forwarded, letters)
    await stage.process(source("clickstream", 1, 7, valid_event()), lambda: acked.append(7))
    await stage.process(
        SourceMessage("checkout", 0, 3, NOW_MS, None, b"{not json"), lambda: acked.append(3)
    )
    [(key, value, partition, headers)] = forwarded.sent
    assert (key, partition) == (b"s-1", None)
    assert value == orjson.dumps(valid_event())  # the original bytes
    assert dict(headers)["streamer-source"] == b"clickstream/1/7"
    assert dict(headers)["streamer-key"] == b"not-the-session"
    letter = DeadLetter.model_validate_json(letters.sent[0][1])
    assert (letter.source_topic, letter.source_offset, letter.reason.value) == (
        "checkout",
        3,
        "not_json",
    )
    assert acked == []  # acked only once the broker has what was forwarded
    await stage.publish_fronts({"clickstream": 2, "checkout": 1}, {}, idle_timeout_s=30)
    assert sorted(acked) == [3, 7]
    markers = [orjson.loads(v) for _, v, _, h in forwarded.sent[1:]]
    assert len(markers) == 3 * 2  # every source partition read here, to every output partition
    front = next(m for m in markers if m["source"] == "clickstream/1")
    assert front["front"] == round(NOW.timestamp() * 1000) - 60_000  # valid_event's time
    assert front["sources"] == ["clickstream/0", "clickstream/1", "checkout/0"]
    assert front["idle"] is False


async def test_the_sessions_task_holds_time_until_every_source_has_a_front() -> None:
    forwarded, letters = Forwarded(), Recorder()
    rekey = rekey_stage(forwarded, letters)
    sessions = sessions_stage(letters)
    new = valid_event(event_id="new", occurred_at="2026-11-22T11:59:30Z")
    old = valid_event(event_id="old", occurred_at="2026-11-22T11:50:00Z")
    await rekey.process(source("clickstream", 0, 1, new), lambda: None)
    await rekey.publish_fronts({"clickstream": 2, "checkout": 1}, {}, idle_timeout_s=30)
    await rekey.process(source("clickstream", 1, 1, old), lambda: None)
    to_partition_0 = [sent for sent in forwarded.sent if sent[2] in (None, 0)]
    outcomes = [
        await sessions.process(as_rekeyed(offset, sent), lambda: None)
        for offset, sent in enumerate(to_partition_0)
    ]
    # clickstream/1 and checkout/0 have no front yet: the old event is not late.
    assert outcomes[0] is Offer.ACCEPTED
    assert outcomes[-1] is Offer.ACCEPTED
    assert letters.sent == []
    # The same event forwarded again (the re-key stage restarted) is applied once.
    again = as_rekeyed(len(to_partition_0), forwarded.sent[-1])
    assert await sessions.process(again, lambda: None) is None
    assert sessions.runtimes[0].source_offsets == {"clickstream/0": 2, "clickstream/1": 2}


async def test_a_late_event_is_dead_lettered_under_its_original_coordinates() -> None:
    forwarded, letters = Forwarded(), Recorder()
    rekey = rekey_stage(forwarded, letters)
    rekey.assign({("clickstream", 0)})
    sessions = sessions_stage(letters)
    await rekey.process(source("clickstream", 0, 1, valid_event(event_id="a")), lambda: None)
    await rekey.publish_fronts({"clickstream": 1, "checkout": 0}, {}, idle_timeout_s=30)
    late = valid_event(event_id="late", occurred_at="2026-11-22T11:00:00Z")
    await rekey.process(source("clickstream", 0, 2, late), lambda: None)
    to_partition_0 = [sent for sent in forwarded.sent if sent[2] in (None, 0)]
    assert [dict(sent[3]).get(REKEY_KIND_HEADER) for sent in to_partition_0] == [
        None,
        b"front",
        None,
    ]
    for offset, sent in enumerate(to_partition_0):
        await sessions.process(as_rekeyed(offset, sent), lambda: None)
    letter = DeadLetter.model_validate_json(letters.sent[-1][1])
    assert letter.reason.value == "late"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        "clickstream",
        0,
        2,
    )


class SourceLog:
    """A source partition's log read outside the group, and the group's committed offset."""

    def __init__(self, committed: int | None = None) -> None:
        self.reads: list[tuple[str, int, int, int]] = []
        self.committed = committed

    async def read(
        self, topic: str, partition: int, start: int, end: int
    ) -> tuple[int, list[SourceMessage]]:
        self.reads.append((topic, partition, start, end))
        return 0, [
            source(topic, partition, offset, valid_event(event_id=f"e{offset}"))
            for offset in range(start, end)
        ]

    async def committed_offset(self, topic: str, partition: int) -> int | None:
        return self.committed


class RecordedPositions:
    """The re-key stage's durable record of how far each source partition is forwarded (a
    compacted topic in the worker): what a process recorded, the next one reads."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.latest: dict[str, int] = {}
        self.reads = 0
        self.events = events if events is not None else []

    async def recorded(self) -> dict[str, int]:
        self.reads += 1
        return dict(self.latest)

    async def record(self, key: bytes, value: bytes) -> Any:
        self.latest[key.decode()] = int(value)
        self.events.append(f"recorded {key.decode()}={value.decode()}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def guarded_stage(
    log: SourceLog, positions: RecordedPositions | None = None
) -> tuple[RekeyStage, Forwarded]:
    forwarded = Forwarded()
    return rekey_stage(forwarded, Recorder(), log, positions), forwarded


def forwarded_offsets(forwarded: Forwarded) -> list[int]:
    return [int(dict(h)["streamer-source"].rsplit(b"/", 1)[1]) for _, _, _, h in forwarded.sent]


async def test_offsets_faust_skipped_are_read_directly_and_forwarded_first() -> None:
    log = SourceLog(committed=None)
    stage, forwarded = guarded_stage(log)
    for offset in (0, 1, 5):
        await stage.process(source("clickstream", 0, offset, valid_event()), lambda: None)
    assert log.reads == [("clickstream", 0, 2, 5)]
    assert forwarded_offsets(forwarded) == [0, 1, 2, 3, 4, 5]


async def test_a_first_message_past_the_committed_offset_reads_the_hole() -> None:
    log = SourceLog(committed=3)
    stage, forwarded = guarded_stage(log)
    await stage.process(source("clickstream", 1, 6, valid_event()), lambda: None)
    assert log.reads == [("clickstream", 1, 3, 6)]
    assert forwarded_offsets(forwarded) == [3, 4, 5, 6]


async def test_a_hole_at_the_end_of_the_log_is_read_once_the_partition_went_quiet() -> None:
    log = SourceLog(committed=0)
    stage, forwarded = guarded_stage(log)
    await stage.process(source("checkout", 0, 0, valid_event()), lambda: None)
    await stage.repair_stalls({("checkout", 0): 3})  # just read: the rest may be on its way
    assert log.reads == []
    stage._last_read["checkout/0"] -= STALL_REPAIR_S
    await stage.repair_stalls({("checkout", 0): 3, ("clickstream", 5): 9})  # 5: not ours
    assert log.reads == [("checkout", 0, 1, 3)]
    assert forwarded_offsets(forwarded) == [0, 1, 2]


class _Unconfirmed:
    """A send whose delivery the broker confirms only when told."""

    def __init__(self) -> None:
        self.broker_has_it = asyncio.Event()

    def __await__(self) -> Any:
        return self.broker_has_it.wait().__await__()


async def test_the_rekey_fronts_go_out_without_waiting_and_acks_follow_the_broker() -> None:
    forwarded, letters = Forwarded(), Recorder()
    stage = rekey_stage(forwarded, letters)
    delivery = _Unconfirmed()

    async def forward(key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
        await forwarded(key, value, partition, headers)
        return delivery

    stage._forward = forward
    acked: list[int] = []
    await stage.process(source("clickstream", 1, 7, valid_event()), lambda: acked.append(7))
    await asyncio.wait_for(
        stage.send_fronts({"clickstream": 2, "checkout": 1}, {}, idle_timeout_s=30), 5
    )
    assert len(forwarded.sent) == 1 + 3 * 2  # the event, then every front to every partition
    acknowledging = Beside("rekey.acknowledge")
    acknowledging.start(stage.acknowledge)
    await asyncio.sleep(0.01)
    assert acked == []  # the broker does not have the forwarded event yet
    # The next tick sends the fronts again; the acks wait for the broker, once.
    await stage.process(source("clickstream", 1, 8, valid_event(event_id="e-2")), lambda: None)
    await stage.send_fronts({"clickstream": 2, "checkout": 1}, {}, idle_timeout_s=30)
    assert not acknowledging.start(stage.acknowledge)
    delivery.broker_has_it.set()
    await acknowledging.wait()
    assert acked == [7]
    acknowledging.raise_failed()


async def test_positions_are_recorded_once_forwarded_and_before_the_input_is_acked() -> None:
    events: list[str] = []
    positions = RecordedPositions(events)
    stage, _ = guarded_stage(SourceLog(committed=7), positions)
    for offset in (7, 8):
        await stage.process(
            source("clickstream", 1, offset, valid_event(event_id=f"e{offset}")),
            lambda offset=offset: events.append(f"acked {offset}"),
        )
    await stage.acknowledge()
    assert events == ["recorded clickstream/1=9", "acked 7", "acked 8"]
    await stage.acknowledge()  # nothing new: nothing recorded again
    assert positions.latest == {"clickstream/1": 9}
    assert len(events) == 3


async def test_a_hole_an_earlier_process_committed_past_is_read_after_a_restart() -> None:
    """The earlier process forwarded offsets up to 4 and recorded it; the group's commit then
    moved to 10 without offsets 4..9 being forwarded (Faust skipped them). The next process
    starts from the record, not the commit: the hole is read and forwarded first."""
    positions = RecordedPositions()
    earlier, _ = guarded_stage(SourceLog(committed=0), positions)
    for offset in range(4):
        await earlier.process(source("clickstream", 1, offset, valid_event()), lambda: None)
    await earlier.acknowledge()
    assert positions.latest == {"clickstream/1": 4}
    log = SourceLog(committed=10)
    restarted, forwarded = guarded_stage(log, positions)
    await restarted.process(source("clickstream", 1, 10, valid_event()), lambda: None)
    assert log.reads == [("clickstream", 1, 4, 10)]
    assert forwarded_offsets(forwarded) == [4, 5, 6, 7, 8, 9, 10]
    await restarted.acknowledge()
    assert positions.latest == {"clickstream/1": 11}


async def test_an_assignment_reads_the_record_again() -> None:
    """A partition that comes back after another owner forwarded more starts from that
    owner's record, not from what this process had."""
    positions = RecordedPositions()
    stage, forwarded = guarded_stage(SourceLog(committed=0), positions)
    await stage.process(source("clickstream", 0, 0, valid_event()), lambda: None)
    stage.assign({("checkout", 0)})  # clickstream/0 goes to another worker
    positions.latest["clickstream/0"] = 20  # which forwards up to 19 and records it
    stage.assign({("clickstream", 0), ("checkout", 0)})  # and it comes back
    await stage.process(source("clickstream", 0, 20, valid_event()), lambda: None)
    assert forwarded_offsets(forwarded) == [0, 20]  # no hole read: 1..19 were forwarded
    assert positions.reads == 2


def _without(header: str, sent: tuple[Any, ...]) -> tuple[Any, ...]:
    key, value, partition, headers = sent
    return key, value, partition, [(name, v) for name, v in headers if name != header]


def _with(header: str, content: bytes, sent: tuple[Any, ...]) -> tuple[Any, ...]:
    key, value, partition, headers = _without(header, sent)
    return key, value, partition, [*headers, (header, content)]


async def _through_sessions(sent: list[tuple[Any, ...]], letters: Recorder) -> list[Any]:
    sessions = sessions_stage(letters)
    outcomes = [
        await sessions.process(as_rekeyed(offset, one), lambda: None)
        for offset, one in enumerate(sent)
    ]
    saved = sessions.runtimes[0].task.checkpoint(full=True)
    return [outcomes, orjson.dumps(saved.sessions), saved.windows]


async def _forwarded_events(decoder: EventDecoder | None = None) -> list[tuple[Any, ...]]:
    forwarded = Forwarded()
    rekey = rekey_stage(forwarded, Recorder(), decoder=decoder)
    for offset, second in enumerate([10, 20, 30]):
        at = f"2026-11-22T11:59:{second}Z"
        event = valid_event(event_id=f"e{offset}", occurred_at=at, cart_value=21.0 + offset)
        await rekey.process(source("clickstream", 0, offset, event), lambda: None)
    return forwarded.sent


async def test_the_sessions_stage_takes_the_rekey_stages_decode_as_if_it_decoded_itself() -> None:
    sent = await _forwarded_events()
    assert all(REKEY_DECODED_HEADER in dict(headers) for _, _, _, headers in sent)
    taken, decoded_again = Recorder(), Recorder()
    fast = await _through_sessions(sent, taken)
    slow = await _through_sessions([_without(REKEY_DECODED_HEADER, s) for s in sent], decoded_again)
    assert fast[0] == [Offer.ACCEPTED] * 3
    assert fast == slow
    assert taken.sent == decoded_again.sent == []


async def test_a_decode_by_another_decoder_is_not_taken_the_original_is_decoded() -> None:
    # A re-key stage keeping no fields (another deploy's funnels): its decode lacks the cart
    # value the sessions stage keeps, so the sessions stage decodes the original bytes.
    other = ContractDecoder(DecodeLimits(), frozenset())
    assert other.fingerprint != worker_decoder().fingerprint
    letters = Recorder()
    outcomes, *_ = await _through_sessions(await _forwarded_events(other), letters)
    assert outcomes == [Offer.ACCEPTED] * 3
    assert letters.sent == []


async def test_a_malformed_decode_is_dead_lettered_with_the_original_bytes() -> None:
    sent = await _forwarded_events()
    hostile = [b"\xff\xfe", b"[1]", b'{"a": 1}', orjson.dumps([1, worker_decoder().fingerprint])]
    letters = Recorder()
    broken = [
        _with(
            REKEY_SOURCE_HEADER,
            b"clickstream/0/%d" % offset,
            _with(REKEY_DECODED_HEADER, content, sent[0]),
        )
        for offset, content in enumerate(hostile)
    ]
    outcomes, *_ = await _through_sessions(broken, letters)
    assert outcomes == [None] * len(hostile)
    for offset, ((_, value), (_, original, _, _)) in enumerate(
        zip(letters.sent, broken, strict=True)
    ):
        letter = DeadLetter.model_validate_json(value)
        assert letter.reason.value == "schema_violation"
        assert letter.field == REKEY_DECODED_HEADER
        assert (letter.source_topic, letter.source_offset) == ("clickstream", offset)
        assert base64.b64decode(letter.payload_base64) == original
