"""Bytes per open unit of a user funnel, measured on a unit task: the six-step 14-day funnel
of ``benchmarks/users-14d.yaml``, one million units by default, each open at its second step.
``python -m benchmarks.unit_memory [--units N] [--cache N] [--out FILE]``.

A unit task is the core's ``Task`` over the user funnel (as ``install_units`` builds it: the
units kept at rest for the conversion window), fed what the session tasks forward: for each
unit (a 36-character user id) a landing page view and a product view 10 ms apart, decoded by
the worker's path (``benchmarks.core``), given to the task with the unit's user id; the
watermark follows 2 s behind, and a checkpoint every 50k units, as the worker takes them.

Two runs, each in a process of its own (resident memory is measured as growth from the start):

- ``--cache 0``: every unit in memory (the task's dict and wake heap);
- ``--cache N``: the unit task's store on disk (``streamer.pipeline.sessions.unit_store``)
  behind a cache of N units (the worker's ``STREAMER_UNIT_CACHE``, default 100,000), each
  checkpoint committed to it as the committer does; plus its bytes on disk.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from streamer.decoders import needed_fields
from streamer.funnel.definition import load_funnel
from streamer.funnel.session import CompiledFunnel
from streamer.funnel.task import Task
from streamer.pipeline.sessions.unit_store import UnitStore
from streamer.pipeline.units import unit_user

from .core import _BASE_MS, _raw, _rss_bytes, _stored
from .user_runs import USERS_14D

__all__ = ["UnitMemoryResult", "measure"]

_CHECKPOINT_EVERY = 50_000
UNITS_SOURCE = "funnel.units"  # the input the unit task counts the events under


@dataclass(frozen=True)
class UnitMemoryResult:
    units: int
    cache_units: int  # 0: every unit in memory
    rss_per_unit: float  # resident set growth / units
    stored_per_unit: float  # a unit's entry in a checkpoint delta record
    disk_per_unit: float | None  # the store's files / units (on disk only)
    open_units: int  # units whose attempt is open (all of them)
    seconds: float


def measure(units: int, cache_units: int, folder: Path) -> UnitMemoryResult:
    started = time.perf_counter()
    definition = load_funnel(USERS_14D)
    funnels = (CompiledFunnel(definition),)
    keep = needed_fields((definition,))
    gc.collect()
    gc.disable()  # only for speed: the core makes no reference cycles (collected below anyway)
    rss_before = _rss_bytes()
    store = UnitStore(folder / "p0", cache_units=cache_units) if cache_units else None
    task = Task(
        funnels,
        0,
        retention_ms=definition.conversion_window_ms,  # as install_units keeps units at rest
        sessions=None if store is None else store.sessions,
        wakes=None if store is None else store.wakes,
    )
    stored: list[int] = []
    for index in range(units):
        unit = str(uuid.UUID(int=index * 7919 + 1))
        at = _BASE_MS + index
        for seq, offset, landing in ((1, 0, True), (2, 10, False)):
            _, event = _stored(_raw(unit, seq, at + offset, landing), keep, at + offset)
            task.offer(unit, event, unit_user(unit), UNITS_SOURCE)
        if index % 1000 == 999:
            task.advance(at - 2000)
        if index % _CHECKPOINT_EVERY == _CHECKPOINT_EVERY - 1 or index == units - 1:
            if index == units - 1:
                task.advance(at + 1000)
            task.drain()
            saved, unit_ids = task.checkpoint_changes()
            encoded = task.encode_sessions(unit_ids)
            if not stored:  # as a delta record holds a unit: '"<id>":<state>,'
                stored = [
                    len(orjson.dumps(u)) + 2 + len(orjson.dumps(s)) for u, s in encoded.items()
                ]
            if store is not None:
                store.commit(
                    encoded, saved.deleted_sessions, {"log": index}, pinned=task.unsaved_session_ids
                )
    gc.enable()
    gc.collect()
    rss = (_rss_bytes() - rss_before) / units
    open_units = sum(task.open_sessions.values())
    if len(task.sessions) != units or task.buffered_events or open_units != units:
        raise RuntimeError(
            f"expected {units} open units with empty buffers, found {len(task.sessions)} "
            f"units, {open_units} open attempts, {task.buffered_events} buffered events"
        )
    disk = None
    if store is not None:
        store.close()
        disk = sum(p.stat().st_size for p in (folder / "p0").rglob("*") if p.is_file()) / units
    return UnitMemoryResult(
        units=units,
        cache_units=cache_units,
        rss_per_unit=rss,
        stored_per_unit=statistics.mean(stored),
        disk_per_unit=disk,
        open_units=open_units,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unit_memory")
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument(
        "--cache",
        type=int,
        default=None,
        help="one run: 0 = every unit in memory, N = on disk behind N cached units "
        "(default: both runs, 0 and 100000, each in a process of its own)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    if args.cache is None:
        results = []
        for cache in (0, 100_000):
            command = [sys.executable, "-m", "benchmarks.unit_memory", "--units", str(args.units)]
            done = subprocess.run(
                [*command, "--cache", str(cache)], check=True, capture_output=True
            )
            results.append(orjson.loads(done.stdout))
        text = orjson.dumps(results, option=orjson.OPT_INDENT_2)
    else:
        folder = Path(tempfile.mkdtemp(prefix="streamer-unit-memory-"))
        try:
            result = measure(args.units, args.cache, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        text = orjson.dumps(asdict(result), option=orjson.OPT_INDENT_2)
    if args.out:
        args.out.write_bytes(text)
    print(text.decode())


if __name__ == "__main__":
    main()
