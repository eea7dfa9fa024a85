"""The worker with a 14-day user funnel (``benchmarks/users-14d.yaml``) on the same pre-loaded
data as the session rows: every event goes through the session tasks (released in event-time
order, given its unit), is forwarded to ``units_topic`` and applied by the unit tasks
(docs/decisions/0008-user-funnels-pipeline.md). Events/s from the first input event counted
to the last event the unit tasks applied."""

from __future__ import annotations

from pathlib import Path

from streamer.settings import Settings

from . import kafka_runs
from .data import Loaded
from .plan_runs import own_topics
from .procs import ROOT, Children

__all__ = ["USERS_14D", "user_funnel_run"]

USERS_14D = ROOT / "benchmarks/users-14d.yaml"


def user_funnel_run(
    children: Children, settings: Settings, loaded: Loaded, workdir: Path
) -> kafka_runs.WorkerResult:
    """A worker given the user funnel alone, on the pre-loaded topics (outputs of its own)."""
    config = own_topics(settings, "users").model_copy(update={"funnels": (USERS_14D,)})
    return kafka_runs.worker_run(children, config, loaded, workdir, "users", through_units=True)
