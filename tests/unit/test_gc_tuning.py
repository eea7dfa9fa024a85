"""The worker's garbage-collector tuning (decisions 0004 and 0007): a collection walks only
what is younger than the last one, so the young generation bounds every pause; a cycle among
the frozen objects is freed by the sweep once they have doubled. Run in a
process of its own: the tuning is the interpreter's, and the test process keeps Python's."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import gc
from streamer.startup import GC_THRESHOLDS, sweep_frozen_if_grown, tune_garbage_collector

tune_garbage_collector()
tune_garbage_collector()  # idempotent: one callback
assert gc.get_threshold() == GC_THRESHOLDS
long_lived = [[index] for index in range(50_000)]  # open sessions' state, say
gc.collect(0)
assert gc.get_freeze_count() > len(long_lived), "the survivors left the generations"
assert len(gc.get_objects()) < 1_000, "older collections have nothing of them to walk"
cycle = [[]]
cycle[0].append(cycle)
del cycle
assert gc.collect(0) >= 2, "a cycle that dies young is still collected"
sweep_frozen_if_grown()  # (due or not: the frozen objects now are its base)
assert sweep_frozen_if_grown() is None, "not grown: not due"
outliving = [[]]
outliving[0].append(outliving)
gc.collect(0)
del outliving  # a cycle that outlived a collection: frozen, not freed
more = [[index] for index in range(3 * gc.get_freeze_count())]
gc.collect(0)
freed = sweep_frozen_if_grown()
assert freed is not None and freed >= 2, "the frozen objects doubled: a full collection"
assert gc.get_freeze_count() > len(more), "what survived it is frozen again"
assert sweep_frozen_if_grown() is None
print("ok")
"""


def test_survivors_leave_the_generations_and_cycles_are_freed_young_or_by_the_sweep() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
