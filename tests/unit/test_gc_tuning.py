"""The worker's garbage-collector tuning (decisions 0004 and 0007): a collection walks only
what is younger than the last one, so the young generation bounds every pause; once the frozen
objects have doubled, a forked child counts their garbage, and a full collection runs here only
when the garbage is as large as what lives. Run in a process of its own: the tuning is the
interpreter's, and the test process keeps Python's."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import gc
import time
from streamer.startup import GC_THRESHOLDS, FrozenSweep, tune_garbage_collector

def answer(sweep, now):
    started = sweep.step(now)
    assert started is not None and started.fork_s is not None, started
    deadline = time.monotonic() + 60
    while (check := sweep.step(now)) is None:
        assert time.monotonic() < deadline, "the child answers"
        time.sleep(0.05)
    return check

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

sweep = FrozenSweep(counted_size=gc.get_freeze_count())
assert sweep.step(0.0) is None, "not grown: no count"
outliving = [[]]
outliving[0].append(outliving)
gc.collect(0)
del outliving  # a cycle that outlived a collection: frozen, not freed
grown = [[index] for index in range(3 * gc.get_freeze_count())]  # the state grows, live
gc.collect(0)
check = answer(sweep, 1.0)
assert check.garbage is not None and 2 <= check.garbage < 1_000, check
assert check.swept is None, "live growth: counted, not swept"
assert gc.get_freeze_count() >= check.frozen, "the worker's own objects are untouched"
assert sweep.step(2.0) is None, "counted at this size: the next count at the next doubling"

frozen = gc.get_freeze_count()
leaked = []  # cycles that outlive a collection, as many objects as what lives
for _ in range(2 * frozen // 3):
    pair = [[]]
    pair[0].append(pair)
    leaked.append(pair)
gc.collect(0)
del leaked, pair  # (the list goes by its count; its cycles stay, frozen)
check = answer(sweep, 3.0)
assert check.garbage is not None and check.garbage >= frozen, check
assert check.swept is not None and check.swept >= check.garbage, "garbage as large: swept"
assert gc.get_freeze_count() < check.frozen - check.garbage // 2, "what it freed is gone"
assert sweep.step(4.0) is None
print("ok")
"""


def test_survivors_leave_the_generations_and_only_garbage_as_large_as_the_state_is_swept() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
