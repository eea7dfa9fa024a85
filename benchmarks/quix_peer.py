"""A peer written with Quix Streams doing the worker's job in spirit, on the same topics.

Run as a subprocess by the harness: ``python -m benchmarks.quix_peer BOOTSTRAP TOPICS TOTAL
OUT STATE_DIR``. One Application, its own consumer group, ``auto_offset_reset="earliest"``:

- both topics (keyed by session id) are read with Quix's JSON deserializer (orjson), event
  time taken from ``occurred_at``;
- per session, in RocksDB state with a changelog (Quix's defaults), the furthest stage of the
  checkout funnel reached in order: landing page view -> product_view -> add_to_cart ->
  checkout_started -> payment_submitted -> order_placed;
- each step forward is re-keyed by stage (``group_by``: one repartition topic) and counted in
  1-minute tumbling windows of event time (2 minutes of grace, like the worker's lateness),
  emitted when final.

No schema validation (the worker validates every event with pydantic), no abandonments, no
dead letters. Writes ``{"events": n, "seconds": s}`` to OUT when TOTAL input messages have
been processed (seconds from the first to the last), then stops.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.state import State

STAGES = (
    "page_view",
    "product_view",
    "add_to_cart",
    "checkout_started",
    "payment_submitted",
    "order_placed",
)
STAGE_OF = {event_type: index for index, event_type in enumerate(STAGES)}
WINDOW_MS = 60_000
GRACE_MS = 120_000


def stage_of(value: dict[str, Any]) -> int:
    stage = STAGE_OF.get(value.get("event_type"), -1)  # type: ignore[arg-type]
    if stage == 0 and value.get("landing") is not True:
        return -1
    return stage


def event_time(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    moment = value.get("occurred_at") if isinstance(value, dict) else None
    if isinstance(moment, int):
        return moment
    if isinstance(moment, str):
        return round(datetime.fromisoformat(moment).timestamp() * 1000)
    return int(timestamp)


def main() -> None:
    bootstrap, topics, total_text, out, state_dir = sys.argv[1:6]
    total = int(total_text)
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{os.getpid()}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    sources = [
        app.dataframe(
            app.topic(
                name,
                value_deserializer="json",
                key_deserializer="bytes",
                timestamp_extractor=event_time,
            )
        )
        for name in topics.split(",")
    ]
    sdf = sources[0]
    for other in sources[1:]:
        sdf = sdf.concat(other)

    seen = 0
    started = 0.0

    def count(value: Any) -> None:
        nonlocal seen, started
        if not started:
            started = time.perf_counter()
        seen += 1
        if seen == total:
            elapsed = time.perf_counter() - started
            with open(out, "wb") as handle:
                handle.write(orjson.dumps({"events": seen, "seconds": elapsed}))
            app.stop()

    def furthest(value: dict[str, Any], state: State) -> dict[str, Any] | None:
        stage = stage_of(value)
        if stage < 0:
            return None
        reached = state.get("stage", -1)
        if stage != reached + 1:  # ordered: only the next stage moves the session on
            return None
        state.set("stage", stage)
        return {"stage": STAGES[stage]}

    def quiet(*args: Any, **kwargs: Any) -> bool:
        return False  # a late step is dropped by the window without a log line

    sdf = sdf.update(count)
    sdf = sdf.apply(furthest, stateful=True)
    sdf = sdf.filter(lambda step: step is not None)
    sdf = sdf.group_by(lambda step: step["stage"], name="stage")
    sdf = sdf.tumbling_window(WINDOW_MS, grace_ms=GRACE_MS, on_late=quiet).count().final()
    app.run()


if __name__ == "__main__":
    main()
