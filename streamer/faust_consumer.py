"""Faust's Kafka consumer with a cheaper hand-over of each message to the streams, and a
schema that hands over raw bytes without Faust's codec machinery.

Faust's fetcher hands every message to the conductor inside ``Service.wait_first(delivery,
suspend_flow.wait())``, which also watches the consumer's stopped and crashed events: four
tasks created, an ``asyncio.wait`` and three cancellations per message, so that a delivery
that has to *wait* (flow control suspended for a rebalance, a stream buffer full, the
producer buffer over its limit) gives up when the flow is suspended or the consumer stops.
On a busy worker that bookkeeping cost more than our whole session state machine.

A delivery waits only in those cases, and each is visible before it starts. So this consumer
delivers directly when none holds (the conductor then runs to the end without suspending:
nothing can change under it) and takes Faust's own path, unchanged, when any does. Acks,
commits, gaps, offsets, pausing of full partitions and rebalances are Faust's: only the
hand-over differs. The Faust floor benchmark measures both (``benchmarks/faust_floor.py``).

:class:`RawSchema` is a ``faust.Schema`` for topics whose keys and values the stages read
as bytes: Faust's own decode of a raw topic goes through its serializer registry and its
settings registry for every key and value only to return the same bytes (about 3.5% of a
busy worker's main thread in a profile), and this one makes the event directly.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import faust
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TPset
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["App", "RawSchema", "Transport"]

_YIELD_EVERY = 100  # messages handed over before the loop lets other tasks run (as Faust)


class _Consumer(faust_aiokafka.Consumer):
    _threaded_producer: bool | None = None  # Faust's producer_threaded, read once

    # Source partitions of the current assignment whose resume waits for its rebalance to end.
    _held: frozenset[Any] = frozenset()

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        """Hold the source partitions of a new assignment paused until the rebalance ends
        (:meth:`release_held`), after the tables are restored and the streams resumed.

        Faust makes every assigned partition fetchable here and pauses them a few awaits
        later, then resumes them once the tables are restored, before it seeks them to their
        committed offsets and resumes the flow, which clears the streams' buffers. A fetch in
        either gap hands source messages to the streams that are then dropped, and a
        partition without a committed offset is not sought back: those offsets are never
        handed over again (the stages' hole guard, ``streamer.pipeline.input_order``, had
        to read them directly, and a stage could be handed input before its table was back)."""
        self._held = frozenset(tp for tp in assigned if not self._is_changelog_tp(tp))
        self._paused_partitions.update(self._held)
        await super().on_partitions_assigned(assigned, generation_id)

    async def perform_seek(self) -> None:
        """Faust's seek of every assigned partition to its committed offset, and of each
        source partition without one to its log start, as ``auto_offset_reset=earliest``
        says. Faust's seek leaves such a partition where the fetcher is, and what the fetcher
        had read of it was dropped in the rebalance (cleared from the streams' buffers, or
        fetched while the partition was made inactive): those offsets were never handed over
        (a re-key run, two SIGKILLs before any commit of the sessions stage: its restart read
        every re-keyed partition's backlog as a hole). Offsets handed over again are copies
        the stages skip."""
        await super().perform_seek()
        uncommitted = {
            tp: 0
            for tp in self.assignment()
            if not self._is_changelog_tp(tp) and self._committed_offset.get(tp) is None
        }
        if uncommitted:
            await self.seek_wait(uncommitted)

    def resume_partitions(self, tps: Any) -> None:
        """Faust's resume, except for the partitions held until the rebalance ends."""
        super().resume_partitions(ensure_TPset(tps) - self._held)

    def release_held(self) -> None:
        """The rebalance ended (tables restored, streams resumed): fetch the held partitions
        from where Faust sought them."""
        held, self._held = self._held, frozenset()
        super().resume_partitions(held & self.assignment())

    def _delivery_may_wait(self, tp: Any) -> bool:
        """Whether the conductor could suspend on a message of ``tp`` (see the module's doc).
        On a backlog the stream buffers stay near full, so a buffer counts only when it is
        full: under that, the conductor puts without waiting."""
        app: Any = self.app
        conductor = app.topics
        return (
            self.suspend_flow.is_set()
            or not app.flow_control.is_active()
            or conductor._tp_to_callback_lock.locked()  # subscriptions being changed
            or self._producer_backlog() > app.producer.buffer.max_messages
            or any(channel.queue.full() for channel in conductor._tp_index.get(tp, ()))
            or self.should_stop
        )

    def _producer_backlog(self) -> int:
        """``ProducerBuffer.size`` without its per-call lookup in Faust's settings registry
        (slow, and this runs per message): the buffer's own queue, unless the producer runs
        in its own thread."""
        app: Any = self.app
        buffer = app.producer.buffer
        if self._threaded_producer is None:
            self._threaded_producer = bool(app.conf.producer_threaded)
        return int(buffer.size) if self._threaded_producer else int(buffer.pending.qsize())

    async def _drain_messages(self, fetcher: Any) -> None:  # the fetcher's loop
        deliver = self.callback
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                batch = self.getmany(timeout=1.0)
                await asyncio.sleep(0)  # getmany may return at once, again and again
                if self.should_stop:
                    continue
                async for tp, message in batch:
                    since_yield += 1
                    if since_yield > _YIELD_EVERY:
                        since_yield = 0
                        await asyncio.sleep(0)
                    offset = message.offset
                    read = read_offsets[tp]
                    if read is not None and offset < read:
                        continue  # read before (Faust drops it the same way)
                    if read and offset - read > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if self._delivery_may_wait(tp):
                        await self.wait_first(deliver(message), self.suspend_flow.wait())
                    else:
                        await deliver(message)
                    read_offsets[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Broker stopped consumer, shutting down...")
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Consumer shutting down for user cancel.")
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class RawSchema(faust.Schema[bytes, bytes]):
    """Keys and values as the broker's bytes (see the module's doc). A message without a
    value is an event with value None, as Faust's raw codec gives it."""

    def __init__(self) -> None:
        super().__init__(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    def compile(self, app: Any, **kwargs: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Any, *, propagate: bool = False) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with the consumer above."""

    Consumer = _Consumer


class App(faust.App):
    """faust.App on ``transport_class`` (Faust builds its consumer's transport here), which
    releases the source partitions its consumer held once a rebalance ends."""

    transport_class: ClassVar[type[Transport]] = Transport

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        consumer: _Consumer = self.consumer  # type: ignore[assignment]  # our transport's
        consumer.release_held()

    def _new_transport(self) -> Any:
        return self.transport_class(self.conf.broker_consumer, self)
