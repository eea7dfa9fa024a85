"""Open units on disk (``streamer.pipeline.sessions.unit_store``) alone: resident memory and disk
bytes per stored unit, a read with a warm cache beside one with a cold cache, and the time to
reopen the store, and the restart of a unit task with that many units stored: rebuilt from the
checkpoint log (the whole log read, every unit written again) beside kept (the store's meta
record vouched for by the log: only newer deltas read).
``python -m benchmarks.unit_store [--units N] [--cache N] [--out FILE]``.

Every unit is a copy of a real open session of the checkout funnel (made by the core from two
worker-decoded events, as ``benchmarks.core`` makes them) under its own id, with a wake time;
they are committed in batches of 50k as checkpoints would store them. Run it in a process of
its own: resident memory is measured as growth from the start.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from streamer.funnel.session import NEVER
from streamer.funnel.task import Checkpoint, SessionState
from streamer.pipeline.sessions.checkpoint_log import delta_key, encode_delta, meta_key
from streamer.pipeline.sessions.runtime import restore_runtime
from streamer.pipeline.sessions.unit_store import UnitStore

from .core import _funnels, _open_sessions, _rss_bytes

_BATCH = 50_000
_READS = 20_000


@dataclass(frozen=True)
class StoreResult:
    units: int
    cache_units: int
    rss_growth_mib: float  # resident set growth over the whole run
    disk_bytes_per_unit: float
    warm_read_us: float  # a cached unit
    cold_read_us: float  # a unit read back from the disk (decoded)
    commit_us_per_unit: float
    reopen_s: float  # open the store again and count its units
    restart_rebuild_s: float  # restore_runtime on an empty store: the whole log read
    restart_kept_s: float  # restore_runtime on the store the log vouches for
    log_bytes_per_unit: float  # the checkpoint log's full record of the units
    seconds: float


def _template() -> list[object]:
    build = _open_sessions(1)
    next(build)
    task = next(build)
    (state,) = task.sessions.values()
    return orjson.loads(orjson.dumps(state.to_json()))  # type: ignore[no-any-return]


def measure(units: int, cache_units: int, folder: Path) -> StoreResult:
    started = time.perf_counter()
    template = _template()
    gc.collect()
    rss_before = _rss_bytes()
    store = UnitStore(folder / "p0", cache_units=cache_units)
    rng = random.Random(7)
    commit_seconds = 0.0
    for first in range(0, units, _BATCH):
        batch: dict[str, list[object]] = {}
        for index in range(first, min(first + _BATCH, units)):
            unit_id = f"user-{index:09d}"
            state = SessionState.from_json(unit_id, template)  # type: ignore[arg-type]
            # Its own event-id digests and times, as real units have (they compress less).
            state.recent_ids = index.to_bytes(8, "big") + rng.randbytes(8)
            state.last_event_ms += index * 37
            state.wake_ms = state.last_event_ms + 1_800_000
            store.sessions[unit_id] = state
            store.wakes.move(unit_id, -(2**62), state.wake_ms)
            batch[unit_id] = state.encodable()
        began = time.perf_counter()
        store.commit(batch, (), {"log": first})
        commit_seconds += time.perf_counter() - began
    gc.collect()
    rss_growth = (_rss_bytes() - rss_before) / 2**20

    cached = [f"user-{index:09d}" for index in range(units - min(cache_units, 1000), units)]
    began = time.perf_counter()
    for _ in range(_READS):
        store.sessions[rng.choice(cached)]
    warm = (time.perf_counter() - began) / _READS * 1e6
    cold_ids = [f"user-{rng.randrange(units - cache_units):09d}" for _ in range(_READS)]
    began = time.perf_counter()
    for unit_id in cold_ids:
        store.sessions[unit_id]
        store.sessions.evict(())  # keep the cache at its bound, as commits do
    cold = (time.perf_counter() - began) / _READS * 1e6
    store.close()
    disk = sum(p.stat().st_size for p in (folder / "p0").rglob("*") if p.is_file())

    began = time.perf_counter()
    again = UnitStore(folder / "p0", cache_units=cache_units)
    if len(again.sessions) != units:
        raise RuntimeError(f"reopened with {len(again.sessions)} units, stored {units}")
    reopen = time.perf_counter() - began
    again.close()
    rebuild, kept, log_bytes = _restarts(units, cache_units, template, folder)
    return StoreResult(
        units=units,
        cache_units=cache_units,
        rss_growth_mib=rss_growth,
        disk_bytes_per_unit=disk / units,
        warm_read_us=warm,
        cold_read_us=cold,
        commit_us_per_unit=commit_seconds / units * 1e6,
        reopen_s=reopen,
        restart_rebuild_s=rebuild,
        restart_kept_s=kept,
        log_bytes_per_unit=log_bytes / units,
        seconds=time.perf_counter() - started,
    )


def _restarts(
    units: int, cache_units: int, template: list[object], folder: Path
) -> tuple[float, float, int]:
    """A unit task's restore with ``units`` in its checkpoint log (one full write-out, as a
    compaction leaves it): on an empty store (rebuilt: today's every start, and a new owner's)
    and on the store that start left (kept: a restart on the same disk). Returns both times
    and the log's bytes."""
    funnels = _funnels()
    names = [f.name for f in funnels]
    table: dict[str, bytes] = {}
    saved = Checkpoint(watermark_ms=NEVER)
    for index in range(units):
        state = SessionState.from_json(f"user-{index:09d}", template)  # type: ignore[arg-type]
        state.recent_ids = index.to_bytes(8, "big")
        state.last_event_ms += index * 37
        saved.sessions[state.session_id] = state.encodable()
    records = encode_delta(saved, names)
    del saved
    for seq, record in enumerate(records):
        table[delta_key(0, seq)] = record
    generation = 1
    table[meta_key(0)] = orjson.dumps(
        {
            "generation": generation,
            "watermark": NEVER,
            "offsets": {"units": units},
            "log": [0, len(records)],
            "funnels": names,
            "owners": [[generation, 0]],
        }
    )
    log_bytes = sum(len(record) for record in records)
    del records
    times = []
    for _ in ("rebuilt", "kept"):
        store = UnitStore(folder / "restart", cache_units=cache_units)
        began = time.perf_counter()
        runtime, _ = restore_runtime(
            table, 0, funnels, retention_ms=600_000, topics=("units",), store=store
        )
        times.append(time.perf_counter() - began)
        if len(runtime.task.sessions) != units:
            raise RuntimeError(f"restored {len(runtime.task.sessions)} units, stored {units}")
        store.close()
        del runtime
        gc.collect()
    return times[0], times[1], log_bytes


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unit_store")
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--cache", type=int, default=100_000, help="units the cache holds")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="streamer-unit-store-"))
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
