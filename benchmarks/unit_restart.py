"""A worker's restart with N open units of a 14-day user funnel stored on its disk: seconds
from the process's start to the first event its unit tasks applied. ``python -m
benchmarks.unit_restart [--units N] [--out FILE]`` (a local broker of its own, or the cluster
at ``STREAMER_KAFKA_BOOTSTRAP``).

1. A real ``streamer worker`` with ``benchmarks/users-14d.yaml`` alone (default settings but
   for names) applies a few hundred users' events, checkpoints every unit task and stops
   politely (SIGTERM).
2. With the worker stopped, unit task 0's store on its disk (``<data_dir>/units/0``) is
   filled with N more units (copies of a real open unit of that funnel, each under its own
   id, with its own times: landed and viewed a product 1 to 5 days ago, so none is due before
   its 14 days end) and given back the meta record the worker's last checkpoint wrote (the
   log position and owner, so the log vouches for the store), its open counts raised by N.
3. The worker starts again on the same disk; new users' events wait on the input topic: the
   seconds from the start of the process to the first input message it handled (the restart
   benchmark's measure), and to the first event a unit task applied (which also waits for the
   watermark: the checkout topic, silent here, holds it for the idle timeout, 30 s), with unit
   task 0's restore as its log reports it (kept, not rebuilt, and with N units).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from streamer.funnel.definition import load_funnel
from streamer.funnel.session import CompiledFunnel
from streamer.kafka_local import LocalKafka
from streamer.pipeline.sessions.unit_store import UnitStore
from streamer.settings import Settings
from streamer.testing import WorkerProcess, produce

from .__main__ import _bench_settings
from .core import _raw
from .kafka_runs import _scrape, processed, unit_counted, worker_settings
from .procs import Children, bench_broker, deadline_loop
from .unit_store import _fill, _index, _template
from .user_runs import USERS_14D

_USERS = 300  # users of the first run: every unit partition gets some
_DAY_MS = 86_400_000


def _events(users: range, at_ms: int, apart_ms: int, prefix: str) -> list[tuple[str, bytes]]:
    """A landing and a product view for each user, keyed by session, users ``apart_ms``
    apart from ``at_ms`` on (the watermark passes the earlier ones as the later come)."""
    out = []
    for user in users:
        session = f"{prefix}-s-{user}"
        for seq, landing in ((1, True), (2, False)):
            event = orjson.loads(_raw(session, seq, at_ms + user * apart_ms + seq, landing))
            event["user_id"] = f"{prefix}-u-{user}"
            out.append((session, orjson.dumps(event)))
    return out


def _send(settings: Settings, events: list[tuple[str, bytes]]) -> None:
    asyncio.run(produce(settings, ((settings.clickstream_topic, k.encode(), v) for k, v in events)))


def _wait_applied(worker: WorkerProcess, settings: Settings, at_least: int) -> float | None:
    """Seconds until the unit tasks applied ``at_least`` events (scraped every 20 ms), and
    until the worker handled its first input message (None: before the first scrape)."""
    began = time.monotonic()
    first_input = None
    for _ in deadline_loop(600, f"unit tasks applying ({worker.log_path})", interval=0.02):
        values = _scrape(worker)
        if values is not None and first_input is None and processed(values) > 0:
            first_input = time.monotonic() - began
        if values is not None and unit_counted(values, settings) >= at_least:
            break
    return first_input


def _fill_store(path: Path, units: int, now_ms: int) -> tuple[float, int]:
    """Add ``units`` units to the stopped worker's store at ``path``, keeping its meta record
    (the log vouches for it) with the open counts raised; seconds and units stored."""
    funnel = CompiledFunnel(load_funnel(USERS_14D))
    # Spread 37 ms apart by ``_fill``: 10 million units span 4.3 days.
    template = _template(funnel, now_ms - 5 * _DAY_MS)
    began = time.perf_counter()
    store = UnitStore(path, cache_units=100_000)
    meta = dict(store.meta)
    if not meta.get("log"):
        raise RuntimeError(f"{path}: no checkpoint of the worker's in the store's meta: {meta}")
    _fill(store, template, units)
    index: dict[str, Any] = dict(meta["index"])
    opened = {(f, stage): n for f, stage, n in _index(funnel, template, units)["open"]}
    for f, stage, n in index.get("open", []):
        opened[(f, stage)] = opened.get((f, stage), 0) + n
    index["open"] = [[f, stage, n] for (f, stage), n in sorted(opened.items())]
    store.commit(
        {}, (), {key: value for key, value in meta.items() if key != "units"} | {"index": index}
    )
    stored = len(store.sessions)
    store.close()
    return time.perf_counter() - began, stored


def measure(
    units: int, bootstrap: str, workdir: Path, keep_log: Path | None = None
) -> dict[str, Any]:
    settings = worker_settings(
        _bench_settings(bootstrap).model_copy(update={"funnels": (USERS_14D,)}),
        workdir,
        "unit-restart",
    )
    now_ms = round(time.time() * 1000)
    children = Children()
    worker = children.track(WorkerProcess(settings, workdir / "worker.log"))
    try:
        worker.start(ready_timeout=120)  # (it creates its topics)
        _send(settings, _events(range(_USERS), now_ms - 2 * 3_600_000, 12_000, "first"))
        _wait_applied(worker, settings, _USERS)  # (the last ones wait for the watermark)
        time.sleep(3 * settings.checkpoint_interval_seconds)  # every unit task checkpointed
        worker.stop(timeout=60)
        fill_s, stored = _fill_store(settings.data_dir / "units" / "0", units, now_ms)
        _send(settings, _events(range(20), now_ms - 1_800_000, 60_000, "second"))
        log_size = worker.log_path.stat().st_size
        began = time.monotonic()
        worker.start(ready_timeout=300)
        serving = time.monotonic() - began
        first_input = _wait_applied(worker, settings, 1)  # (a new process: counters at 0)
        first_event = time.monotonic() - began
        if first_input is not None:
            first_input += serving
        log_text = worker.log_path.read_text(errors="replace")[log_size:]
        if keep_log is not None:
            shutil.copy(worker.log_path, keep_log)
    finally:
        worker.stop(timeout=60)
        children.stop_all()
    # Session task 0 and unit task 0 both log "partition 0": the unit task holds the units.
    restored = max(
        re.finditer(
            r"partition 0: restored (\d+) sessions.*?\(([\d.]+)s\)(; units on disk kept)?",
            log_text,
        ),
        key=lambda found: int(found.group(1)),
        default=None,
    )
    return {
        "units_added": units,
        "units_in_store_0": stored,
        "fill_s": fill_s,
        "serving_s": serving,
        # The first input message handled (applied, or skipped as applied before): the
        # restart benchmark's measure. The first unit event waits besides for the watermark:
        # the checkout topic gets nothing here, so it holds it for STREAMER_IDLE_TIMEOUT_SECONDS.
        "first_input_message_s": first_input,
        "first_unit_event_s": first_event,
        "unit_task_0_restored": None if restored is None else int(restored.group(1)),
        "unit_task_0_restore_s": None if restored is None else float(restored.group(2)),
        "unit_task_0_kept": bool(restored and restored.group(3)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unit_restart")
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="streamer-unit-restart-"))
    broker: LocalKafka | None = None
    try:
        bootstrap = os.environ.get("STREAMER_KAFKA_BOOTSTRAP", "")
        if not bootstrap:
            broker = bench_broker(workdir)
            broker.up()
            bootstrap = broker.bootstrap
        keep_log = None if args.out is None else args.out.with_suffix(".worker.log")
        result = measure(args.units, bootstrap, workdir, keep_log)
    finally:
        if broker is not None:
            broker.down()
        shutil.rmtree(workdir, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
