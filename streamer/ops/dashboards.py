"""The Grafana dashboards, as code: ``python -m streamer.ops.dashboards`` (``make dashboards``)
writes them to ``deploy/grafana/dashboards/*.json``; ``--check`` fails when the committed JSON
differs from this module.

Every query uses only the metrics of :mod:`streamer.metrics` (README "Metrics") and the
recorded series of ``deploy/prometheus/rules/recording.yml``; an integration test runs each
of them on a real Prometheus scraping a real worker. Funnel metrics are published by the
worker that runs the window merger, gauges per worker: queries aggregate over instances.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders.bargauge import Panel as BarGaugePanel
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
)
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    DataSourceRef,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import VariableRefresh, VariableSort

from streamer.metrics import TRACKING_STEP
from streamer.resources import deploy_dir

__all__ = ["DASHBOARDS", "DATASOURCE_UID", "DashboardSpec", "PanelSpec", "Query", "render_all"]

# No datasource uid is hard-coded: every panel and query refers to the dashboard's
# `datasource` variable (any Prometheus datasource; Grafana preselects the default one, in
# docker-compose the provisioned `streamer-prometheus`), so the JSON imports into a Grafana
# whose Prometheus has another uid.
DATASOURCE_VARIABLE = "datasource"
DATASOURCE_UID = "${" + DATASOURCE_VARIABLE + "}"
DATASOURCE = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
DASHBOARDS_DIR = deploy_dir() / "grafana" / "dashboards"

# Every raw series is narrowed to the chosen scrape job(s) and instance(s) ("All" = every one),
# so the dashboards fit a Prometheus that scrapes other jobs or several streamer deployments.
# The recorded series (streamer:...) sum over instances and keep the job: narrowed to the job.
SCOPE = 'job=~"$job",instance=~"$instance"'
RECORDED_SCOPE = 'job=~"$job"'
_RAW_SERIES = re.compile(r"\b(streamer_[a-z0-9_]+|up)\b(\{)?")
_RECORDED_SERIES = re.compile(r"\b(streamer:[a-z0-9_:]+)(\{)?")
FUNNEL = 'funnel="$funnel"'
RATE = "$__rate_interval"
RANGE = "$__range"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False  # one value for the chosen range (bar gauges, stats)


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Query, ...]
    kind: Literal["timeseries", "bargauge", "stat"] = "timeseries"
    unit: str = "short"
    width: int = 12
    stacked: bool = False


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    question: str  # what the dashboard answers (its description, and the README's)
    rows: tuple[tuple[str, tuple[PanelSpec, ...]], ...]
    per_funnel: bool = True
    tags: tuple[str, ...] = ("streamer",)
    # The series whose funnel label lists the funnel variable's choices.
    funnels_from: str = "streamer_funnel_sessions_entered_total"

    @property
    def filename(self) -> str:
        return f"{self.uid}.json"


def _ratio(numerator: str, denominator_other: str, by: str) -> str:
    """``a / (a + b)`` summed by ``by``: 0/0 (nothing decided yet) stays NaN, not 0 %."""
    return (
        f"sum by ({by}) ({numerator}) / "
        f"(sum by ({by}) ({numerator}) + sum by ({by}) ({denominator_other}))"
    )


def _increase(metric: str, window: str, selector: str = FUNNEL) -> str:
    return f"increase({metric}{{{selector}}}[{window}])"


OVERVIEW = DashboardSpec(
    uid="streamer-funnel-overview",
    title="streamer / Funnel overview",
    question=(
        "How many sessions reach each stage of the funnel, what share of them go on to the "
        "next stage over the chosen range, and how many are still undecided at each stage now?"
    ),
    rows=(
        (
            "Final cohorts over the chosen range",
            (
                PanelSpec(
                    "Sessions entering each stage",
                    "Attempts that reached the stage, counted once their cohort window is "
                    "final (streamer_funnel_sessions_entered_total).",
                    (
                        Query(
                            "sum by (stage) ("
                            + _increase("streamer_funnel_sessions_entered_total", RANGE)
                            + ")",
                            "{{stage}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
                PanelSpec(
                    "Step conversion",
                    "converted / (converted + dropped) of each step over the chosen range; "
                    "open sessions are not counted until decided.",
                    (
                        Query(
                            _ratio(
                                _increase("streamer_funnel_sessions_converted_total", RANGE),
                                _increase("streamer_funnel_sessions_dropped_total", RANGE),
                                "step",
                            ),
                            "{{step}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    unit="percentunit",
                ),
                PanelSpec(
                    "Attempts excluded per step",
                    "Attempts an exclusion event took out of the funnel at the step over the "
                    "chosen range (funnels with exclusions; out of the step's conversion "
                    "denominator): streamer_funnel_sessions_excluded_total.",
                    (
                        Query(
                            "sum by (step) ("
                            + _increase("streamer_funnel_sessions_excluded_total", RANGE)
                            + ")",
                            "{{step}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    width=24,
                ),
                PanelSpec(
                    "Landing bounce by campaign",
                    "Of the attempts that entered the first stage, the share that dropped "
                    "there, per utm campaign over the chosen range (funnels with a "
                    "utm_campaign segment; its cap, the rest as other): a campaign bouncing "
                    "far more than the others promises what its landing page does not show "
                    "(streamer_funnel_landing_outcomes_total).",
                    (
                        Query(
                            _ratio(
                                _increase(
                                    "streamer_funnel_landing_outcomes_total",
                                    RANGE,
                                    f'{FUNNEL},outcome="bounced"',
                                ),
                                _increase(
                                    "streamer_funnel_landing_outcomes_total",
                                    RANGE,
                                    f'{FUNNEL},outcome="continued"',
                                ),
                                "campaign",
                            ),
                            "{{campaign}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    unit="percentunit",
                    width=24,
                ),
            ),
        ),
        (
            "Now",
            (
                PanelSpec(
                    "Open sessions per stage",
                    "Sessions (a user funnel's users) whose attempt is undecided, by the "
                    "stage they are at, summed over workers (streamer_funnel_sessions_open).",
                    (
                        Query(
                            f"sum by (stage) (streamer_funnel_sessions_open{{{FUNNEL}}})",
                            "{{stage}}",
                        ),
                    ),
                    stacked=True,
                ),
                PanelSpec(
                    "Final windows published",
                    "Cohort windows merged from every partition and published final, per "
                    "minute: flat means the funnel's numbers stopped coming.",
                    (
                        Query(
                            "sum(rate(streamer_funnel_windows_closed_total"
                            f"{{{FUNNEL}}}[{RATE}])) * 60",
                            "windows/min",
                        ),
                    ),
                    width=6,
                ),
                PanelSpec(
                    "Newest final window, age",
                    "Wall clock minus the end of the newest final cohort window (event time): "
                    "how far behind the final numbers are.",
                    (
                        Query(
                            "time() - max(streamer_funnel_last_window_end_timestamp_seconds"
                            f"{{{FUNNEL}}})",
                            "age",
                        ),
                    ),
                    kind="stat",
                    unit="s",
                    width=6,
                ),
            ),
        ),
    ),
)

CONVERSION = DashboardSpec(
    uid="streamer-step-conversion",
    title="streamer / Step conversion and drop-off",
    question=(
        "How does each step's conversion and drop-off move over time, for final cohorts "
        "(every session decided), how many sessions of the young cohorts are still open, and "
        "how does each experiment's variant convert at its guarded steps?"
    ),
    rows=(
        (
            "Final cohorts",
            (
                PanelSpec(
                    "Step conversion (5m)",
                    "Recorded streamer:funnel_step_conversion:ratio_rate5m: final cohorts "
                    "only, so the newest minutes are never half-decided.",
                    (
                        Query(
                            f"streamer:funnel_step_conversion:ratio_rate5m{{{FUNNEL}}}",
                            "{{step}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Step conversion (1h)",
                    "Recorded streamer:funnel_step_conversion:ratio_rate1h: the slower, "
                    "steadier baseline to compare the 5m line with.",
                    (
                        Query(
                            f"streamer:funnel_step_conversion:ratio_rate1h{{{FUNNEL}}}",
                            "{{step}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Step drop-off (5m)",
                    "Recorded streamer:funnel_step_drop_off:ratio_rate5m: dropped / decided.",
                    (
                        Query(
                            f"streamer:funnel_step_drop_off:ratio_rate5m{{{FUNNEL}}}",
                            "{{step}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Last final window, per step",
                    "Conversion of the newest final cohort window "
                    "(streamer_funnel_step_conversion_ratio), one window, no smoothing.",
                    (
                        Query(
                            f"max by (step) (streamer_funnel_step_conversion_ratio{{{FUNNEL}}})",
                            "{{step}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Time to convert, p50 and p90",
                    "From reaching a stage to reaching the next, over final windows "
                    "(streamer_funnel_time_to_convert_seconds).",
                    (
                        Query(
                            "histogram_quantile(0.5, sum by (step, le) (rate("
                            f"streamer_funnel_time_to_convert_seconds_bucket{{{FUNNEL}}}"
                            f"[{RATE}])))",
                            "p50 {{step}}",
                        ),
                        Query(
                            "histogram_quantile(0.9, sum by (step, le) (rate("
                            f"streamer_funnel_time_to_convert_seconds_bucket{{{FUNNEL}}}"
                            f"[{RATE}])))",
                            "p90 {{step}}",
                        ),
                    ),
                    unit="s",
                ),
            ),
        ),
        (
            "Young cohorts (undecided)",
            (
                PanelSpec(
                    "Open sessions per stage",
                    "Attempts (of sessions, or a user funnel's users) still undecided at each "
                    "stage: they count in no conversion figure above until their step "
                    "converts or times out.",
                    (
                        Query(
                            f"sum by (stage) (streamer_funnel_sessions_open{{{FUNNEL}}})",
                            "{{stage}}",
                        ),
                    ),
                    width=24,
                ),
            ),
        ),
        (
            # Gauges the detector's worker sets after every window (0 elsewhere): max over
            # workers. Funnels without an experiment leave this row empty.
            "Experiments (final cohorts the guard counted)",
            (
                PanelSpec(
                    "Experiment conversion per variant",
                    "Each variant's conversion at every guarded step, converted / decided "
                    "attempts over the final cohorts the experiment guard counted so far "
                    "(streamer_experiment_conversion_ratio; docs/experiments.md): a variant "
                    "below its control at a step is what a guardrail alert is about.",
                    (
                        Query(
                            "max by (experiment, step, variant) ("
                            f"streamer_experiment_conversion_ratio{{{FUNNEL}}})",
                            "{{experiment}} {{step}} {{variant}}",
                        ),
                    ),
                    unit="percentunit",
                    width=24,
                ),
                PanelSpec(
                    "Decided attempts per variant",
                    "Attempts decided (converted + dropped) at each guarded step per variant "
                    "(streamer_experiment_decided_attempts): an arm is judged from 200.",
                    (
                        Query(
                            "max by (experiment, step, variant) ("
                            f"streamer_experiment_decided_attempts{{{FUNNEL}}})",
                            "{{experiment}} {{step}} {{variant}}",
                        ),
                    ),
                ),
                PanelSpec(
                    "Exposures per variant",
                    "Attempts exposed per variant in the windows the guard counted "
                    "(streamer_experiment_exposures): their split against the declared one is "
                    "the sample-ratio check.",
                    (
                        Query(
                            "max by (experiment, variant) ("
                            f"streamer_experiment_exposures{{{FUNNEL}}})",
                            "{{experiment}} {{variant}}",
                        ),
                    ),
                    stacked=True,
                ),
            ),
        ),
    ),
)

ABANDONMENTS = DashboardSpec(
    uid="streamer-abandonments",
    title="streamer / Abandonments",
    question=(
        "Where do sessions abandon the funnel (timed out at an abandonment stage), how much "
        "cart value is at risk, and how many abandonments were retracted because the session "
        "ordered afterwards?"
    ),
    rows=(
        (
            "Abandonments",
            (
                PanelSpec(
                    "Abandonments per stage",
                    "Abandonment records emitted per minute (streamer_abandonments_total).",
                    (
                        Query(
                            "sum by (stage) (rate(streamer_abandonments_total"
                            f"{{{FUNNEL}}}[{RATE}])) * 60",
                            "{{stage}}",
                        ),
                    ),
                    stacked=True,
                ),
                PanelSpec(
                    "Abandonments over the chosen range",
                    "Abandonments per stage over the range, and how many were retracted.",
                    (
                        Query(
                            "sum by (stage) ("
                            + _increase("streamer_abandonments_total", RANGE)
                            + ")",
                            "{{stage}}",
                            instant=True,
                        ),
                        Query(
                            "sum by (stage) ("
                            + _increase("streamer_abandonment_retractions_total", RANGE)
                            + ")",
                            "retracted {{stage}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
                PanelSpec(
                    "Cart value at risk over the chosen range",
                    "Cart value of the abandonments per stage and currency "
                    "(streamer_abandoned_cart_value_total), and of those retracted because "
                    "the session ordered after all (streamer_retracted_cart_value_total).",
                    (
                        Query(
                            "sum by (stage, currency) ("
                            + _increase("streamer_abandoned_cart_value_total", RANGE)
                            + ")",
                            "{{stage}} {{currency}}",
                            instant=True,
                        ),
                        Query(
                            "sum by (stage, currency) ("
                            + _increase("streamer_retracted_cart_value_total", RANGE)
                            + ")",
                            "retracted {{stage}} {{currency}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
            ),
        ),
    ),
)

ALERTS = DashboardSpec(
    uid="streamer-alerts",
    title="streamer / Alerts",
    question=(
        "Which drop-off and data-quality alerts fired or resolved, is any input silent now, "
        "which steps are still warming up (too little history to alert on), and did the "
        "alerts reach Slack?"
    ),
    rows=(
        (
            "Drop-off alerts",
            (
                PanelSpec(
                    "Alert notifications by step and state",
                    "Drop-off alert notifications decided (firing, repeat, resolved) per "
                    "step over the chosen range (streamer_alerts_total).",
                    (
                        Query(
                            "sum by (step, state, severity) ("
                            + _increase(
                                "streamer_alerts_total",
                                RANGE,
                                FUNNEL + f', step!="{TRACKING_STEP}"',
                            )
                            + ")",
                            "{{step}} {{state}} ({{severity}})",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
                PanelSpec(
                    "Detector warming up",
                    "1 while a step's baseline holds too few final sessions to alert on it. "
                    "Lowest over workers: a worker that never ran the detector reports 1.",
                    (
                        Query(
                            f"min by (step) (streamer_detector_warming_up{{{FUNNEL}}})",
                            "{{step}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Data quality",
            (
                PanelSpec(
                    "Data-quality alerts",
                    "Tracking alerts (an input topic or event type went silent) fired and "
                    "resolved over the chosen range.",
                    (
                        Query(
                            "sum by (state, severity) ("
                            + _increase(
                                "streamer_alerts_total", RANGE, FUNNEL + f', step="{TRACKING_STEP}"'
                            )
                            + ")",
                            "{{state}} ({{severity}})",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
                PanelSpec(
                    "Silent inputs",
                    "1 while a data-quality alert says this input topic or event type is "
                    "silent (streamer_tracking_silent).",
                    (
                        Query(
                            f"max by (subject, name) (streamer_tracking_silent{{{FUNNEL}}})",
                            "{{subject}} {{name}}",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Delivery",
            (
                PanelSpec(
                    "Slack deliveries by outcome",
                    "Notifier results per minute: delivered, retry, failed (parked in "
                    "funnel.alerts.failed), no_route, duplicate.",
                    (
                        Query(
                            "sum by (outcome) (rate(streamer_alert_deliveries_total"
                            f"[{RATE}])) * 60",
                            "{{outcome}}",
                        ),
                    ),
                ),
                PanelSpec(
                    "Alert delivery latency, p90",
                    "From the alert record being written to its delivery.",
                    (
                        Query(
                            "histogram_quantile(0.9, sum by (le) (rate("
                            f"streamer_alert_delivery_seconds_bucket[{RATE}])))",
                            "p90",
                        ),
                    ),
                    unit="s",
                ),
            ),
        ),
    ),
)

PIPELINE = DashboardSpec(
    uid="streamer-pipeline",
    title="streamer / Pipeline health",
    question=(
        "Is the pipeline keeping up and losing nothing: input per topic, dead letters and "
        "late events, consumer and watermark lag, checkpoints, restarts and rebalances, and "
        "Slack delivery?"
    ),
    per_funnel=False,
    rows=(
        (
            "Input",
            (
                PanelSpec(
                    "Events in per topic",
                    "Input messages per second by source topic and outcome.",
                    (
                        Query(
                            f"sum by (topic, outcome) (rate(streamer_events_total[{RATE}]))",
                            "{{topic}} {{outcome}}",
                        ),
                    ),
                    unit="ops",
                ),
                PanelSpec(
                    "Dead letters by reason",
                    "Messages written to the dead-letter topic per second, by reason code.",
                    (
                        Query(
                            f"sum by (reason) (rate(streamer_dead_letters_total[{RATE}]))",
                            "{{reason}}",
                        ),
                    ),
                    unit="ops",
                    stacked=True,
                ),
                PanelSpec(
                    "Dead-letter share per topic",
                    "Recorded streamer:dead_letter:ratio_rate5m: the share of each topic's "
                    "input dead-lettered (StreamerDeadLetterRateHigh fires above 5 %).",
                    (Query("streamer:dead_letter:ratio_rate5m", "{{topic}}"),),
                    unit="percentunit",
                ),
                PanelSpec(
                    "Late events",
                    "Events behind their partition's watermark by more than the allowed "
                    "lateness, per second (dead-lettered late, never applied).",
                    (Query(f"sum(rate(streamer_late_events_total[{RATE}]))", "late"),),
                    unit="ops",
                ),
                PanelSpec(
                    "Input bytes per topic",
                    "Bytes of message values read per second.",
                    (
                        Query(
                            f"sum by (topic) (rate(streamer_event_bytes_total[{RATE}]))",
                            "{{topic}}",
                        ),
                    ),
                    unit="Bps",
                    width=24,
                ),
            ),
        ),
        (
            "Lag",
            (
                PanelSpec(
                    "Consumer lag per topic",
                    "Messages in the input partitions not yet read, summed per topic.",
                    (
                        Query(
                            "sum by (topic) (streamer_consumer_lag_messages)",
                            "{{topic}}",
                        ),
                    ),
                ),
                PanelSpec(
                    "Watermark lag per partition",
                    "Wall clock minus the partition's event-time watermark: grows when an "
                    "input backs up or every input went quiet.",
                    (
                        Query(
                            "max by (partition) (streamer_watermark_lag_seconds)",
                            "partition {{partition}}",
                        ),
                    ),
                    unit="s",
                ),
                PanelSpec(
                    "Event-loop lag per worker",
                    "How late the worker's loop monitor wakes up (p50, p99): the time "
                    "synchronous work held the event loop. Above 0.1 s timers overlap, "
                    "heartbeats and checkpoints wait (docs/operations.md).",
                    tuple(
                        Query(
                            f"histogram_quantile({q}, sum by (instance, le) (rate("
                            f"streamer_event_loop_lag_seconds_bucket[{RATE}])))",
                            f"p{round(q * 100)} {{{{instance}}}}",
                        )
                        for q in (0.5, 0.99)
                    ),
                    unit="s",
                    width=24,
                ),
            ),
        ),
        (
            "Checkpoints",
            (
                PanelSpec(
                    "Checkpoint age per partition",
                    "Seconds since the partition's last checkpoint; growing with unacked "
                    "input means checkpoints fail.",
                    (
                        Query(
                            "max by (partition) (streamer_checkpoint_age_seconds)",
                            "age {{partition}}",
                        ),
                    ),
                    unit="s",
                ),
                PanelSpec(
                    "Unacked input and checkpoint duration",
                    "Input applied but not stored yet (read again after a crash), and the "
                    "p90 time to take one checkpoint.",
                    (
                        Query("sum(streamer_unacked_messages)", "unacked messages"),
                        Query(
                            "histogram_quantile(0.9, sum by (le) (rate("
                            f"streamer_checkpoint_seconds_bucket[{RATE}])))",
                            "p90 checkpoint seconds",
                        ),
                    ),
                ),
            ),
        ),
        (
            "Workers, restarts and rebalances",
            (
                PanelSpec(
                    "Workers up",
                    "Workers Prometheus scraped successfully (up).",
                    (Query("sum(up)", "workers up"),),
                    kind="stat",
                    width=8,
                ),
                PanelSpec(
                    "Restarts over the chosen range",
                    "Counter resets of each worker's checkpoint count: one per process "
                    "restart (streamer has no restart counter of its own).",
                    (
                        Query(
                            f"sum(resets(streamer_checkpoints_total[{RANGE}]))",
                            "restarts",
                            instant=True,
                        ),
                    ),
                    kind="stat",
                    width=8,
                ),
                PanelSpec(
                    "Rebalances over the chosen range",
                    "Changes of the partitions each worker consumes, summed over workers "
                    "(streamer has no rebalance counter of its own).",
                    (
                        Query(
                            f"sum(changes(streamer_assigned_partitions[{RANGE}]))",
                            "assignment changes",
                            instant=True,
                        ),
                    ),
                    kind="stat",
                    width=8,
                ),
                PanelSpec(
                    "Assigned partitions per worker",
                    "Partitions each worker consumes: a step is a rebalance.",
                    (
                        Query(
                            "sum by (instance, topic) (streamer_assigned_partitions)",
                            "{{instance}} {{topic}}",
                        ),
                    ),
                ),
                PanelSpec(
                    "Rebalance side effects",
                    "Per minute: re-delivered messages a checkpoint already reflected, "
                    "partitions read again from a checkpoint, messages of revoked "
                    "partitions, input lost to retention.",
                    (
                        Query(
                            f"sum(rate(streamer_replayed_messages_total[{RATE}])) * 60",
                            "replayed",
                        ),
                        Query(f"sum(rate(streamer_input_rewinds_total[{RATE}])) * 60", "rewinds"),
                        Query(
                            f"sum(rate(streamer_revoked_partition_messages_total[{RATE}])) * 60",
                            "revoked",
                        ),
                        Query(
                            f"sum(rate(streamer_input_lost_messages_total[{RATE}])) * 60",
                            "lost",
                        ),
                    ),
                ),
                PanelSpec(
                    "Merger health",
                    "Per minute: partials or windows records a merger/detector could not "
                    "read, and partials superseded.",
                    (
                        Query(
                            f"sum(rate(streamer_window_merge_errors_total[{RATE}])) * 60",
                            "merge errors",
                        ),
                        Query(
                            f"sum(rate(streamer_window_partials_superseded_total[{RATE}])) * 60",
                            "partials superseded",
                        ),
                    ),
                ),
                PanelSpec(
                    "Slack deliveries by outcome",
                    "Notifier results per minute (streamer_alert_deliveries_total).",
                    (
                        Query(
                            "sum by (outcome) (rate(streamer_alert_deliveries_total"
                            f"[{RATE}])) * 60",
                            "{{outcome}}",
                        ),
                    ),
                ),
            ),
        ),
    ),
)


def _lifecycle(metric: str, by: str, selector: str = FUNNEL) -> str:
    """A lifecycle gauge of the chosen funnel, one series per ``by``: only the worker that
    runs the merger shows them (the max over instances is its value)."""
    return f"max by ({by}) ({metric}{{{selector}}})"


# Value per acquired user over every channel of a cohort week: each channel's value per user
# weighted by its users (the gauges carry per-channel figures only).
_ALL_CHANNELS_VALUE = (
    "sum by (cohort, horizon) ("
    + _lifecycle("streamer_lifecycle_value_per_user", "cohort, channel, horizon")
    + " * on (cohort, channel) group_left "
    + _lifecycle("streamer_lifecycle_acquired_users", "cohort, channel")
    + ") / on (cohort) group_left sum by (cohort) ("
    + _lifecycle("streamer_lifecycle_acquired_users", "cohort, channel")
    + ")"
)

LIFECYCLE = DashboardSpec(
    uid="streamer-lifecycle",
    title="streamer / Lifecycle",
    question=(
        "How long do visitors take to buy first, per acquisition channel; how many buyers of "
        "each first-order week come back within 30/60/90 days and how many churned; what is "
        "a week's newly acquired user worth over time?"
    ),
    funnels_from="streamer_lifecycle_buyers",
    rows=(
        (
            "Time to first purchase (buyers so far)",
            (
                PanelSpec(
                    "Time to first purchase, median and p90 by channel",
                    "From first visit to first order, per acquisition channel, over every "
                    "buyer so far (histogram_quantile of "
                    "streamer_lifecycle_first_purchase_buyers: exact to its bucket, 1 h .. "
                    "90 d).",
                    (
                        Query(
                            "histogram_quantile(0.5, "
                            + _lifecycle("streamer_lifecycle_first_purchase_buyers", "channel, le")
                            + ")",
                            "{{channel}} p50",
                        ),
                        Query(
                            "histogram_quantile(0.9, "
                            + _lifecycle("streamer_lifecycle_first_purchase_buyers", "channel, le")
                            + ")",
                            "{{channel}} p90",
                        ),
                    ),
                    unit="s",
                ),
                PanelSpec(
                    "Mean time to first purchase by channel",
                    "Mean time from first visit to first order of each channel's buyers "
                    "(streamer_lifecycle_first_purchase_mean_seconds).",
                    (
                        Query(
                            _lifecycle("streamer_lifecycle_first_purchase_mean_seconds", "channel"),
                            "{{channel}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    unit="s",
                ),
                PanelSpec(
                    "Buyers by channel",
                    "Buyers so far per acquisition channel (the +Inf bucket of "
                    "streamer_lifecycle_first_purchase_buyers).",
                    (
                        Query(
                            _lifecycle(
                                "streamer_lifecycle_first_purchase_buyers",
                                "channel",
                                f'{FUNNEL},le="+Inf"',
                            ),
                            "{{channel}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    width=24,
                ),
            ),
        ),
        (
            "First-order cohort weeks: repeat purchases and churn",
            (
                PanelSpec(
                    "Repeat rate by cohort week and horizon",
                    "Of the buyers whose first order fell in the week, those with a second "
                    "order within the horizon (streamer_lifecycle_repeat_ratio; final once "
                    "the watermark passes the week's end plus the horizon). The newest "
                    "lifecycle_cohort_weeks weeks.",
                    (
                        Query(
                            _lifecycle("streamer_lifecycle_repeat_ratio", "cohort, horizon"),
                            "{{cohort}} {{horizon}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    unit="percentunit",
                    width=24,
                ),
                PanelSpec(
                    "Churned share by cohort week",
                    "Of the week's buyers, those with no order churn_days whole days after "
                    "their latest (streamer_lifecycle_churned_ratio, as of the watermark).",
                    (
                        Query(
                            _lifecycle("streamer_lifecycle_churned_ratio", "cohort"),
                            "{{cohort}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                    unit="percentunit",
                ),
                PanelSpec(
                    "Buyers by first-order week",
                    "Buyers whose first order fell in the week (streamer_lifecycle_buyers): "
                    "the denominator of the two panels beside.",
                    (
                        Query(
                            _lifecycle("streamer_lifecycle_buyers", "cohort"),
                            "{{cohort}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
            ),
        ),
        (
            "Acquisition cohort weeks: value per user",
            (
                PanelSpec(
                    "Value per acquired user by cohort week and horizon",
                    "Order value within the horizon of each user's first visit, per user "
                    "first visiting in the week, buyers or not, every channel together "
                    "(streamer_lifecycle_value_per_user weighted by "
                    "streamer_lifecycle_acquired_users).",
                    (Query(_ALL_CHANNELS_VALUE, "{{cohort}} {{horizon}}", instant=True),),
                    kind="bargauge",
                    width=24,
                ),
                PanelSpec(
                    "Value per acquired user by channel and horizon",
                    "The same per acquisition channel, over the cohort weeks shown "
                    "(weighted by each week's users).",
                    (
                        Query(
                            "sum by (channel, horizon) ("
                            + _lifecycle(
                                "streamer_lifecycle_value_per_user", "cohort, channel, horizon"
                            )
                            + " * on (cohort, channel) group_left "
                            + _lifecycle("streamer_lifecycle_acquired_users", "cohort, channel")
                            + ") / on (channel) group_left sum by (channel) ("
                            + _lifecycle("streamer_lifecycle_acquired_users", "cohort, channel")
                            + ")",
                            "{{channel}} {{horizon}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
                PanelSpec(
                    "Users acquired by cohort week and channel",
                    "Users first visiting in the week through the channel "
                    "(streamer_lifecycle_acquired_users).",
                    (
                        Query(
                            _lifecycle("streamer_lifecycle_acquired_users", "cohort, channel"),
                            "{{cohort}} {{channel}}",
                            instant=True,
                        ),
                    ),
                    kind="bargauge",
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[DashboardSpec, ...] = (
    OVERVIEW,
    CONVERSION,
    ABANDONMENTS,
    ALERTS,
    PIPELINE,
    LIFECYCLE,
)


def scoped(expr: str) -> str:
    """``expr`` with every raw series narrowed to the ``job`` and ``instance`` variables, and
    every recorded one to the ``job`` variable."""

    def narrowing(scope: str) -> Callable[[re.Match[str]], str]:
        def narrow(match: re.Match[str]) -> str:
            name, brace = match.group(1), match.group(2)
            return f"{name}{{{scope}," if brace else f"{name}{{{scope}}}"

        return narrow

    return _RECORDED_SERIES.sub(narrowing(RECORDED_SCOPE), _RAW_SERIES.sub(narrowing(SCOPE), expr))


def _target(query: Query, ref_id: str) -> Dataquery:
    target = Dataquery().expr(scoped(query.expr)).ref_id(ref_id).datasource(DATASOURCE)
    if query.legend:
        target = target.legend_format(query.legend)
    return target.instant() if query.instant else target.range()


def _panel(spec: PanelSpec, panel_id: int) -> TimeseriesPanel | BarGaugePanel | StatPanel:
    panel: TimeseriesPanel | BarGaugePanel | StatPanel
    if spec.kind == "bargauge":
        panel = (
            BarGaugePanel()
            .display_mode(BarGaugeDisplayMode.GRADIENT)
            .orientation(VizOrientation.HORIZONTAL)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
            .min(0)
        )
        if spec.unit == "percentunit":
            panel = panel.max(1)
    elif spec.kind == "stat":
        panel = StatPanel().reduce_options(ReduceDataOptions().calcs(["lastNotNull"]))
    else:
        panel = TimeseriesPanel().legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        if spec.stacked:  # parts of one whole (stages, reasons): stacked areas
            panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(30)
    panel = (
        panel.id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .height(8)
        .span(spec.width)
    )
    for index, query in enumerate(spec.queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def build_dashboard(spec: DashboardSpec) -> Dashboard:
    dashboard = (
        Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.question)
        .tags(list(spec.tags))
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .editable()
    )
    dashboard = dashboard.with_variable(
        DatasourceVariable(DATASOURCE_VARIABLE).label("Prometheus").type("prometheus")
    )
    for name, label, series in (
        ("job", "Job", "streamer_events_total"),
        ("instance", "Instance", 'streamer_events_total{job=~"$job"}'),
    ):
        values = f"label_values({series}, {name})"
        dashboard = dashboard.with_variable(
            QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(values)
            .definition(values)
            .include_all(True)  # "All": the values listed (only jobs with streamer series)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
    if spec.per_funnel:
        funnels = "label_values(" + scoped(spec.funnels_from) + ", funnel)"
        dashboard = dashboard.with_variable(
            QueryVariable("funnel")
            .label("Funnel")
            .datasource(DATASOURCE)
            .query(funnels)
            .definition(funnels)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
        )
    panel_id = 0
    for row_title, panels in spec.rows:
        panel_id += 1
        dashboard = dashboard.with_row(Row(row_title).id(panel_id))
        for panel in panels:
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(panel, panel_id))
    return dashboard


def render(spec: DashboardSpec) -> str:
    return JSONEncoder(sort_keys=True, indent=2).encode(build_dashboard(spec).build()) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text, for every dashboard."""
    return {spec.filename: render(spec) for spec in DASHBOARDS}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamer.ops.dashboards",
        description="Write the Grafana dashboards as JSON, or check the committed ones.",
    )
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR, help="folder to write to")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    rendered = render_all()
    if args.check:
        stale = sorted(
            name
            for name, text in rendered.items()
            if not (out / name).is_file() or (out / name).read_text() != text
        )
        extra = sorted(p.name for p in out.glob("*.json") if p.name not in rendered)
        for name in stale:
            print(f"{out / name}: differs from streamer/ops/dashboards.py", file=sys.stderr)
        for name in extra:
            print(f"{out / name}: no dashboard of that name in the code", file=sys.stderr)
        if stale or extra:
            print("run `make dashboards` and commit the result", file=sys.stderr)
            return 1
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
