"""``python -m benchmarks.plan_micro [--events 5000] [--repeat 7]``: microseconds per event of
the compiled tracking plan against ``decode_event``, on the same message bytes (no broker).

The events are the benchmark's shop traffic (``benchmarks.data.make_dataset``), streamer's own
envelope; the default plan (``preset:streamer``) and ``decode_event`` must accept every one.
The vendor presets run on their example files (``tests/unit/plan_examples``) repeated to the
same count. Best of ``--repeat`` ``timeit`` runs; a shared 2-core machine is noisy: read the
ratios. The figures go to docs/tracking-plan.md by hand.
"""

from __future__ import annotations

import argparse
import timeit
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from streamer.decode import DecodeLimits, Rejection, decode_event
from streamer.plan.compile import PlannedEvent, compile_plan
from streamer.plan.load import load_plan

from .data import make_dataset

EXAMPLES = Path(__file__).resolve().parents[1] / "tests/unit/plan_examples"


def _best(function: object, items: list[object], repeat: int) -> float:
    """Microseconds per item, best of ``repeat`` runs over every item."""
    runs = timeit.repeat(lambda: [function(i) for i in items], number=1, repeat=repeat)  # type: ignore[operator]
    return min(runs) / len(items) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    raws = [orjson.dumps(event) for event in make_dataset(args.events).arrivals]
    received = datetime.now(UTC)
    limits = DecodeLimits(max_age=timedelta(days=36500), max_future_skew=timedelta(days=36500))
    default = compile_plan(load_plan("preset:streamer"))
    for raw in raws:
        assert not isinstance(decode_event(raw, received_at=received, limits=limits), Rejection)
        assert isinstance(default.decode(raw), PlannedEvent), default.decode(raw)
    documents = [orjson.loads(raw) for raw in raws]
    rows = [
        ("decode_event (bytes -> pydantic model)",
         _best(lambda r: decode_event(r, received_at=received, limits=limits), raws, args.repeat)),  # type: ignore[arg-type]
        ("preset:streamer, CompiledPlan.decode (bytes -> PlannedEvent)",
         _best(default.decode, raws, args.repeat)),  # type: ignore[arg-type]
        ("preset:streamer, CompiledPlan.validate (dict -> PlannedEvent)",
         _best(default.validate, documents, args.repeat)),  # type: ignore[arg-type]
        ("orjson.loads alone", _best(orjson.loads, raws, args.repeat)),  # type: ignore[arg-type]
    ]  # fmt: skip
    for preset in ("segment", "posthog", "snowplow"):
        compiled = compile_plan(load_plan(f"preset:{preset}"))
        lines = [line.encode() for line in (EXAMPLES / f"{preset}.jsonl").read_text().splitlines()]
        items = (lines * (len(raws) // len(lines) + 1))[: len(raws)]
        assert all(isinstance(compiled.decode(i), PlannedEvent) for i in items)
        rows.append(
            (f"preset:{preset}, CompiledPlan.decode", _best(compiled.decode, items, args.repeat))
        )  # type: ignore[arg-type]
    baseline = rows[0][1]
    print(f"{len(raws)} events, best of {args.repeat}")
    print("| path | µs per event | vs decode_event |")
    print("| --- | ---: | ---: |")
    for name, micros in rows:
        print(f"| {name} | {micros:.2f} | {micros / baseline:.2f}x |")


if __name__ == "__main__":
    main()
