"""Every Prometheus metric streamer exposes, created in one place on an injected registry.

Naming follows Prometheus practice: ``streamer_`` prefix, base units (``_seconds``,
``_bytes``), counters end in ``_total``, ratios are 0..1 and end in ``_ratio``. Labels never
carry session or user ids; known label sets are pre-initialised so a series exists at 0
before its first event (``rate()`` and absence alerts need that).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streamer.events import EVENT_MODELS, ReasonCode
from streamer.funnel.stages import LifecycleStage

__all__ = ["OUTCOMES", "Metrics"]

OUTCOMES = ("accepted", "dead_lettered", "duplicate")


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events: Counter
    dead_letters: Counter
    dedup_tracked: Gauge
    event_bytes: Counter
    events_by_type: Counter
    stage_events: Counter
    decode_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry, source_topics: Iterable[str] = ()) -> Metrics:
        metrics = cls(
            registry=registry,
            events=Counter(
                "streamer_events",
                "Input messages by source topic and outcome (accepted, dead_lettered, duplicate)",
                ["topic", "outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                "streamer_dead_letters",
                "Messages written to the dead-letter topic, by source topic and reason code",
                ["topic", "reason"],
                registry=registry,
            ),
            dedup_tracked=Gauge(
                "streamer_dedup_tracked_event_ids",
                "event_ids this worker remembers for de-duplication (within the horizon)",
                registry=registry,
            ),
            event_bytes=Counter(
                "streamer_event_bytes",
                "Bytes of input message values read, by source topic",
                ["topic"],
                registry=registry,
            ),
            events_by_type=Counter(
                "streamer_events_by_type",
                "Accepted events by event type",
                ["event_type"],
                registry=registry,
            ),
            stage_events=Counter(
                "streamer_stage_events",
                "Accepted events by lifecycle stage (awareness, consideration, decision, ...)",
                ["stage"],
                registry=registry,
            ),
            decode_seconds=Histogram(
                "streamer_decode_seconds",
                "Time to decode and validate one input message",
                buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2),
                registry=registry,
            ),
        )
        for topic in source_topics:
            metrics.event_bytes.labels(topic=topic)
            for outcome in OUTCOMES:
                metrics.events.labels(topic=topic, outcome=outcome)
            for reason in ReasonCode:
                metrics.dead_letters.labels(topic=topic, reason=reason.value)
        for event_type in EVENT_MODELS:
            metrics.events_by_type.labels(event_type=event_type)
        for stage in LifecycleStage:
            metrics.stage_events.labels(stage=stage.value)
        return metrics
