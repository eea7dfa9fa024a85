"""Open units on disk (``streamer.pipeline.sessions.unit_store``): resident memory and disk bytes
per stored unit, a read and an event's cost with a warm cache beside a cold one, the time to
reopen the store, and a unit task's restart with that many units stored: rebuilt from the
checkpoint log (the whole log read, every unit written again: every start before step 3 of
decision 0009, and a new owner's) beside kept (the store's meta record vouched for by the log:
only newer deltas read). ``python -m benchmarks.unit_store [--units N] [--cache N]
[--no-rebuild] [--out FILE]``.

Every unit is a copy of a real open unit of a 14-day six-step user funnel (the shipped checkout
funnel followed by user, made by the core from two worker-decoded events) under its own id,
with its own event-id digests and times; they are committed in batches of 50k as checkpoints
would store them. Run it in a process of its own: resident memory is measured as growth from
the start (the units and their wake index on disk, the cache full).
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from streamer.decoders import needed_fields
from streamer.funnel.definition import load_funnel
from streamer.funnel.session import NEVER, CompiledFunnel, StoredEvent
from streamer.funnel.task import Checkpoint, SessionState, Task
from streamer.pipeline.sessions.checkpoint_log import DeltaEncoder, delta_key, meta_key
from streamer.pipeline.sessions.runtime import restore_runtime
from streamer.pipeline.sessions.unit_store import UnitStore

from .core import _BASE_MS, _raw, _rss_bytes, _stored
from .data import CHECKOUT

_BATCH = 50_000
_READS = 20_000
_EVENTS = 20_000
_COMMIT_EVERY = 1_000  # events between two checkpoints of the per-event runs
_ADVANCE_EVERY = 100  # events between two watermark steps (a unit task's front markers)
_GENERATION = 1


@dataclass(frozen=True)
class StoreResult:
    units: int
    cache_units: int
    rss_growth_mib: float  # resident set growth while the store filled (cache full)
    rss_total_mib: float  # the process's resident set then (interpreter and imports too)
    disk_bytes_per_unit: float
    warm_read_us: float  # a cached unit
    cold_read_us: float  # a unit read back from the disk (decoded)
    commit_us_per_unit: float
    warm_event_us: float  # offer + release + apply of an event of a cached unit, commits
    cold_event_us: float  # the same for a unit on disk only
    reopen_s: float  # open the store again and count its units
    log_bytes_per_unit: float  # the checkpoint log's full record of the units
    restart_rebuild_s: float | None  # restore_runtime on an empty store (None: not run)
    restart_rebuild_peak_mib: float | None  # resident growth at most, meanwhile
    restart_kept_s: float  # restore_runtime on a store the log vouches for
    restart_kept_peak_mib: float
    restart_to_first_event_s: float  # the kept restore, then one event of a unit on disk
    seconds: float


def _user_funnel(folder: Path) -> CompiledFunnel:
    """The shipped checkout funnel (six steps) followed by user over 14 days."""
    raw = yaml.safe_load(CHECKOUT.read_text())
    raw.update(follows="user", conversion_window="14d", window="1d")
    path = folder / "users.yaml"
    path.write_text(yaml.safe_dump(raw))
    return CompiledFunnel(load_funnel(path))


def _event(funnel: CompiledFunnel, unit: str, seq: int, at_ms: int, landing: bool) -> StoredEvent:
    _, event = _stored(_raw(unit, seq, at_ms, landing), needed_fields((funnel.definition,)), at_ms)
    return event


def _template(funnel: CompiledFunnel, base_ms: int = _BASE_MS) -> list[Any]:
    """A unit's stored state: landed at ``base_ms``, then viewed a product (open at
    product_view)."""
    task = Task((funnel,), 0, retention_ms=600_000)
    task.offer("u", _event(funnel, "u", 1, base_ms, landing=True))
    task.offer("u", _event(funnel, "u", 2, base_ms + 10, landing=False))
    task.advance(base_ms + 1000)
    return orjson.loads(orjson.dumps(task.sessions["u"].to_json()))  # type: ignore[no-any-return]


def _unit_id(index: int) -> str:
    return f"user-{index:09d}"


def _cart_event(funnel: CompiledFunnel, unit_id: str, at_ms: int) -> StoredEvent:
    """An add_to_cart event of ``unit_id`` (the next step of every stored unit)."""
    fields = _event(funnel, "u", 3, at_ms, landing=False).fields
    return StoredEvent(at_ms, f"{unit_id}-cart-{at_ms}", "add_to_cart", fields)


def _unit(template: list[Any], index: int, rng: random.Random) -> SessionState:
    state = SessionState.from_json(_unit_id(index), template)
    # Its own event-id digests and times, as real units have (they compress less).
    state.recent_ids = index.to_bytes(8, "big") + rng.randbytes(8)
    state.last_event_ms += index * 37
    return state


def _index(funnel: CompiledFunnel, template: list[Any], units: int) -> dict[str, Any]:
    """The task's indexes with ``units`` copies of the template open."""
    task = Task((funnel,), 0, retention_ms=600_000)
    task.restore(_BASE_MS + 1000, [("u", template)], {})
    record = task.index_record()
    record["open"] = [[f, stage, n * units] for f, stage, n in record["open"]]
    return record


def _fill(store: UnitStore, template: list[Any], units: int) -> float:
    """Store ``units`` units in batches, as checkpoints do; returns the commits' seconds."""
    rng = random.Random(7)
    seconds = 0.0
    for first in range(0, units, _BATCH):
        batch: dict[str, list[Any]] = {}
        for index in range(first, min(first + _BATCH, units)):
            state = _unit(template, index, rng)
            state.wake_ms = state.last_event_ms + 14 * 86_400_000
            store.sessions[state.session_id] = state
            store.wakes.move(state.session_id, NEVER, state.wake_ms)
            batch[state.session_id] = state.encodable()
        began = time.perf_counter()
        store.commit(batch, (), {})
        seconds += time.perf_counter() - began
    return seconds


def vouch_for_log(
    store: UnitStore,
    table: Mapping[str, bytes],
    funnel: CompiledFunnel,
    template: list[Any],
    units: int,
) -> None:
    """Commit the meta record that ``table``'s log (its meta record) vouches for, as a
    rebuild or a checkpoint would have written it, on a store filled with ``units`` units."""
    store.commit(
        {},
        (),
        {
            "log": orjson.loads(table[meta_key(0)])["log"],
            "generation": _GENERATION,
            "funnels": [funnel.name],
            "index": _index(funnel, template, units),
        },
    )


def _between(units: int) -> int:
    """A time past every stored unit's last event (``_unit`` spreads them 37 ms apart) and
    before the first of their wakes (14 days after it): an event then is the unit's next step,
    and a watermark step then wakes no unit (up to 30 million units)."""
    return _BASE_MS + units * 37 + 60_000


def _events_us(store: UnitStore, funnel: CompiledFunnel, unit_ids: list[str], units: int) -> float:
    """An add_to_cart event for each of ``unit_ids`` through a task over the store (offered,
    released by a watermark step every ``_ADVANCE_EVERY`` events, applied), a checkpoint every
    ``_COMMIT_EVERY`` events: microseconds per event, all included."""
    task = Task((funnel,), 0, retention_ms=600_000, sessions=store.sessions, wakes=store.wakes)
    at = _between(units)
    task.watermark_ms = at
    events = [_cart_event(funnel, unit_id, at + i) for i, unit_id in enumerate(unit_ids)]
    began = time.perf_counter()
    for i, (unit_id, event) in enumerate(zip(unit_ids, events, strict=True)):
        task.offer(unit_id, event)
        if i % _ADVANCE_EVERY == _ADVANCE_EVERY - 1:  # a front marker after a batch
            task.advance(event.at_ms + 1)
        if i % _COMMIT_EVERY == _COMMIT_EVERY - 1:
            saved, changed = task.checkpoint_changes()
            store.commit(
                task.encode_sessions(changed),
                saved.deleted_sessions,
                store.meta,
                pinned=task.unsaved_session_ids,
            )
    return (time.perf_counter() - began) / len(unit_ids) * 1e6


def _log(
    template: list[Any], units: int, funnel: CompiledFunnel, *, records: bool = True
) -> tuple[dict[str, bytes], int]:
    """The checkpoint log of a partition whose units were all written out at once (as a
    compaction leaves it), and its bytes. Without ``records``, only its meta record (a kept
    store reads none of the records: 10 million units' log would take 2.5 GB here), and the
    bytes of the first batch's records scaled to all (every unit's entry has the same size)."""
    rng = random.Random(7)
    table: dict[str, bytes] = {}
    log_bytes = seq = 0
    for first in range(0, units if records else min(units, _BATCH), _BATCH):
        encoder = DeltaEncoder(Checkpoint(watermark_ms=NEVER), [funnel.name])
        encoder.add(
            {
                state.session_id: state.encodable()
                for state in (
                    _unit(template, index, rng)
                    for index in range(first, min(first + _BATCH, units))
                )
            }
        )
        for record in encoder.records():
            log_bytes += len(record)
            if records:
                table[delta_key(0, seq)] = record
            seq += 1
    if not records:
        log_bytes = log_bytes * units // min(units, _BATCH)
        seq = seq * -(-units // _BATCH)  # as many records per batch
    table[meta_key(0)] = orjson.dumps(
        {
            "generation": _GENERATION,
            "watermark": _BASE_MS + 1000,
            "offsets": {"units": units},
            "log": [0, seq],
            "funnels": [funnel.name],
            "owners": [[_GENERATION, 0]],
        }
    )
    return table, log_bytes


class _PeakMemory:
    """The largest resident set growth while in the block, sampled every 20 ms."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._done = threading.Event()

    def __enter__(self) -> _PeakMemory:
        self._base = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak_mib = max(self.peak_mib, (_rss_bytes() - self._base) / 2**20)

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, (_rss_bytes() - self._base) / 2**20)


def _restart(
    table: dict[str, bytes], funnel: CompiledFunnel, path: Path, cache: int
) -> tuple[float, float, float]:
    """Seconds of the restore, seconds to the first event applied after it (the restore, then
    an event of a unit on disk offered and released), and the peak resident growth meanwhile
    (MiB)."""
    store = UnitStore(path, cache_units=cache)
    gc.collect()
    units = int(orjson.loads(table[meta_key(0)])["offsets"]["units"])
    began = time.perf_counter()
    with _PeakMemory() as memory:
        runtime, _ = restore_runtime(
            table, 0, (funnel,), retention_ms=600_000, topics=("units",), store=store
        )
        restored = time.perf_counter() - began
        task = runtime.task
        at = _between(units)
        task.offer(_unit_id(units // 2), _cart_event(funnel, _unit_id(units // 2), at))
        task.advance(at + 1)
        first_event = time.perf_counter() - began
    if len(task.sessions) != units:
        raise RuntimeError(f"restored {len(task.sessions)} units, stored {units}")
    store.close()
    return restored, first_event, memory.peak_mib


def _never_read(rng: random.Random, below: int, read: set[str]) -> list[str]:
    """Up to ``_EVENTS`` distinct units under index ``below`` not in ``read`` (sampled: a set
    of every index would take a gigabyte at 10 million units)."""
    wanted = min(_EVENTS, below - len(read))
    chosen: dict[str, None] = {}
    while len(chosen) < wanted:
        unit_id = _unit_id(rng.randrange(below))
        if unit_id not in read:
            chosen[unit_id] = None
    return list(chosen)


def measure(units: int, cache_units: int, folder: Path, *, rebuild: bool = True) -> StoreResult:
    started = time.perf_counter()
    funnel = _user_funnel(folder)
    template = _template(funnel)
    gc.collect()
    rss_before = _rss_bytes()
    store = UnitStore(folder / "p0", cache_units=cache_units)
    commit_seconds = _fill(store, template, units)
    gc.collect()
    rss_growth = (_rss_bytes() - rss_before) / 2**20
    rss_total = _rss_bytes() / 2**20

    rng = random.Random(11)
    cached = [_unit_id(index) for index in range(units - min(cache_units, 1000), units)]
    began = time.perf_counter()
    for _ in range(_READS):
        store.sessions[rng.choice(cached)]
    warm = (time.perf_counter() - began) / _READS * 1e6
    cold_ids = [_unit_id(rng.randrange(units - cache_units)) for _ in range(_READS)]
    began = time.perf_counter()
    for unit_id in cold_ids:
        store.sessions[unit_id]
        store.sessions.evict(())  # keep the cache at its bound, as commits do
    cold = (time.perf_counter() - began) / _READS * 1e6
    # Events: warm ones to the most recently used units, cold ones to units read long ago.
    in_cache = [_unit_id(index) for index in range(units - min(cache_units, _EVENTS), units)]
    warm_event = _events_us(store, funnel, [rng.choice(in_cache) for _ in range(_EVENTS)], units)
    cold_event = _events_us(
        store, funnel, _never_read(rng, units - cache_units, set(cold_ids)), units
    )
    store.close()
    disk = sum(p.stat().st_size for p in (folder / "p0").rglob("*") if p.is_file())

    began = time.perf_counter()
    again = UnitStore(folder / "p0", cache_units=cache_units)
    if len(again.sessions) != units:
        raise RuntimeError(f"reopened with {len(again.sessions)} units, stored {units}")
    reopen = time.perf_counter() - began
    again.close()

    table, log_bytes = _log(template, units, funnel, records=rebuild)
    rebuild_s = rebuild_peak = None
    if rebuild:  # on an empty store
        rebuild_s, _, rebuild_peak = _restart(table, funnel, folder / "restart", cache_units)
        kept_path = folder / "restart"  # as that restore left it, vouched for by the log
    else:
        # The filled store, given the meta record the log vouches for (as a rebuild or a
        # checkpoint would have written it).
        kept_path = folder / "p0"
        store = UnitStore(kept_path, cache_units=cache_units)
        vouch_for_log(store, table, funnel, template, units)
        store.close()
    kept_s, first_event_s, kept_peak = _restart(table, funnel, kept_path, cache_units)
    return StoreResult(
        units=units,
        cache_units=cache_units,
        rss_growth_mib=rss_growth,
        rss_total_mib=rss_total,
        disk_bytes_per_unit=disk / units,
        warm_read_us=warm,
        cold_read_us=cold,
        commit_us_per_unit=commit_seconds / units * 1e6,
        warm_event_us=warm_event,
        cold_event_us=cold_event,
        reopen_s=reopen,
        log_bytes_per_unit=log_bytes / units,
        restart_rebuild_s=rebuild_s,
        restart_rebuild_peak_mib=rebuild_peak,
        restart_kept_s=kept_s,
        restart_to_first_event_s=first_event_s,
        restart_kept_peak_mib=kept_peak,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.unit_store")
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--cache", type=int, default=100_000, help="units the cache holds")
    parser.add_argument(
        "--no-rebuild",
        action="store_true",
        help="skip the restart on an empty store (it holds every unit in memory meanwhile)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="streamer-unit-store-"))
    try:
        result = measure(args.units, args.cache, folder, rebuild=not args.no_rebuild)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    text = orjson.dumps(asdict(result), option=orjson.OPT_INDENT_2)
    if args.out:
        args.out.write_bytes(text)
    print(text.decode())


if __name__ == "__main__":
    main()
