"""The Faust floor: a bare Faust agent on the same topics that only decodes each message.

Run as a subprocess by the harness: ``python -m benchmarks.faust_floor BOOTSTRAP TOPICS TOTAL
OUT MODE`` with MODE ``each`` (per-event iteration), ``take`` (``stream.take(500, within=1)``)
or ``noack`` (the worker's way: ``stream.noack().events()``, acked in bulk), each optionally
suffixed ``-lifted``: the same agent on the consumer, source schema and stream buffer the
worker runs (``streamer.faust_consumer``: Faust's consumer with a cheaper hand-over of each
message, and raw bytes without Faust's codec lookups; ``stream_buffer_messages``). Its own app
id and consumer group, memory store, no tables. Writes ``{"events": n, "seconds": s}`` to OUT
once it has seen TOTAL messages (seconds from the first message to the last), then stops.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import faust
import orjson

from streamer import faust_consumer
from streamer.decode import DecodeLimits, decode_event
from streamer.settings import Settings

LIFTED = "-lifted"  # a mode's suffix: the same agent on the worker's consumer
WORKER_STREAM_BUFFER = Settings.model_fields["stream_buffer_messages"].default


def main() -> None:
    bootstrap, topics, total_text, out, variant = sys.argv[1:6]
    total = int(total_text)
    mode, lifted = variant.removesuffix(LIFTED), variant.endswith(LIFTED)
    app = (faust_consumer.App if lifted else faust.App)(
        f"bench-floor-{variant}-{os.getpid()}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        **({"stream_buffer_maxsize": WORKER_STREAM_BUFFER} if lifted else {}),
    )
    # Lifted: the worker's consumer and its raw schema; stock: Faust's own raw codecs.
    raw: dict[str, Any] = (
        {"schema": faust_consumer.RawSchema()}
        if lifted
        else {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
    )
    source = app.topic(*topics.split(","), **raw)
    limits = DecodeLimits()
    seen = 0
    started = 0.0

    def count(value: Any) -> None:
        nonlocal seen, started
        if not started:
            started = time.perf_counter()
        decode_event(value, received_at=datetime.now(UTC), limits=limits)
        seen += 1
        if seen == total:
            elapsed = time.perf_counter() - started
            with open(out, "wb") as handle:
                handle.write(orjson.dumps({"events": seen, "seconds": elapsed, "mode": variant}))
            os.kill(os.getpid(), signal.SIGTERM)  # Faust's own clean shutdown

    async def agent(stream: Any) -> None:
        if mode == "noack":
            held: list[Any] = []
            async for event in stream.noack().events():
                count(event.value)
                held.append(event)
                if len(held) >= 5000:
                    for waiting in held:
                        waiting.ack()
                    held = []
        elif mode == "take":
            async for values in stream.take(500, within=1):
                for value in values:
                    count(value)
        else:
            async for value in stream:
                count(value)

    app.agent(source, name="floor")(agent)
    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
