"""A worker with default settings working through a backlog keeps its event loop free: the
loop-lag histogram (``streamer_event_loop_lag_seconds``) is filled, no timer overlaps its
next tick, and wake-ups held past 100 ms stay within the bound of decision 0007."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.settings import Settings
from streamer.testing import MetricValues, metric
from tests.support.kafka_waits import wait_processed
from tests.support.pipeline_run import preload, worker
from tests.support.traffic import generate

pytestmark = pytest.mark.integration

LAG = "streamer_event_loop_lag_seconds"
# Decision 0007's bound for a backlog on a shared 2-core machine: at most 5% of the
# monitor's wake-ups (one every 50 ms) come 100 ms late or more, none 2 s late (a stall that
# overlaps a 1 s timer). Measured: 0 of 200 on a quiet moment, 7 of 534 (1.3%) at load
# average 5-6; the share leaves room for the time the worker is not scheduled at all.
LATE_SHARE_BOUND = 0.05
STALL_BOUND_S = 2.0


def _wakeups(values: MetricValues, at_most_s: float | None = None) -> float:
    """The monitor's wake-ups so far (those ``at_most_s`` late or less)."""
    if at_most_s is None:
        return metric(values, f"{LAG}_count")
    return metric(values, f"{LAG}_bucket", le=repr(float(at_most_s)))


async def test_a_backlog_leaves_the_loop_free_and_no_timer_overlapping(
    settings: Settings, tmp_path: Path
) -> None:
    # About 100k events (half the benchmark's backlog: the test's time limit) waiting on both
    # topics before the worker starts.
    data = generate(seed=20261207, minutes=30, sessions_per_second=12)
    total = await preload(settings, data) + len(data.closing(settings))
    assert total >= 90_000
    with worker(settings, tmp_path, "w") as process:
        values = wait_processed(process, settings, total, timeout=240)
    log = process.log_path.read_text(errors="replace")

    wakeups = _wakeups(values)
    late = wakeups - _wakeups(values, at_most_s=0.1)
    print(f"\n{total} events: {wakeups:.0f} wake-ups, {late:.0f} of them 100 ms late or more")
    assert wakeups >= 20, "the monitor observed the run (a wake-up every 50 ms)"
    assert [line for line in log.splitlines() if "is overlapping" in line] == []
    assert _wakeups(values, at_most_s=STALL_BOUND_S) == wakeups
    assert late <= LATE_SHARE_BOUND * wakeups
