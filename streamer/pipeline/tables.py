"""Sends a stage can wait for: a Faust table whose changelog writes are confirmed, and the
records a stage sends to its output topics, for stages whose input offsets must not be
committed before the state and outputs that reflect them are on the broker."""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from faust import streams as faust_streams

from streamer.errors import OutputRefusedError

__all__ = [
    "ConfirmedTable",
    "Deliveries",
    "confirmed_table",
    "in_partition",
    "stopping_the_worker_on",
]

log = logging.getLogger(__name__)


@asynccontextmanager
async def stopping_the_worker_on(
    app: Any, what: str, errors: type[BaseException] | tuple[type[BaseException], ...]
) -> AsyncIterator[None]:
    """Stop the worker (exit 1) when ``errors`` escape the block, with the input unacked:
    Faust would restart the agent and go on past a produce or state write the broker refused,
    and the next start resumes from the last state written instead. Logged as ``what``."""
    try:
        yield
    except errors as exc:
        log.critical("%s, stopping the worker: %r", what, exc)
        await app.crash(exc)
        raise


class Deliveries:
    """Produce futures not confirmed yet. ``confirm`` waits for every one added so far and
    raises the broker's refusal as :class:`OutputRefusedError` (Faust only logs it, and the
    offset commit does not wait)."""

    def __init__(self) -> None:
        self._pending: list[Any] = []

    def add(self, sent: Any) -> None:
        self._pending.append(sent)

    def sender(self, topic: Any) -> Callable[[bytes | None, bytes], Awaitable[None]]:
        """A send to ``topic`` whose delivery this confirms."""

        async def send(key: bytes | None, value: bytes) -> None:
            self.add(await topic.send(key=key, value=value))

        return send

    async def confirm(self) -> None:
        pending, self._pending = self._pending, []
        for sent in pending:
            try:
                await sent  # the record's metadata once the broker has it
            except Exception as exc:
                raise OutputRefusedError(f"the broker refused a record: {exc!r}") from exc


class ConfirmedTable(faust.Table[str, bytes]):
    """faust.Table whose changelog sends a stage can wait for. Through the dict API Faust
    drops each send's future: a record the broker refuses is only logged, and the commit's
    producer flush gives up on Faust's send buffer after 0.1 s without a send, so an input
    offset can be committed before (or without) the state that reflects it. ``confirm_sent``
    waits for every send made so far and raises the broker's refusal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changelog_sends = Deliveries()

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        sent = super().send_changelog(*args, **kwargs)
        self._changelog_sends.add(sent)
        return sent

    async def confirm_sent(self) -> None:
        await self._changelog_sends.confirm()


def confirmed_table(app: Any, name: str, *, partitions: int, **options: Any) -> ConfirmedTable:
    """A str -> bytes :class:`ConfirmedTable` named ``name``, registered with ``app``."""
    table = ConfirmedTable(
        app,
        name=name,
        beacon=app.tables.beacon,
        key_type=str,
        value_type=bytes,
        partitions=partitions,
        **options,
    )
    app.tables.add(table)
    return table


@dataclass(frozen=True)
class _MarkerMessage:
    topic: str  # an input topic: Faust checks its partition count against the changelog's
    partition: int


class _PartitionMarker:
    """Stands for "an event of this partition" while a stage writes a table outside its
    agent's iteration (a timer, a read outside the group)."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _MarkerMessage(topic, partition)


@contextmanager
def in_partition(topic: str, partition: int) -> Iterator[None]:
    """Table writes in this block go to ``partition``'s changelog (and RocksDB store): Faust
    routes a write by the event being processed, read from a context variable that the
    block sets to a marker with what Faust reads (``.message.topic/.partition``)."""
    marker = _PartitionMarker(topic, partition)
    token = faust_streams._current_event.set(weakref.ref(marker))  # type: ignore[arg-type]
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
