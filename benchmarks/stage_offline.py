"""The sessions stage alone, no Kafka: CPU microseconds per message of ``SessionsStage.process``.

The messages are the Kafka benchmark's (``benchmarks.data.make_dataset``, then the closing
events), keyed by session id, on partition ``crc32(key) % 4`` of their topic with offsets from 0
and the broker time of the unit tests (the newest event time so far). They go through the unit
tests' in-memory stage (``tests.support.stage_harness.make_harness``, 5 s checkpoint interval)
with a publish every 5000 messages, as the worker's timer publishes. Time is made deterministic
so that two runs do the same work: the dataset is generated as of the helpers' ``NOW``, and the
stage's monotonic clock advances 50 µs per message (about the worker's pace), so checkpoints
fall on the same messages whatever the machine's speed. The messages themselves are kept out of
the garbage collector's passes (``gc.freeze``): the worker does not hold them.

python -m benchmarks.stage_offline [--events N] [--repeat K] [--dump FILE]

prints the process CPU time per message (and wall time) of each pass; ``--dump`` writes
everything the stage produced (partials, abandonments, dead letters, the state table after a
last checkpoint, each task's state, the counters) so that two versions of the code can be
compared byte for byte (with the same ``PYTHONHASHSEED``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
import types
import zlib
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import orjson

import tests.support.traffic
from streamer.pipeline.messages import SourceMessage
from streamer.pipeline.sessions import committer
from streamer.pipeline.sessions import runtime as runtime_module
from streamer.pipeline.sessions import stage as sessions
from streamer.settings import Settings
from streamer.simulate import topic_for
from tests.support.stage_harness import NOW, Harness, make_harness
from tests.support.traffic import at_ms

from .data import make_dataset

PARTITIONS = 4
PUBLISH_EVERY = 5000
TICK_S = 50e-6  # the stage's monotonic clock per message


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> _FrozenDatetime:
        return cls.fromtimestamp(NOW.timestamp(), tz=tz or UTC)


def source_messages(events: int) -> list[SourceMessage]:
    with mock.patch.object(tests.support.traffic, "datetime", _FrozenDatetime):
        data = make_dataset(events)
    settings = Settings()
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    broker_ms = 0
    out = []

    def add(topic: str, partition: int, key: bytes, value: bytes, at: int) -> None:
        nonlocal broker_ms
        broker_ms = max(broker_ms, at)  # broker time only grows along a log
        offset = offsets[(topic, partition)]
        offsets[(topic, partition)] += 1
        out.append(SourceMessage(topic, partition, offset, broker_ms, key, value))

    for event in data.arrivals:
        key = event["session_id"].encode()
        topic = topic_for(settings, event["event_type"])
        add(topic, zlib.crc32(key) % PARTITIONS, key, orjson.dumps(event), at_ms(event))
    for topic, partition, key, value in data.closing(settings):
        add(topic, partition, key, value, data.closing_ms)
    return out


class _Clock:
    """The stage module's ``time``: monotonic advanced by the driver, wall time frozen."""

    def __init__(self) -> None:
        self.now = 0.0

    def module(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            monotonic=lambda: self.now,
            time=lambda: NOW.timestamp(),
            perf_counter=time.perf_counter,
        )


async def run(messages: list[SourceMessage]) -> tuple[Harness, float, float]:
    """One pass over ``messages`` on a fresh stage: (harness, CPU seconds, wall seconds)."""
    clock = _Clock()
    with (
        mock.patch.object(sessions, "time", clock.module()),
        mock.patch.object(committer, "time", clock.module()),
        mock.patch.object(runtime_module, "time", clock.module()),
    ):
        harness = make_harness(interval_s=5.0)
        stage = harness.stage
        acked = harness.acked
        for partition in range(PARTITIONS):
            stage.ensure(partition)  # as the timer does on an assignment
            # A runtime's own times come from the real clock (bound at import): set on ours.
            runtime = stage.runtimes[partition]
            runtime.created_at = runtime.checkpointed_at = runtime.published_at = clock.now

        def ack() -> None:
            acked.append(0)

        cpu, wall = time.process_time(), time.perf_counter()
        for count, message in enumerate(messages, 1):
            clock.now += TICK_S
            await stage.process(message, ack)
            if count % PUBLISH_EVERY == 0:
                await stage.publish()
                await asyncio.sleep(0)  # the write-outs started meanwhile run
        await stage.publish()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await stage.close()  # the last checkpoint of every partition
    return harness, cpu, wall


def dump(harness: Harness) -> bytes:
    """Everything the stage produced and holds, in a stable order."""
    stage = harness.stage
    tasks = {}
    for partition, runtime in sorted(stage.runtimes.items()):
        task = runtime.task
        tasks[str(partition)] = {
            "watermark": task.watermark_ms,
            "offsets": runtime.offsets,
            "generation": runtime.generation,
            "log": [runtime.log_first, runtime.log_next, runtime.full_bytes, runtime.delta_bytes],
            "sessions": {sid: s.to_json() for sid, s in sorted(task.sessions.items())},
            "windows": [[list(k), c.to_json()] for k, c in sorted(task.windows.items())],
            "open": sorted([list(k), n] for k, n in task.open_sessions.items()),
            "pending": sorted(task._pending),
            "wakes": sorted(task._wakes._heap),  # type: ignore[attr-defined]
            "fronts": stage.inputs.fronts_of(partition),
        }
    counters = sorted(
        [sample.name, sorted(sample.labels.items()), sample.value]
        for metric in harness.metrics.registry.collect()
        if "seconds" not in metric.name  # timings differ from run to run
        for sample in metric.samples
        if not sample.name.endswith("_created")
    )
    sent = [
        (b"partial", harness.partials.sent),
        (b"abandonment", harness.abandonments.sent),
        (b"dead_letter", harness.dead_letters.sent),
    ]
    lines = [
        *(kind + b" " + (key or b"") + b" " + value for kind, out in sent for key, value in out),
        *(b"table " + key.encode() + b" " + value for key, value in sorted(harness.table.items())),
        b"tasks " + orjson.dumps(tasks),
        b"counters " + orjson.dumps(counters),
        b"acked " + str(len(harness.acked)).encode(),
    ]
    return b"\n".join(lines) + b"\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1, help="timed passes (fresh stage each)")
    parser.add_argument("--dump", type=Path, help="write what the (last) pass produced here")
    args = parser.parse_args()
    if args.dump and "PYTHONHASHSEED" not in os.environ:
        # Which sessions a delta record holds follows the iteration order of sets of ids.
        parser.error("--dump compares runs: set PYTHONHASHSEED (the same for both)")
    messages = source_messages(args.events)
    # The worker holds no such list: the collector's full passes would count it as the stage's.
    gc.freeze()
    for _ in range(args.repeat):
        harness, cpu, wall = asyncio.run(run(messages))
        print(
            f"{len(messages)} messages: {cpu / len(messages) * 1e6:.2f} µs/message CPU, "
            f"{wall / len(messages) * 1e6:.2f} µs/message wall",
            flush=True,
        )
    if args.dump:
        args.dump.write_bytes(dump(harness))


if __name__ == "__main__":
    main()
