"""Every Prometheus metric streamer exposes, created in one place on an injected registry.

Naming follows Prometheus practice: ``streamer_`` prefix, base units (``_seconds``,
``_bytes``), counters end in ``_total``, ratios are 0..1 and end in ``_ratio``. Labels never
carry session or user ids; known label sets are pre-initialised so a series exists at 0
before its first event (``rate()`` and absence alerts need that).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.events import EVENT_MODELS, ReasonCode
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.stages import LifecycleStage
from streamer.funnel.windows import TIME_TO_CONVERT_BUCKETS_MS

__all__ = ["OUTCOMES", "LiveSnapshot", "Metrics"]

OUTCOMES = ("accepted", "dead_lettered", "duplicate")


@dataclass
class LiveSnapshot:
    """What the worker knows right now, read at scrape time (nothing is paid per event)."""

    open_sessions: dict[tuple[str, str], int] = field(default_factory=dict)  # (funnel, stage)
    watermark_lag_seconds: dict[int, float] = field(default_factory=dict)  # partition -> lag
    consumer_lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition)
    assigned: dict[str, int] = field(default_factory=dict)  # topic -> partitions assigned


class _LiveCollector(Collector):
    def __init__(self, funnels: tuple[FunnelDefinition, ...]) -> None:
        self.provider: Callable[[], LiveSnapshot] = LiveSnapshot
        self._funnels = funnels

    def collect(self) -> Iterator[Metric]:
        snapshot = self.provider()
        open_family = GaugeMetricFamily(
            "streamer_funnel_sessions_open",
            "Sessions of this worker whose attempt is undecided, by the stage they are at",
            labels=["funnel", "stage"],
        )
        for funnel in self._funnels:
            for stage in funnel.stages:
                count = snapshot.open_sessions.get((funnel.name, stage.name), 0)
                open_family.add_metric([funnel.name, stage.name], count)
        yield open_family
        lag = GaugeMetricFamily(
            "streamer_watermark_lag_seconds",
            "Wall clock minus the partition's event-time watermark",
            labels=["partition"],
        )
        for partition, seconds in sorted(snapshot.watermark_lag_seconds.items()):
            lag.add_metric([str(partition)], seconds)
        yield lag
        consumer = GaugeMetricFamily(
            "streamer_consumer_lag_messages",
            "Messages in the partition not yet read by this worker",
            labels=["topic", "partition"],
        )
        for (topic, partition), messages in sorted(snapshot.consumer_lag.items()):
            consumer.add_metric([topic, str(partition)], messages)
        yield consumer
        assigned = GaugeMetricFamily(
            "streamer_assigned_partitions",
            "Partitions of the topic this worker currently consumes",
            labels=["topic"],
        )
        for topic, count in sorted(snapshot.assigned.items()):
            assigned.add_metric([topic], count)
        yield assigned


class _TimeToConvertCollector(Collector):
    """Cumulative time-to-convert histogram per step, from the merged window buckets."""

    def __init__(self, funnels: tuple[FunnelDefinition, ...]) -> None:
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = {}
        for funnel in funnels:
            for step in funnel.step_names:
                self.buckets[(funnel.name, step)] = [0] * (len(TIME_TO_CONVERT_BUCKETS_MS) + 1)
                self.sums[(funnel.name, step)] = 0.0

    def observe_buckets(self, funnel: str, step: str, buckets: list[int], sum_ms: int) -> None:
        target = self.buckets.setdefault((funnel, step), [0] * len(buckets))
        for index, value in enumerate(buckets):
            target[index] += value
        self.sums[(funnel, step)] = self.sums.get((funnel, step), 0.0) + sum_ms / 1000

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            "streamer_funnel_time_to_convert_seconds",
            "Time from reaching a stage to reaching the next, over closed windows",
            labels=["funnel", "step"],
        )
        bounds = [f"{ms / 1000:g}" for ms in TIME_TO_CONVERT_BUCKETS_MS] + ["+Inf"]
        for (funnel, step), counts in sorted(self.buckets.items()):
            cumulative, running = [], 0
            for bound, value in zip(bounds, counts, strict=True):
                running += value
                cumulative.append((bound, running))
            family.add_metric([funnel, step], cumulative, self.sums[(funnel, step)])
        yield family


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
    late_events: Counter
    session_overflow: Counter
    abandonments: Counter
    alerts: Counter
    alert_deliveries: Counter
    alert_delivery_seconds: Histogram
    retractions: Counter
    merge_errors: Counter
    funnel_entered: Counter
    funnel_converted: Counter
    funnel_dropped: Counter
    step_conversion_ratio: Gauge
    step_drop_off_ratio: Gauge
    last_window_end: Gauge
    windows_closed: Counter
    time_to_convert: _TimeToConvertCollector
    live: _LiveCollector

    @classmethod
    def create(
        cls,
        registry: CollectorRegistry,
        source_topics: Iterable[str] = (),
        funnels: tuple[FunnelDefinition, ...] = (),
    ) -> Metrics:
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
            late_events=Counter(
                "streamer_late_events",
                "Events behind their partition's watermark by more than the allowed lateness "
                "(dead-lettered with reason late)",
                registry=registry,
            ),
            session_overflow=Counter(
                "streamer_session_overflow_events",
                "Events ignored because their session holds the maximum number of events",
                registry=registry,
            ),
            abandonments=Counter(
                "streamer_abandonments",
                "Abandonment events emitted (sessions that timed out at an abandonment stage)",
                ["funnel", "stage"],
                registry=registry,
            ),
            alerts=Counter(
                "streamer_alerts",
                "Alert notifications decided (firing, repeat, resolved)",
                ["funnel", "step", "state", "severity"],
                registry=registry,
            ),
            alert_deliveries=Counter(
                "streamer_alert_deliveries",
                "Alert deliveries by outcome (delivered, retry, failed, no_route, duplicate)",
                ["outcome"],
                registry=registry,
            ),
            alert_delivery_seconds=Histogram(
                "streamer_alert_delivery_seconds",
                "From the alert record being written to its delivery",
                buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
                registry=registry,
            ),
            retractions=Counter(
                "streamer_abandonment_retractions",
                "Abandonments retracted because the session ordered afterwards",
                ["funnel", "stage"],
                registry=registry,
            ),
            merge_errors=Counter(
                "streamer_window_merge_errors",
                "Records of the partials topic the window merger could not process",
                registry=registry,
            ),
            funnel_entered=Counter(
                "streamer_funnel_sessions_entered",
                "Sessions that reached the stage, over closed windows",
                ["funnel", "stage"],
                registry=registry,
            ),
            funnel_converted=Counter(
                "streamer_funnel_sessions_converted",
                "Sessions that went on from the step's first stage to its second",
                ["funnel", "step"],
                registry=registry,
            ),
            funnel_dropped=Counter(
                "streamer_funnel_sessions_dropped",
                "Sessions whose step timed out (open sessions are never counted here)",
                ["funnel", "step"],
                registry=registry,
            ),
            step_conversion_ratio=Gauge(
                "streamer_funnel_step_conversion_ratio",
                "Last closed window: converted / (converted + dropped) of the step",
                ["funnel", "step"],
                registry=registry,
            ),
            step_drop_off_ratio=Gauge(
                "streamer_funnel_step_drop_off_ratio",
                "Last closed window: dropped / (converted + dropped) of the step",
                ["funnel", "step"],
                registry=registry,
            ),
            last_window_end=Gauge(
                "streamer_funnel_last_window_end_timestamp_seconds",
                "End of the last closed window of the funnel (event time)",
                ["funnel"],
                registry=registry,
            ),
            windows_closed=Counter(
                "streamer_funnel_windows_closed",
                "Final windows merged from every partition and published",
                ["funnel"],
                registry=registry,
            ),
            time_to_convert=_TimeToConvertCollector(funnels),
            live=_LiveCollector(funnels),
        )
        registry.register(metrics.time_to_convert)
        registry.register(metrics.live)
        for funnel in funnels:
            metrics.windows_closed.labels(funnel=funnel.name)
            for stage in funnel.stages:
                metrics.funnel_entered.labels(funnel=funnel.name, stage=stage.name)
            for step in funnel.step_names:
                metrics.funnel_converted.labels(funnel=funnel.name, step=step)
                metrics.funnel_dropped.labels(funnel=funnel.name, step=step)
        for outcome in ("delivered", "retry", "failed", "no_route", "duplicate"):
            metrics.alert_deliveries.labels(outcome=outcome)
        for topic in source_topics:
            metrics.event_bytes.labels(topic=topic)
            for outcome in OUTCOMES:
                metrics.events.labels(topic=topic, outcome=outcome)
            for reason in ReasonCode:
                metrics.dead_letters.labels(topic=topic, reason=reason.value)
        for event_type in EVENT_MODELS:
            metrics.events_by_type.labels(event_type=event_type)
        for lifecycle in LifecycleStage:
            metrics.stage_events.labels(stage=lifecycle.value)
        return metrics
