"""A compaction of a unit task's checkpoint log with N units on disk: peak resident memory and
seconds, for this checkout's code and, in the same run, another's (``--before``: a checkout of
the code before the streamed compaction, e.g. ``git worktree add /tmp/before <commit>``).
``python -m benchmarks.compaction [--units N] [--cache N] [--store DIR] [--before DIR]
[--out FILE]``.

The store is filled once (``--store``: kept and reused if it holds N units already), with the
units of ``benchmarks.unit_store`` (copies of a real open unit of the 14-day six-step user
funnel, 246 B each in the log). Each code runs in a child process of its own on a RocksDB
checkpoint of it (hard links: the same files): the unit task is restored as a restart on the
same disk restores it (the store kept: the log's meta vouches for it), then one compaction runs
through the ``Committer`` into a table on disk (a RocksDB map, as Faust's ``rocksdb://`` store
holds the worker's ``unit-state`` table), with no producer: the broker's buffer, which the
worker's write-out also fills until its flush, is not in these figures. Peak resident growth is
sampled every 20 ms over the compaction alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rocksdict import Checkpoint, Options, Rdict

from streamer.metrics import Metrics
from streamer.pipeline.sessions.committer import Committer
from streamer.pipeline.sessions.runtime import restore_runtime
from streamer.pipeline.sessions.unit_store import UnitStore

from .procs import ROOT
from .unit_store import _fill, _log, _PeakMemory, _template, _user_funnel, vouch_for_log


class _DiskTable(MutableMapping[str, bytes]):
    """The log's table on disk (RocksDB), so that what it holds is not in memory."""

    def __init__(self, path: Path) -> None:
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)
        self.written = 0  # bytes of values written

    def __getitem__(self, key: str) -> bytes:
        value = self._db.get(key.encode())
        if value is None:
            raise KeyError(key)
        assert isinstance(value, bytes)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        self.written += len(value)
        self._db.put(key.encode(), value)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._db.delete(key.encode())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._db.get(key.encode()) is not None

    def __iter__(self) -> Iterator[str]:
        for key in self._db.keys():  # noqa: SIM118 (a raw-mode Rdict is not iterable)
            assert isinstance(key, bytes)
            yield key.decode()

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def close(self) -> None:
        self._db.close()


def build(folder: Path, units: int, cache: int) -> dict[str, bytes]:
    """A store of ``units`` units at ``folder/store`` (filled unless it holds them already),
    with the meta record that the returned log (its meta record only) vouches for."""
    funnel = _user_funnel(folder)
    template = _template(funnel)
    table, _ = _log(template, units, funnel, records=False)
    store = UnitStore(folder / "store", cache_units=cache)
    if len(store.sessions) != units:
        store.close()
        shutil.rmtree(folder / "store")
        store = UnitStore(folder / "store", cache_units=cache)
        _fill(store, template, units)
    vouch_for_log(store, table, funnel, template, units)
    store.close()
    return table


async def _nothing(*_: Any) -> None:
    return None


def child(folder: Path, work: Path, cache: int, *, rebuild: bool) -> dict[str, Any]:
    """One compaction by the code this process imported, on a copy of ``folder/store``; with
    ``rebuild``, then a new owner's restore from the compacted log (an empty store)."""
    funnel = _user_funnel(work)
    source = Rdict(str(folder / "store"), Options(raw_mode=True))
    Checkpoint(source).create_checkpoint(str(work / "store"))
    source.close()
    table = _DiskTable(work / "table")
    log_meta = json.loads((folder / "log-meta.json").read_text())
    for key, value in log_meta.items():
        table[key] = value.encode()
    store = UnitStore(work / "store", cache_units=cache)
    runtime, _ = restore_runtime(
        table, 0, (funnel,), retention_ms=600_000, topics=("units",), store=store
    )
    units = len(runtime.task.sessions)
    committer = Committer(
        runtimes={0: runtime},
        table=table,
        funnel_names=[funnel.name],
        fronts_of=lambda _: {},
        publish=_nothing,
        flush_producer=_nothing,
        partition_scope=lambda _: contextlib.nullcontext(),
        metrics=Metrics.create(CollectorRegistry(), funnels=(funnel.definition,)),
        interval_s=3600,
    )
    runtime.compact_next = True
    table.written = 0
    began = time.perf_counter()
    with _PeakMemory() as memory:
        asyncio.run(committer.checkpoint(0))
    seconds = time.perf_counter() - began
    store.close()
    result = {
        "units": units,
        "seconds": seconds,
        "peak_growth_mib": memory.peak_mib,
        "log_bytes_written": table.written,
        "log_bytes_per_unit": table.written / units,
    }
    if rebuild:
        began = time.perf_counter()
        with _PeakMemory() as memory:
            rebuilt, _ = restore_runtime(
                table,
                0,
                (funnel,),
                retention_ms=600_000,
                topics=("units",),
                store=UnitStore(work / "new-owner", cache_units=cache),
            )
        result["rebuild_s"] = time.perf_counter() - began
        result["rebuild_peak_growth_mib"] = memory.peak_mib
        if len(rebuilt.task.sessions) != units:
            raise RuntimeError(f"rebuilt {len(rebuilt.task.sessions)} units of {units}")
        assert rebuilt.store is not None
        rebuilt.store.close()
    table.close()
    return result


def _run_child(code: Path, folder: Path, cache: int, *, rebuild: bool = False) -> dict[str, Any]:
    """``child`` in a process whose ``streamer`` is ``code``'s (this checkout's benchmarks)."""
    with tempfile.TemporaryDirectory(prefix="streamer-compaction-") as scratch:
        tree = Path(scratch)
        (tree / "streamer").symlink_to(code / "streamer")
        for beside in ("benchmarks", "tests"):  # (benchmarks import tests.support)
            (tree / beside).symlink_to(ROOT / beside)
        (tree / "work").mkdir()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.compaction",
                "--child",
                str(folder),
                "--cache",
                str(cache),
                "--work",
                str(tree / "work"),
                *(["--rebuild"] if rebuild else []),
            ],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"the compaction with {code}'s code failed: {out.stderr.decode()}")
        result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compaction")
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--cache", type=int, default=100_000, help="units the cache holds")
    parser.add_argument("--store", type=Path, default=None, help="a folder to keep the store in")
    parser.add_argument("--before", type=Path, default=None, help="a checkout to compare with")
    parser.add_argument(
        "--rebuild", action="store_true", help="then a new owner's restore (this code's only)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.work, args.cache, rebuild=args.rebuild)))
        return
    folder = args.store or Path(tempfile.mkdtemp(prefix="streamer-compaction-store-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        began = time.perf_counter()
        table = build(folder, args.units, args.cache)
        (folder / "log-meta.json").write_text(
            json.dumps({key: value.decode() for key, value in table.items()})
        )
        result: dict[str, Any] = {"units": args.units, "fill_s": time.perf_counter() - began}
        result["after"] = _run_child(ROOT, folder, args.cache, rebuild=args.rebuild)
        _write(result, args.out)
        if args.before is not None:
            result["before"] = _run_child(args.before, folder, args.cache)
    finally:
        if args.store is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(_write(result, args.out))


def _write(result: dict[str, Any], out: Path | None) -> str:
    """The result as JSON, written to ``out`` too (also a part of it, as each part ends)."""
    text = json.dumps(result, indent=2)
    if out is not None:
        out.write_text(text)
    return text


if __name__ == "__main__":
    main()
