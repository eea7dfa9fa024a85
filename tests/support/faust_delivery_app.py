"""A bare Faust agent on streamer's consumer, for ``test_faust_consumer.py``.

``python -m tests.support.faust_delivery_app BOOTSTRAP TOPIC TOTAL OUT``: reads TOPIC
with a stream buffer of 8 messages and an agent that sleeps now and then, so buffers fill,
partitions pause and the consumer takes both hand-over paths. A table makes Faust go through
its recovery before the streams start. Writes what it saw (partition, offset, value), how often
each path ran and how many messages came while Faust was still rebalancing (restoring tables)
to OUT once TOTAL messages came.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import faust
import orjson

from streamer import faust_consumer

paths = {"direct": 0, "faust": 0}


class _CountingConsumer(faust_consumer.Transport.Consumer):  # type: ignore[misc,valid-type]
    def _delivery_may_wait(self, tp: Any) -> bool:
        may_wait: bool = super()._delivery_may_wait(tp)
        paths["faust" if may_wait else "direct"] += 1
        return may_wait


class _Transport(faust_consumer.Transport):
    Consumer = _CountingConsumer


class _App(faust_consumer.App):
    transport_class = _Transport


def main() -> None:
    bootstrap, topic, total_text, out = sys.argv[1:5]
    total = int(total_text)
    app = _App(
        f"delivery-test-{os.getpid()}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        topic_partitions=4,
        stream_buffer_maxsize=8,
    )
    app.Table("delivery-tables", default=int, partitions=4)  # recovery runs before the streams
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    seen: list[tuple[int, int, str]] = []
    during_rebalance = 0

    async def agent(stream: Any) -> None:
        nonlocal during_rebalance
        async for event in stream.events():
            message = event.message
            during_rebalance += app.rebalancing
            seen.append((message.partition, message.offset, event.value.decode()))
            if len(seen) % 50 == 0:
                await asyncio.sleep(0.05)  # a slow moment: the buffers fill meanwhile
            if len(seen) == total:
                result = {"seen": seen, "paths": paths, "during_rebalance": during_rebalance}
                Path(out).write_bytes(orjson.dumps(result))  # noqa: ASYNC240
                os.kill(os.getpid(), signal.SIGTERM)

    app.agent(source, name="delivery")(agent)
    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
