"""A Faust table whose changelog writes can be waited for, for stages whose input offsets
must not be committed before the state that reflects them is on the broker."""

from __future__ import annotations

from typing import Any

import faust

__all__ = ["ConfirmedTable", "confirmed_table"]


class ConfirmedTable(faust.Table[str, bytes]):
    """faust.Table whose changelog sends a stage can wait for. Through the dict API Faust
    drops each send's future: a record the broker refuses is only logged, and the commit's
    producer flush gives up on Faust's send buffer after 0.1 s without a send, so an input
    offset can be committed before (or without) the state that reflects it. ``confirm_sent``
    waits for every send made so far and raises the broker's refusal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[Any] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        sent = super().send_changelog(*args, **kwargs)
        self._unconfirmed.append(sent)
        return sent

    async def confirm_sent(self) -> None:
        unconfirmed, self._unconfirmed = self._unconfirmed, []
        for sent in unconfirmed:
            await sent  # the record's metadata once the broker has it; raises if refused


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
