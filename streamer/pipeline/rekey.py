"""Re-key stage: the path for producers that do not key events by session id.

One hop is the contract's recommendation (clickstream and checkout keyed by ``session_id`` on
topics with the same partition count). When producers key by something else, or the topics'
partition counts differ, set ``STREAMER_SOURCE_KEYED_BY_SESSION=false`` and this stage runs
first: it reads both topics (any keys, any partition counts), validates every event (rejections
go to the dead-letter topic here, with the original bytes) and forwards the original bytes to
``rekeyed_topic`` keyed by session id, saying in headers where each came from and what it
decoded to (``streamer.pipeline.forwarded``: the sessions stage does not decode it again).

Event time travels in-band so that a backlog on any source partition still holds every
watermark back: once a second the stage sends every partition of the re-keyed topic a *front
marker* per source partition it reads (the newest event time forwarded from it, whether it is
idle: caught up with its log end and silent for ``idle_timeout_seconds``, and the list of all
source partitions). A marker follows the events it covers (one producer, ordered per
partition), and only this stage writes the re-keyed topic, so no outside producer can move a
watermark. Input is acked once what was forwarded is confirmed by the broker; a restart
forwards some events again, which the sessions tasks skip by source offset.

Per source partition the next offset forwarded is recorded durably (a compacted topic,
``{app_id}-rekey-positions``, written once the forwards are confirmed and before their input
is acked), so an owner after a restart or a rebalance starts from it: a hole the group's commit
moved past is read directly even when an earlier process made it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import TP

from streamer.decode import DecodeLimits, Rejection
from streamer.decoders import ContractDecoder, EventDecoder, Ignored
from streamer.funnel.session import NEVER
from streamer.kafka_io import committed_offset, read_topic, topic_partitions
from streamer.metrics import Metrics, UnplannedCounter
from streamer.pipeline.batches import current_messages
from streamer.pipeline.forwarded import encode_forwarded
from streamer.pipeline.input_order import STALL_REPAIR_S, InputPositions, MemoryStore, source_reader
from streamer.pipeline.messages import (
    REKEY_DECODED_HEADER,
    REKEY_FRONT,
    REKEY_KEY_HEADER,
    REKEY_KIND_HEADER,
    REKEY_SOURCE_HEADER,
    REKEY_TIMESTAMP_HEADER,
    SendFn,
    SourceMessage,
    send_rejected,
)
from streamer.pipeline.tables import Deliveries
from streamer.pipeline.timers import Beside, consumer_offsets, install_timer
from streamer.pipeline.topics import dead_letter_topic, record_topic, source_topic
from streamer.settings import Settings

__all__ = ["RekeyStage", "install"]

log = logging.getLogger(__name__)

LAYOUT_REFRESH_S = 60.0

Headers = list[tuple[str, bytes]]
ForwardFn = Callable[[bytes | None, bytes, int | None, Headers], Awaitable[Awaitable[Any]]]
# (topic, partition, start, end) -> (the log start, its messages with start <= offset < end),
# read outside the group
ReadFn = Callable[[str, int, int, int], Awaitable[tuple[int, list[SourceMessage]]]]
# (topic, partition) -> the group's committed offset (None: none yet)
CommittedFn = Callable[[str, int], Awaitable[int | None]]
# The recorded positions: "topic/partition" -> next offset forwarded (the newest record of each)
RecordedFn = Callable[[], Awaitable[dict[str, int]]]
# Record one position: (b"topic/partition", b"offset") -> the produce's future
RecordFn = Callable[[bytes, bytes], Awaitable[Awaitable[Any]]]


async def _nothing_to_read(
    topic: str, partition: int, start: int, end: int
) -> tuple[int, list[SourceMessage]]:
    return start, []  # a stage built without a reader (tests): holes are not read


class RekeyStage:
    def __init__(
        self,
        *,
        topics: tuple[str, ...],
        out_partitions: int,
        metrics: Metrics,
        limits: DecodeLimits,
        forward: ForwardFn,
        send_dead_letter: SendFn,
        flush_producer: Callable[[], Awaitable[None]],
        read_range: ReadFn | None = None,
        committed: CommittedFn | None = None,
        recorded: RecordedFn | None = None,
        record: RecordFn | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        decoder: EventDecoder | None = None,
    ) -> None:
        self.topics = topics
        self._out_partitions = out_partitions
        self._metrics = metrics
        # The worker's decoder: its decode travels with the event (``pipeline.forwarded``).
        self._decoder = decoder or ContractDecoder(limits, frozenset())
        self._unplanned = UnplannedCounter(metrics)
        self._forward = forward
        self._send_dead_letter = send_dead_letter
        self._flush_producer = flush_producer
        self._clock = clock
        self.assigned: set[tuple[str, int]] = set()
        self.fronts: dict[str, int] = {}  # "topic/partition" -> newest event time forwarded
        # Per source partition the next offset to forward; at the first message after an
        # assignment from the recorded one (``recorded``), else the group's committed offset.
        self._read_to = MemoryStore()
        self._recorded_fn = recorded
        self._record = record
        self._recorded: dict[str, int] | None = None  # read once per assignment
        self._written: dict[tuple[str, int], int] = {}  # positions recorded by this process
        self._last_read: dict[str, float] = {}
        self._assigned_at = time.monotonic()
        self._unacked: list[Callable[[], Any]] = []
        self._in_flight = Deliveries()
        read = read_range or _nothing_to_read

        async def start(topic: str, partition: int, faust_at: int) -> int:
            recorded = await self._recorded_position(topic, partition)
            if recorded is not None:
                return recorded
            if committed is None:
                return faust_at
            return await committed(topic, partition) or 0

        self._positions: InputPositions[SourceMessage] = InputPositions(
            who="re-key",
            store=self._read_to,
            read_range=read,
            apply_hole=self._forward_one,
            metrics=metrics,
            start=start,
        )
        self._lock = asyncio.Lock()  # the agent and the stall repair forward in turn

    def assign(self, partitions: set[tuple[str, int]]) -> None:
        for topic, partition in self.assigned - partitions:
            self._read_to.forget(topic, partition)  # its next owner reads on
            self._written.pop((topic, partition), None)
        self._recorded = None  # another owner may have recorded more meanwhile
        self.assigned = set(partitions)
        self._assigned_at = time.monotonic()

    async def _recorded_position(self, topic: str, partition: int) -> int | None:
        if self._recorded_fn is None:
            return None
        if self._recorded is None:
            self._recorded = await self._recorded_fn()
        return self._recorded.get(f"{topic}/{partition}")

    async def process(self, message: SourceMessage, ack: Callable[[], Any]) -> None:
        if (message.topic, message.partition) not in self.assigned and self.assigned:
            self._metrics.revoked_messages.inc()  # its new owner reads it again
            return
        async with self._lock:
            # A copy of one forwarded is forwarded again (the sessions stage skips it by its
            # source offset); a hole before it is read and forwarded first.
            await self._positions.admit(message.topic, message.partition, message)
            await self._forward_one(message)
            # Under the lock: an ack taken by ``acknowledge`` belongs to a forward it confirms.
            self._unacked.append(ack)

    async def repair_stalls(self, positions: dict[tuple[str, int], int]) -> None:
        """A source partition whose consumer position is past what was forwarded, with
        nothing delivered for ``STALL_REPAIR_S`` (a hole at the end of its log): read the
        rest directly. Before its front could be said idle (``idle_timeout_seconds``)."""
        now = time.monotonic()
        for (topic, partition), position in sorted(positions.items()):
            source = f"{topic}/{partition}"
            if (topic, partition) not in self.assigned:
                continue
            if now - self._last_read.get(source, self._assigned_at) < STALL_REPAIR_S:
                continue
            async with self._lock:
                if await self._positions.repair(topic, partition, position):
                    self._last_read[source] = time.monotonic()

    async def _forward_one(self, message: SourceMessage) -> None:
        source = f"{message.topic}/{message.partition}"
        self._positions.applied(message.topic, message.partition, message.offset)
        self._last_read[source] = time.monotonic()
        received_at = message.received_at(otherwise=self._clock())
        result = self._decoder.decode(message.value, topic=message.topic, received_at=received_at)
        if isinstance(result, Ignored):
            self._metrics.events.labels(topic=message.topic, outcome="ignored").inc()
            self._unplanned.count(message.topic, result.name)
        elif isinstance(result, Rejection):
            self._metrics.events.labels(topic=message.topic, outcome="dead_lettered").inc()
            self._in_flight.add(
                await send_rejected(
                    message, result, self._clock(), self._send_dead_letter, self._metrics
                )
            )
        else:
            headers: Headers = [
                (REKEY_SOURCE_HEADER, f"{source}/{message.offset}".encode()),
                (REKEY_TIMESTAMP_HEADER, str(message.timestamp_ms or "").encode()),
                # The sessions stage takes this decode instead of decoding again.
                (REKEY_DECODED_HEADER, encode_forwarded(result, self._decoder.fingerprint)),
            ]
            if message.key is not None:
                headers.append((REKEY_KEY_HEADER, message.key))
            self._in_flight.add(
                await self._forward(result.session_id.encode(), message.value or b"", None, headers)
            )
            at_ms = result.event.at_ms
            if at_ms > self.fronts.get(source, NEVER):
                self.fronts[source] = at_ms

    async def publish_fronts(
        self,
        layout: dict[str, int],
        highwaters: dict[tuple[str, int], int],
        idle_timeout_s: float,
        positions: dict[tuple[str, int], int] | None = None,
    ) -> None:
        """Send every re-keyed partition the front of each source partition read here, wait
        for the broker, then ack what was forwarded before."""
        await self.send_fronts(layout, highwaters, idle_timeout_s, positions)
        await self.acknowledge()

    async def send_fronts(
        self,
        layout: dict[str, int],
        highwaters: dict[tuple[str, int], int],
        idle_timeout_s: float,
        positions: dict[tuple[str, int], int] | None = None,
    ) -> None:
        """Send every re-keyed partition the front of each source partition read here (after
        the events it covers: one producer, in order). ``positions`` (the consumer's) say
        how far a source is read when nothing came since the assignment (a restart with
        nothing new to read is caught up)."""
        sources = [f"{topic}/{p}" for topic in self.topics for p in range(layout[topic])]
        now = time.monotonic()
        for topic, partition in sorted(self.assigned):
            source = f"{topic}/{partition}"
            end = highwaters.get((topic, partition))
            read_to = self._read_to.get(topic, partition)
            if read_to is None:
                read_to = (positions or {}).get((topic, partition), 0)
            caught_up = end is not None and read_to >= end
            silent = now - self._last_read.get(source, self._assigned_at) >= idle_timeout_s
            marker = orjson.dumps(
                {
                    "source": source,
                    "front": self.fronts.get(source, NEVER),
                    "idle": caught_up and silent,
                    "sources": sources,
                }
            )
            for out in range(self._out_partitions):
                self._in_flight.add(
                    await self._forward(None, marker, out, [(REKEY_KIND_HEADER, REKEY_FRONT)])
                )

    async def acknowledge(self) -> None:
        """Wait until the broker has everything forwarded so far, record how far each source
        partition is forwarded, then ack its input. The acks and positions are taken with
        the forwards they belong to (under the lock, with no wait before the confirm)."""
        async with self._lock:
            acks, self._unacked = self._unacked, []
            positions = {
                (topic, partition): offset
                for (topic, partition), offset in self._read_to.offsets.items()
                if (topic, partition) in self.assigned
            }
            forwarded = self._in_flight.confirm()
        await forwarded  # raises if the broker refused: nothing gets recorded or acked
        await self._flush_producer()
        await self._record_positions(positions)
        for ack in acks:
            ack()

    async def _record_positions(self, positions: dict[tuple[str, int], int]) -> None:
        """Positions of confirmed forwards, recorded (and confirmed) before their input is
        acked: the group's commit never passes what is recorded, so an owner that starts from
        the record reads again only copies, or a hole."""
        if self._record is None:
            return
        recording = Deliveries()
        for (topic, partition), offset in sorted(positions.items()):
            if self._written.get((topic, partition)) != offset:
                key = f"{topic}/{partition}".encode()
                recording.add(await self._record(key, str(offset).encode()))
        await recording.confirm()
        for (topic, partition), offset in positions.items():
            if (topic, partition) in self.assigned:
                self._written[(topic, partition)] = offset


def install(
    app: Any, settings: Settings, metrics: Metrics, decoder: EventDecoder | None = None
) -> RekeyStage:
    """Wire the re-key stage: source topics -> validated events -> ``rekeyed_topic``
    (``decoder``: the worker's, the built-in contract's if None)."""
    topics = (settings.clickstream_topic, settings.checkout_topic)
    source = source_topic(app, *topics)
    dlq = dead_letter_topic(app, settings)

    async def forward(
        key: bytes | None, value: bytes, partition: int | None, headers: Sequence[Any]
    ) -> Any:
        # Straight to the producer: Faust's topic send (codecs, a future message, sensors
        # on send and on delivery) cost as much as the produce itself, per event; the bytes
        # are final here and the default partitioner is the one Faust's send used.
        return await app.producer.send(
            settings.rekeyed_topic, key, value, partition=partition, timestamp=None, headers=headers
        )

    async def send_dead_letter(key: bytes | None, value: bytes) -> Any:
        return await dlq.send(key=key, value=value)

    async def flush_producer() -> None:
        await app.producer.flush()

    async def committed(topic: str, partition: int) -> int | None:
        return await committed_offset(settings, topic, partition)

    positions = record_topic(app, settings.rekey_positions_topic, partitions=1)

    async def recorded() -> dict[str, int]:
        records = await read_topic(settings, settings.rekey_positions_topic)
        return {key.decode(): int(value) for key, value in records if key and value}

    async def record(key: bytes, value: bytes) -> Any:
        return await positions.send(key=key, value=value, partition=0)

    stage = RekeyStage(
        topics=topics,
        out_partitions=settings.topic_partitions,
        metrics=metrics,
        limits=DecodeLimits.of(settings),
        decoder=decoder,
        forward=forward,
        send_dead_letter=send_dead_letter,
        flush_producer=flush_producer,
        read_range=source_reader(settings),
        committed=committed,
        recorded=recorded,
        record=record,
    )

    async def rekey_agent(stream: Any) -> None:
        # In batches, as the sessions agent (decision 0006).
        async for message, ack in current_messages(app, stream, metrics):
            await stage.process(message, ack)

    app.agent(source, name="rekey")(rekey_agent)

    async def on_assigned(sender: Any, assigned: set[Any], **kwargs: Any) -> None:
        stage.assign({(tp.topic, tp.partition) for tp in assigned if tp.topic in topics})

    app.on_partitions_assigned.connect(on_assigned)
    _install_fronts_timer(app, settings, stage, topics)
    return stage


def _install_fronts_timer(
    app: Any, settings: Settings, stage: RekeyStage, topics: tuple[str, str]
) -> None:
    """Every second: each source partition's front to every re-keyed partition (after the
    stalls are repaired), then the acks of what was forwarded before."""
    layout: dict[str, int] = {}  # source topic -> partitions (re-read now and then: they grow)
    layout_read_at = [0.0]
    # Beside the ticks, so that a tick never waits for the broker: the fronts (after the log
    # end offsets, a request, and the sends of the markers), and apart from them the wait
    # before the acks (~2 s on a backlog: every event forwarded since the last tick), so the
    # fronts go out every second meanwhile. Each one at a time.
    sending = Beside("rekey.send_fronts")
    acknowledging = Beside("rekey.acknowledge")

    async def tick() -> None:
        sending.raise_failed()
        acknowledging.raise_failed()
        if not sending.busy:  # else a later tick sends them
            sending.start(send_fronts)

    async def send_fronts() -> None:
        if app.rebalancing:
            return
        # The consumer's assignment is the truth (a static member rejoining after a restart
        # may get its partitions back without the signal above).
        current = {
            (tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in topics
        }
        if current != stage.assigned:
            stage.assign(current)
        if not stage.assigned:
            return
        if not layout or time.monotonic() - layout_read_at[0] > LAYOUT_REFRESH_S:
            counts = {topic: len(await topic_partitions(settings, topic)) for topic in topics}
            if not all(counts.values()):
                # A marker must name every source partition: no fronts until they are known
                # (the watermark holds meanwhile; nothing turns late).
                log.warning("re-key: no partition metadata yet for %s; fronts wait", counts)
                return
            layout.clear()
            layout.update(counts)
            layout_read_at[0] = time.monotonic()
        tps = [TP(topic, partition) for topic, partition in stage.assigned]
        offsets = await consumer_offsets(app, tps)
        if offsets is None:
            return
        highwaters, positions = offsets
        await stage.repair_stalls(positions)
        await stage.send_fronts(dict(layout), highwaters, settings.idle_timeout_seconds, positions)
        acknowledging.start(stage.acknowledge)  # else a later tick acks these too

    install_timer(app, 1.0, tick, "rekey.send_fronts")
