"""The data every Kafka measurement reads: shop traffic pre-loaded once on both topics.

``tests.support.traffic.generate`` gives realistic sessions in arrival order (up to a minute of
disorder, 1% producer retries), keyed by session id; cut to exactly ``events`` messages, then
one closing event per partition of both topics moves every watermark past every window.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from streamer.funnel.definition import load_funnel
from streamer.settings import Settings
from streamer.simulate import TrafficModel
from tests.support.core_run import run_core
from tests.support.pipeline_run import preload
from tests.support.traffic import Dataset, at_ms, generate

from .procs import ROOT

__all__ = ["SESSIONS_PER_SECOND", "Loaded", "load", "make_dataset"]

CHECKOUT = ROOT / "deploy/funnels/checkout.yaml"
# A busy shop: 20 new sessions a second (72k an hour), ~4.8 events each.
SESSIONS_PER_SECOND = 20.0


@dataclass(frozen=True)
class Loaded:
    events: int  # shop events produced (the closing events not included)
    closing: int  # closing events produced after them
    sessions: int
    minutes: float  # event-time span of the traffic
    last_window_end_ms: int  # end of the latest cohort window the checkout funnel can have
    first_ms: int = 0  # the earliest event time
    closing_ms: int = 0  # the closing events' time (the latest)

    @property
    def total(self) -> int:
        """Every message on the two input topics."""
        return self.events + self.closing


def make_dataset(events: int, seed: int = 7) -> Dataset:
    per_session = TrafficModel().mean_events_per_session(2000)
    minutes = events / (per_session * SESSIONS_PER_SECOND * 60) * 1.05 + 0.5
    data = generate(seed=seed, minutes=minutes, sessions_per_second=SESSIONS_PER_SECOND)
    while len(data.arrivals) < events:  # the model's mean is an estimate: top up
        minutes *= 1.1
        data = generate(seed=seed, minutes=minutes, sessions_per_second=SESSIONS_PER_SECOND)
    arrivals = data.arrivals[:events]
    return Dataset(
        arrivals=arrivals,
        closing_ms=data.closing_ms,
        sessions=len({e["session_id"] for e in arrivals}),
    )


def last_window_end_ms(data: Dataset) -> int:
    """The end of the latest cohort window the worker publishes final, from the core run
    offline on the same events (``tests.support.core_run``). The window of the latest event that can
    enter a stage is not it: the data is cut at N arrivals and a step can time out first, so
    that window may count no cohort and never be published (the benchmark then waited for
    it in about 1 run of 10)."""
    funnel = load_funnel(CHECKOUT)
    defaults = Settings()  # the worker's lateness and retention
    result = run_core(
        [funnel],
        data.oracle_events(),
        data.final_watermark_ms,
        lateness_ms=round(defaults.allowed_lateness_seconds * 1000),
        retention_ms=round(defaults.session_retention_seconds * 1000),
    )
    latest = max(start for name, start, _ in result.windows if name == funnel.name)
    return latest + funnel.window_ms


def load(settings: Settings, events: int) -> Loaded:
    """Generate the traffic and produce it (then the closing events) to the input topics."""
    data = make_dataset(events)
    times = [at_ms(e) for e in data.arrivals]
    asyncio.run(preload(settings, data))
    return Loaded(
        events=len(data.arrivals),
        closing=len(data.closing(settings)),
        sessions=data.sessions,
        minutes=(max(times) - min(times)) / 60_000,
        last_window_end_ms=last_window_end_ms(data),
        first_ms=min(times),
        closing_ms=data.closing_ms,
    )
