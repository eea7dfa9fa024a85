"""Every Prometheus metric streamer exposes, created in one place on an injected registry.

Naming follows Prometheus practice: ``streamer_`` prefix, base units (``_seconds``,
``_bytes``), counters end in ``_total``, ratios are 0..1 and end in ``_ratio``. Labels never
carry session or user ids; known label sets are pre-initialised so a series exists at 0
before its first event (``rate()`` and absence alerts need that).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streamer.events import EVENT_MODELS, ReasonCode
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.lifecycle import FIRST_PURCHASE_BUCKETS_MS
from streamer.funnel.satisfaction import SCORE_RANGE
from streamer.funnel.stages import LifecycleStage
from streamer.funnel.windows import TIME_TO_CONVERT_BUCKETS_MS, UNKNOWN

log = logging.getLogger(__name__)

__all__ = [
    "OUTCOMES",
    "UNPLANNED_NAMES_CAP",
    "UNPLANNED_OTHER",
    "LifecycleView",
    "LiveSnapshot",
    "Metrics",
    "UnplannedCounter",
]

# Every input message ends in one: ignored is an event a tracking plan does not declare.
OUTCOMES = ("accepted", "dead_lettered", "duplicate", "ignored")
# Distinct unplanned event names labelled per process; later ones count as UNPLANNED_OTHER.
UNPLANNED_NAMES_CAP = 100
UNPLANNED_OTHER = "_other"
ALERT_STATES = ("firing", "repeat", "resolved")
ALERT_SEVERITIES = ("page", "warning")
LANDING_OUTCOMES = ("continued", "bounced")
CAMPAIGN_SOURCE = "context.utm_campaign"
TRACKING_STEP = "tracking"  # the step label of data-quality alerts (funnel/tracking/<key>/...)


def campaign_dimension(funnel: FunnelDefinition) -> str | None:
    """The funnel's segment on the utm campaign, whose values label the landing outcomes
    (bounded by its cap: a label per campaign is safe only because the windows fold the rest
    into ``other``)."""
    return next((s.name for s in funnel.segments if s.source == CAMPAIGN_SOURCE), None)


@dataclass
class LiveSnapshot:
    """What the worker knows right now, read at scrape time (nothing is paid per event)."""

    open_sessions: dict[tuple[str, str], int] = field(default_factory=dict)  # (funnel, stage)
    watermark_lag_seconds: dict[int, float] = field(default_factory=dict)  # partition -> lag
    consumer_lag: dict[tuple[str, int], int] = field(default_factory=dict)  # (topic, partition)
    assigned: dict[str, int] = field(default_factory=dict)  # topic -> partitions assigned
    unacked: dict[int, int] = field(default_factory=dict)  # partition -> applied, not stored
    checkpoint_age_seconds: dict[int, float] = field(default_factory=dict)  # partition -> age


class _LiveCollector(Collector):
    def __init__(self, funnels: tuple[FunnelDefinition, ...]) -> None:
        self.provider: Callable[[], LiveSnapshot] = LiveSnapshot
        self._funnels = funnels

    def collect(self) -> Iterator[Metric]:
        snapshot = self.provider()
        open_family = GaugeMetricFamily(
            "streamer_funnel_sessions_open",
            "Sessions (a user funnel's units) of this worker whose attempt is undecided, by "
            "the stage they are at",
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
        unacked = GaugeMetricFamily(
            "streamer_unacked_messages",
            "Input applied in memory but not in a checkpoint yet (read again after a crash)",
            labels=["partition"],
        )
        for partition, messages in sorted(snapshot.unacked.items()):
            unacked.add_metric([str(partition)], messages)
        yield unacked
        age = GaugeMetricFamily(
            "streamer_checkpoint_age_seconds",
            "Seconds since the partition's last checkpoint",
            labels=["partition"],
        )
        for partition, seconds in sorted(snapshot.checkpoint_age_seconds.items()):
            age.add_metric([str(partition)], seconds)
        yield age
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


@dataclass
class LifecycleView:
    """What the lifecycle gauges show of one funnel (the merger's sum of its partitions,
    cohort weeks already bounded: streamer.pipeline.lifecycle)."""

    horizons: list[str]  # "30d", ...
    # channel -> buyers per time-to-first-purchase bucket (not cumulative), sum of seconds
    first_purchase: dict[str, tuple[list[int], float]]
    # first-order cohort week -> buyers, repeaters per horizon, churned
    buyers: dict[str, tuple[int, list[int], int]]
    # (acquisition week, channel) -> users, order value in hundredths per horizon
    acquisition: dict[tuple[str, str], tuple[int, list[int]]]


class _LifecycleCollector(Collector):
    """The lifecycle funnels' figures (docs/lifecycle.md), as the merger last summed them.
    Labels: funnel, channel (declared ones, other, unknown: at most 22), cohort (an ISO week,
    the newest ``lifecycle_cohort_weeks``), horizon (at most 5), le (10)."""

    def __init__(self) -> None:
        self.views: dict[str, LifecycleView] = {}

    def show(self, funnel: str, view: LifecycleView) -> None:
        self.views[funnel] = view  # replaced whole: weeks that aged out leave no series

    def collect(self) -> Iterator[Metric]:
        bounds = [f"{ms / 1000:g}" for ms in FIRST_PURCHASE_BUCKETS_MS] + ["+Inf"]
        first = GaugeMetricFamily(
            "streamer_lifecycle_first_purchase_buyers",
            "Buyers whose first order came within le seconds of their first visit, by "
            "acquisition channel (cumulative, as a histogram's buckets: histogram_quantile "
            "reads it)",
            labels=["funnel", "channel", "le"],
        )
        mean = GaugeMetricFamily(
            "streamer_lifecycle_first_purchase_mean_seconds",
            "Mean time from first visit to first order of the channel's buyers",
            labels=["funnel", "channel"],
        )
        buyers = GaugeMetricFamily(
            "streamer_lifecycle_buyers",
            "Buyers whose first order fell in the cohort week",
            labels=["funnel", "cohort"],
        )
        repeat = GaugeMetricFamily(
            "streamer_lifecycle_repeat_ratio",
            "Of the cohort week's buyers, those with a second order within the horizon",
            labels=["funnel", "cohort", "horizon"],
        )
        churned = GaugeMetricFamily(
            "streamer_lifecycle_churned_ratio",
            "Of the cohort week's buyers, those churned as of the watermark",
            labels=["funnel", "cohort"],
        )
        users = GaugeMetricFamily(
            "streamer_lifecycle_acquired_users",
            "Users first visiting in the cohort week through the channel",
            labels=["funnel", "cohort", "channel"],
        )
        value = GaugeMetricFamily(
            "streamer_lifecycle_value_per_user",
            "Order value per acquired user within the horizon of each user's first visit "
            "(CLV of the acquisition cohort; buyers or not)",
            labels=["funnel", "cohort", "channel", "horizon"],
        )
        for funnel, view in sorted(self.views.items()):
            for channel, (counts, seconds) in sorted(view.first_purchase.items()):
                running = 0
                for bound, count in zip(bounds, counts, strict=True):
                    running += count
                    first.add_metric([funnel, channel, bound], running)
                if running:
                    mean.add_metric([funnel, channel], seconds / running)
            for cohort, (count, repeaters, lost) in sorted(view.buyers.items()):
                buyers.add_metric([funnel, cohort], count)
                if count:
                    churned.add_metric([funnel, cohort], lost / count)
                    for horizon, repeated in zip(view.horizons, repeaters, strict=True):
                        repeat.add_metric([funnel, cohort, horizon], repeated / count)
            for (cohort, channel), (acquired, cents) in sorted(view.acquisition.items()):
                users.add_metric([funnel, cohort, channel], acquired)
                for horizon, total in zip(view.horizons, cents, strict=True):
                    value.add_metric([funnel, cohort, channel, horizon], total / 100 / acquired)
        yield from (first, mean, buyers, repeat, churned, users, value)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events: Counter
    dead_letters: Counter
    event_bytes: Counter
    events_by_type: Counter
    stage_events: Counter
    unplanned_events: Counter
    late_events: Counter
    checkpoints: Counter
    checkpoint_seconds: Histogram
    event_loop_lag: Histogram
    late_partials: Counter
    replayed: Counter
    revoked_messages: Counter
    rewinds: Counter
    input_lost: Counter
    abandonments: Counter
    alerts: Counter
    detector_warming_up: Gauge
    tracking_silent: Gauge
    alert_deliveries: Counter
    alert_delivery_seconds: Histogram
    retractions: Counter
    abandoned_value: Counter
    retracted_value: Counter
    merge_errors: Counter
    funnel_entered: Counter
    funnel_converted: Counter
    funnel_dropped: Counter
    funnel_excluded: Counter
    landing_outcomes: Counter
    step_conversion_ratio: Gauge
    step_drop_off_ratio: Gauge
    experiment_conversion_ratio: Gauge
    survey_answers: Gauge
    survey_score: Gauge
    experiment_decided: Gauge
    experiment_exposures: Gauge
    last_window_end: Gauge
    windows_closed: Counter
    time_to_convert: _TimeToConvertCollector
    lifecycle: _LifecycleCollector
    live: _LiveCollector

    @classmethod
    def create(
        cls,
        registry: CollectorRegistry,
        source_topics: Iterable[str] = (),
        funnels: tuple[FunnelDefinition, ...] = (),
        event_names: Iterable[str] = EVENT_MODELS,
    ) -> Metrics:
        """``event_names``: every name an accepted event can have (the built-in contract's,
        or a tracking plan's), whose counters exist at 0 from the start."""
        source_topics = tuple(source_topics)  # read once per funnel and once for the inputs
        metrics = cls(
            registry=registry,
            events=Counter(
                "streamer_events",
                "Input messages by source topic and outcome (accepted, dead_lettered, duplicate, "
                "ignored: an event the tracking plan does not declare)",
                ["topic", "outcome"],
                registry=registry,
            ),
            dead_letters=Counter(
                "streamer_dead_letters",
                "Messages written to the dead-letter topic, by source topic and reason code",
                ["topic", "reason"],
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
            unplanned_events=Counter(
                "streamer_unplanned_events",
                "Events the tracking plan does not declare, ignored (unplanned.events: ignore), "
                f"by topic and event name (the first {UNPLANNED_NAMES_CAP} names; later ones as "
                f"{UNPLANNED_OTHER})",
                ["topic", "event"],
                registry=registry,
            ),
            late_events=Counter(
                "streamer_late_events",
                "Events behind their partition's watermark by more than the allowed lateness "
                "(dead-lettered with reason late)",
                registry=registry,
            ),
            checkpoints=Counter(
                "streamer_checkpoints",
                "Partition checkpoints: state and offsets stored, outputs flushed, input acked",
                registry=registry,
            ),
            checkpoint_seconds=Histogram(
                "streamer_checkpoint_seconds",
                "Time to take one partition checkpoint (publish, store, flush, ack)",
                buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
                registry=registry,
            ),
            event_loop_lag=Histogram(
                "streamer_event_loop_lag_seconds",
                "How late the worker's event-loop monitor woke up: time the loop was held by "
                "synchronous work and could run nothing else",
                # 1 ms (a healthy loop) .. 5 s (a stall that overlaps every 1 s timer).
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
                registry=registry,
            ),
            replayed=Counter(
                "streamer_replayed_messages",
                "Messages delivered again after a restart or rebalance that the partition's "
                "last checkpoint already reflects (skipped, not applied twice)",
                ["topic"],
                registry=registry,
            ),
            rewinds=Counter(
                "streamer_input_rewinds",
                "Times a partition's input was read again from its checkpoint's offsets",
                registry=registry,
            ),
            input_lost=Counter(
                "streamer_input_lost_messages",
                "Input messages deleted by retention before any worker applied them",
                ["topic"],
                registry=registry,
            ),
            revoked_messages=Counter(
                "streamer_revoked_partition_messages",
                "Messages of a partition taken away by a rebalance, or fetched before one: "
                "left to the partition's owner to read again",
                registry=registry,
            ),
            late_partials=Counter(
                "streamer_window_partials_superseded",
                "Partials not applied: for a window already final, or older than the one held",
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
            detector_warming_up=Gauge(
                "streamer_detector_warming_up",
                "1 while a step's baseline holds too few final sessions to alert on it",
                ["funnel", "step"],
                registry=registry,
            ),
            tracking_silent=Gauge(
                "streamer_tracking_silent",
                "1 while a data-quality alert says this input topic or event type is silent",
                ["funnel", "subject", "name"],
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
            abandoned_value=Counter(
                "streamer_abandoned_cart_value",
                "Cart value of abandonment events (the revenue at risk), in the cart's currency",
                ["funnel", "stage", "currency"],
                registry=registry,
            ),
            retracted_value=Counter(
                "streamer_retracted_cart_value",
                "Cart value of abandonments retracted because the session ordered afterwards",
                ["funnel", "stage", "currency"],
                registry=registry,
            ),
            merge_errors=Counter(
                "streamer_window_merge_errors",
                "Records of the partials topic the window merger could not process",
                registry=registry,
            ),
            funnel_entered=Counter(
                "streamer_funnel_sessions_entered",
                "Attempts that reached the stage, counted when their cohort window is final",
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
            funnel_excluded=Counter(
                "streamer_funnel_sessions_excluded",
                "Attempts an exclusion event took out of the funnel at the step (neither "
                "converted nor dropped), counted when their cohort window is final",
                ["funnel", "step"],
                registry=registry,
            ),
            landing_outcomes=Counter(
                "streamer_funnel_landing_outcomes",
                "Attempts of the first step of a funnel with a utm_campaign segment, per "
                "campaign (the segment's cap, the rest as other, none as unknown), counted when "
                "their cohort window is final: continued (converted) or bounced (dropped)",
                ["funnel", "campaign", "outcome"],
                registry=registry,
            ),
            step_conversion_ratio=Gauge(
                "streamer_funnel_step_conversion_ratio",
                "Last final cohort window: converted / (converted + dropped) of the step",
                ["funnel", "step"],
                registry=registry,
            ),
            step_drop_off_ratio=Gauge(
                "streamer_funnel_step_drop_off_ratio",
                "Last final cohort window: dropped / (converted + dropped) of the step",
                ["funnel", "step"],
                registry=registry,
            ),
            # Labels bounded by the funnel files: declared experiments, variants and steps.
            experiment_conversion_ratio=Gauge(
                "streamer_experiment_conversion_ratio",
                "An experiment's variant at a guarded step: converted / decided attempts over "
                "the final cohorts the guard counted",
                ["funnel", "experiment", "variant", "step"],
                registry=registry,
            ),
            experiment_decided=Gauge(
                "streamer_experiment_decided_attempts",
                "An experiment's variant at a guarded step: decided attempts (converted + "
                "dropped) over the final cohorts the guard counted",
                ["funnel", "experiment", "variant", "step"],
                registry=registry,
            ),
            experiment_exposures=Gauge(
                "streamer_experiment_exposures",
                "An experiment's variant: attempts exposed in the windows the guard counted "
                "(the sample-ratio check's counts)",
                ["funnel", "experiment", "variant"],
                registry=registry,
            ),
            # Labels bounded by the funnel files: declared surveys, stages (or none), scores
            # of the range, segment dimensions and their values folded by the cap.
            survey_answers=Gauge(
                "streamer_survey_answers",
                "Last final window: a survey's answers at a stage giving each score (by the "
                "answers' own time; 0 when none gave it)",
                ["funnel", "survey", "stage", "score"],
                registry=registry,
            ),
            survey_score=Gauge(
                "streamer_survey_score",
                "Last final window with answers: NPS in % (nps surveys) or the satisfied "
                "share 4-5 (csat), and the low share (figure low), per survey, stage and "
                "segment value (dimension and value empty: the stage's total)",
                ["funnel", "survey", "stage", "dimension", "value", "figure"],
                registry=registry,
            ),
            last_window_end=Gauge(
                "streamer_funnel_last_window_end_timestamp_seconds",
                "End of the last final cohort window of the funnel (event time)",
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
            lifecycle=_LifecycleCollector(),
            live=_LiveCollector(funnels),
        )
        registry.register(metrics.time_to_convert)
        registry.register(metrics.lifecycle)
        registry.register(metrics.live)
        for funnel in funnels:
            metrics.windows_closed.labels(funnel=funnel.name)
            for stage in funnel.stages:
                metrics.funnel_entered.labels(funnel=funnel.name, stage=stage.name)
            if campaign_dimension(funnel) is not None:
                for campaign in (UNKNOWN, "other"):
                    for outcome in LANDING_OUTCOMES:
                        metrics.landing_outcomes.labels(
                            funnel=funnel.name, campaign=campaign, outcome=outcome
                        )
            for step in funnel.step_names:
                metrics.funnel_converted.labels(funnel=funnel.name, step=step)
                metrics.funnel_dropped.labels(funnel=funnel.name, step=step)
                metrics.funnel_excluded.labels(funnel=funnel.name, step=step)
            # A counter born at 1 hides its first increase from increase(): the first alert
            # or abandonment of a step would never show on a dashboard.
            for stage_name in funnel.abandonment:
                metrics.abandonments.labels(funnel=funnel.name, stage=stage_name)
                metrics.retractions.labels(funnel=funnel.name, stage=stage_name)
            for step, states in [(s, ALERT_STATES) for s in funnel.step_names] + [
                (TRACKING_STEP, ("firing", "resolved"))
            ]:
                for state in states:
                    for severity in ALERT_SEVERITIES:
                        metrics.alerts.labels(
                            funnel=funnel.name, step=step, state=state, severity=severity
                        )
            for survey in funnel.surveys:
                low, high = SCORE_RANGE[survey.kind]
                for stage_name in ("none", *(stage.name for stage in funnel.stages)):
                    for score in range(low, high + 1):
                        metrics.survey_answers.labels(
                            funnel=funnel.name, survey=survey.name, stage=stage_name, score=score
                        )
            for experiment in funnel.experiments:
                for variant in experiment.variants:
                    metrics.experiment_exposures.labels(
                        funnel=funnel.name, experiment=experiment.name, variant=variant
                    )
                    for guarded in funnel.guarded_steps(experiment):
                        labels = {
                            "funnel": funnel.name,
                            "experiment": experiment.name,
                            "variant": variant,
                            "step": funnel.step_names[guarded],
                        }
                        metrics.experiment_conversion_ratio.labels(**labels)
                        metrics.experiment_decided.labels(**labels)
            # The inputs the tracking check watches are not silent until it says so.
            tracked = [("topic", topic) for topic in source_topics] + [
                ("event_type", event_type)
                for stage in funnel.stages
                for event_type in stage.event_types
            ]
            for subject, name in tracked:
                metrics.tracking_silent.labels(funnel=funnel.name, subject=subject, name=name)
        for outcome in ("delivered", "retry", "failed", "no_route", "duplicate"):
            metrics.alert_deliveries.labels(outcome=outcome)
        for topic in source_topics:
            metrics.event_bytes.labels(topic=topic)
            metrics.replayed.labels(topic=topic)
            metrics.input_lost.labels(topic=topic)
            for outcome in OUTCOMES:
                metrics.events.labels(topic=topic, outcome=outcome)
            for reason in ReasonCode:
                metrics.dead_letters.labels(topic=topic, reason=reason.value)
        for event_type in event_names:
            metrics.events_by_type.labels(event_type=event_type)
        for lifecycle in LifecycleStage:
            metrics.stage_events.labels(stage=lifecycle.value)
        return metrics


class UnplannedCounter:
    """Counts ignored unplanned events by topic and name, with a bounded label set: the first
    ``UNPLANNED_NAMES_CAP`` names get a series of their own (each logged once, so an operator
    sees what the plan is missing), later ones count as ``UNPLANNED_OTHER``."""

    def __init__(self, metrics: Metrics) -> None:
        self._counter = metrics.unplanned_events
        self._names: set[str] = set()
        self._warned_cap = False

    def count(self, topic: str, name: str) -> None:
        if name not in self._names:
            if len(self._names) >= UNPLANNED_NAMES_CAP:
                if not self._warned_cap:
                    self._warned_cap = True
                    log.warning(
                        "more than %d unplanned event names: later ones are counted as %s",
                        UNPLANNED_NAMES_CAP,
                        UNPLANNED_OTHER,
                    )
                name = UNPLANNED_OTHER
            else:
                self._names.add(name)
                log.info(
                    "unplanned event %r on %s ignored (the tracking plan does not declare it; "
                    "unplanned.events: ignore): counted in streamer_unplanned_events_total",
                    name,
                    topic,
                )
        self._counter.labels(topic=topic, event=name).inc()
