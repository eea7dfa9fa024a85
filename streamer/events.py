"""The event contract: what producers send, and the records streamer emits.

Every input event shares an envelope (``event_id``, ``event_type``, ``session_id``,
``occurred_at``...) and carries the properties of its type. ``schemas/`` holds the JSON Schema
generated from these models (``streamer schemas write``); a test fails when they drift.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
)

__all__ = [
    "CHECKOUT_EVENT_TYPES",
    "CLICKSTREAM_EVENT_TYPES",
    "EVENT_MODELS",
    "EVENT_PROPERTIES",
    "SCHEMA_VERSION",
    "Abandonment",
    "AddToCart",
    "Alert",
    "AlertExplanation",
    "CheckoutStarted",
    "DeadLetter",
    "Event",
    "EventContext",
    "EventTime",
    "LifecycleAcquisition",
    "LifecycleBuyers",
    "LifecycleFirstPurchase",
    "LifecycleStats",
    "OrderPlaced",
    "PageView",
    "PaymentFailed",
    "PaymentSubmitted",
    "ProductView",
    "ReasonCode",
    "ReferralSent",
    "RemoveFromCart",
    "ReplayAbandonments",
    "ReplayEvents",
    "ReplayFunnel",
    "ReplayReport",
    "ReplayRun",
    "ReviewSubmitted",
    "Search",
    "SegmentStats",
    "ShippingSubmitted",
    "StageStats",
    "TimeToConvert",
    "WindowStats",
    "event_adapter",
    "to_epoch_ms",
]

SCHEMA_VERSION: Literal[1] = 1

# Bounds that keep one event small; the whole payload is also capped by size (ingest).
_ID = Field(min_length=1, max_length=128)
_SHORT = Field(min_length=1, max_length=256)


_NUMBER = (int, float)  # built once: ``int | float`` in isinstance makes a union per call


def _parse_event_time(value: Any) -> Any:
    """Accept RFC 3339 with an offset, or epoch milliseconds; everything else is an error.
    Returned in UTC (here rather than in an after-validator: one Python call less per event)."""
    if isinstance(value, str):  # the usual case first
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise ValueError("not an RFC 3339 timestamp") from None
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise ValueError("timestamp has no UTC offset (add 'Z' or '+hh:mm')")
        return parsed.astimezone(UTC)
    if isinstance(value, _NUMBER) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("epoch milliseconds must be a finite number")
        # 1e15 ms is year 33658: anything above it is a unit mistake (micro/nanoseconds).
        if not 0 <= value < 1e15:
            raise ValueError("epoch milliseconds out of range (0 .. 1e15)")
        return datetime.fromtimestamp(value / 1000.0, tz=UTC)
    raise ValueError("a timestamp must be RFC 3339 text with an offset or epoch milliseconds")


EventTime = Annotated[
    datetime,
    BeforeValidator(_parse_event_time),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "string",
                    "format": "date-time",
                    "pattern": r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
                    r"([Zz]|[+-]\d{2}:?\d{2})$",
                },
                {"type": "number", "minimum": 0, "exclusiveMaximum": 1e15},
            ],
            "description": "RFC 3339 with an offset, or epoch milliseconds; stored as UTC",
        },
        mode="validation",
    ),
]


def _refuse_boolean(value: Any) -> Any:
    """JSON's true/false are not numbers: pydantic's lax mode reads them as 1 and 0, which
    would turn ``"value": true`` into an order worth 1.00. Numeric text stays accepted
    (``"12.50"`` is 12.5: shops send money as decimal text to keep cents exact)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


_NOT_BOOLEAN = BeforeValidator(_refuse_boolean)
Money = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False), _NOT_BOOLEAN]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
Quantity = Annotated[int, Field(ge=1, le=10_000), _NOT_BOOLEAN]
Count = Annotated[int, Field(ge=0), _NOT_BOOLEAN]


def to_epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class EventContext(_Strict):
    """Where the event came from: the dimensions funnels break down by."""

    device: Literal["desktop", "mobile", "tablet", "ios", "android", "other"] | None = None
    channel: str | None = Field(default=None, max_length=64, description="e.g. organic, paid")
    utm_source: str | None = Field(default=None, max_length=128)
    utm_medium: str | None = Field(default=None, max_length=128)
    utm_campaign: str | None = Field(default=None, max_length=128)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1")
    app_version: str | None = Field(default=None, max_length=32)
    experiments: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="experiment name -> variant"
    )


class _Envelope(_Strict):
    schema_version: Annotated[Literal[1], _NOT_BOOLEAN] = SCHEMA_VERSION
    event_id: str = Field(
        min_length=1, max_length=128, description="unique per event; retries reuse it"
    )
    session_id: str = Field(min_length=1, max_length=128)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    occurred_at: EventTime
    sent_at: EventTime | None = Field(
        default=None, description="producer's clock at send time, for clock-skew correction"
    )
    context: EventContext = Field(default_factory=EventContext)


# --- clickstream -------------------------------------------------------------------------
class PageView(_Envelope):
    """A page view; ``landing`` marks the first page of a visit (campaign attribution)."""

    event_type: Literal["page_view"]
    page: str = Field(min_length=1, max_length=2048, description="path or URL")
    landing: bool = False
    referrer: str | None = Field(default=None, max_length=2048)


class ProductView(_Envelope):
    event_type: Literal["product_view"]
    product_id: str = _ID
    category: str | None = Field(default=None, max_length=256)
    price: Money | None = None
    currency: Currency | None = None


class Search(_Envelope):
    event_type: Literal["search"]
    query: str = Field(min_length=0, max_length=512)
    results_count: Count | None = None


class AddToCart(_Envelope):
    event_type: Literal["add_to_cart"]
    product_id: str = _ID
    quantity: Quantity = 1
    price: Money | None = None
    cart_value: Money | None = None
    currency: Currency | None = None


class RemoveFromCart(_Envelope):
    event_type: Literal["remove_from_cart"]
    product_id: str = _ID
    quantity: Quantity = 1
    cart_value: Money | None = None
    currency: Currency | None = None


# --- checkout ----------------------------------------------------------------------------
class CheckoutStarted(_Envelope):
    event_type: Literal["checkout_started"]
    cart_value: Money
    currency: Currency
    item_count: Count | None = None


class ShippingSubmitted(_Envelope):
    event_type: Literal["shipping_submitted"]
    shipping_method: str = _SHORT
    cart_value: Money | None = None
    currency: Currency | None = None


class PaymentSubmitted(_Envelope):
    event_type: Literal["payment_submitted"]
    payment_method: str = _SHORT
    amount: Money
    currency: Currency


class PaymentFailed(_Envelope):
    event_type: Literal["payment_failed"]
    payment_method: str = _SHORT
    failure_reason: str = _SHORT
    amount: Money | None = None
    currency: Currency | None = None


class OrderPlaced(_Envelope):
    event_type: Literal["order_placed"]
    order_id: str = _ID
    value: Money
    currency: Currency
    payment_method: str | None = Field(default=None, max_length=256)


# --- advocacy ----------------------------------------------------------------------------
class ReviewSubmitted(_Envelope):
    event_type: Literal["review_submitted"]
    product_id: str = _ID
    rating: Annotated[int, Field(ge=1, le=5), _NOT_BOOLEAN]


class ReferralSent(_Envelope):
    event_type: Literal["referral_sent"]
    referral_channel: str = Field(min_length=1, max_length=64, description="email, link, social")


CLICKSTREAM_MODELS: tuple[type[_Envelope], ...] = (
    PageView, ProductView, Search, AddToCart, RemoveFromCart, ReviewSubmitted, ReferralSent,
)  # fmt: skip
CHECKOUT_MODELS: tuple[type[_Envelope], ...] = (
    CheckoutStarted, ShippingSubmitted, PaymentSubmitted, PaymentFailed, OrderPlaced,
)  # fmt: skip
EVENT_MODELS: dict[str, type[_Envelope]] = {
    model.model_fields["event_type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (*CLICKSTREAM_MODELS, *CHECKOUT_MODELS)
}
# Each event type's properties (what a funnel's `where` and `property.<name>` segments read).
EVENT_PROPERTIES: dict[str, frozenset[str]] = {
    name: frozenset(model.model_fields) - frozenset(_Envelope.model_fields) - {"event_type"}
    for name, model in EVENT_MODELS.items()
}
CLICKSTREAM_EVENT_TYPES = frozenset(
    name for name, model in EVENT_MODELS.items() if model in CLICKSTREAM_MODELS
)
CHECKOUT_EVENT_TYPES = frozenset(
    name for name, model in EVENT_MODELS.items() if model in CHECKOUT_MODELS
)

Event = Annotated[
    PageView | ProductView | Search | AddToCart | RemoveFromCart
    | CheckoutStarted | ShippingSubmitted | PaymentSubmitted | PaymentFailed | OrderPlaced
    | ReviewSubmitted | ReferralSent,
    Field(discriminator="event_type"),
]  # fmt: skip

event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


# --- records streamer emits ----------------------------------------------------------------
class ReasonCode(StrEnum):
    """Why a message was rejected; stable, machine-readable (alert on them, filter by them)."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    SCHEMA_VIOLATION = "schema_violation"
    FUTURE_EVENT = "future_event"
    TOO_OLD = "too_old"
    LATE = "late"
    PROCESSING_ERROR = "processing_error"


class DeadLetter(_Strict):
    """A rejected message: the original bytes, where they came from, and why."""

    schema_version: Literal[1] = SCHEMA_VERSION
    dead_letter_id: str = Field(description="source topic/partition/offset: unique and stable")
    reason: ReasonCode
    message: str = Field(description="human-readable explanation")
    field: str | None = Field(default=None, description="path of the failing field, if any")
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp_ms: int | None = None
    key_base64: str | None = Field(default=None, description="original key bytes, base64")
    payload_base64: str = Field(description="original value bytes, base64")
    rejected_at: datetime


class TimeToConvert(_Strict):
    """The cohort's conversions of one step, zero timings included (docs/funnel-semantics.md,
    "Time to convert"): the mean is exact, the median exact to its histogram bucket."""

    sum_seconds: float
    count: int
    buckets: list[tuple[float | None, int]] = Field(
        description="(upper bound in seconds or null for +Inf, conversions in that bucket)"
    )
    mean_seconds: float | None = Field(
        default=None, description="sum_seconds / count: exact, zero timings included"
    )
    median_at_least_seconds: float | None = Field(
        default=None,
        description="the lower bound of the bucket that holds the median conversion (the "
        "ceil(count/2)-th smallest): the median is above it (at or above 0 in the first bucket)",
    )
    median_at_most_seconds: float | None = Field(
        default=None,
        description="the upper bound of the bucket that holds the median conversion (null: "
        "beyond the last bound)",
    )


class StageStats(_Strict):
    """One stage of one cohort window: attempts that reached the stage in the window, and the
    outcome of the step after it, whenever that was decided."""

    stage: str
    entered: int
    converted: int = Field(description="of those entered, the ones that reached the next stage")
    dropped: int = Field(description="of those entered, the ones whose step timed out")
    excluded: int = Field(
        default=0,
        description="of those entered, the ones an exclusion event took out of the funnel",
    )
    open: int = Field(default=0, description="of those entered, the ones not decided yet")
    units: int | None = Field(
        default=None,
        description="funnels with uniques: distinct units (sessions or users) that entered the "
        "stage in the window, each once however many of its attempts did (absent otherwise)",
        exclude_if=lambda units: units is None,  # other funnels' records stay as they were
    )
    final: bool = Field(default=False, description="every outcome of this cohort is decided")
    conversion_ratio: float | None = Field(
        default=None, description="converted / (converted + dropped); open sessions not counted"
    )
    drop_off_ratio: float | None = None
    dropped_value: float = Field(default=0.0, description="cart value of the dropped sessions")
    time_to_convert: TimeToConvert | None = None


class SegmentStats(_Strict):
    dimension: str
    value: str
    stages: list[StageStats]


class SurveyStats(_Strict):
    """One survey's answers in a window at one stage (and segment value), counted by the
    answers' own time (docs/satisfaction.md)."""

    survey: str
    kind: Literal["csat", "nps"]
    stage: str = Field(description="the stage the unit had reached when it answered; none: before")
    dimension: str | None = Field(
        default=None,
        description="the segment dimension (absent: the stage's total)",
        exclude_if=lambda dimension: dimension is None,
    )
    value: str | None = Field(
        default=None,
        description="the segment value (absent: the stage's total)",
        exclude_if=lambda value: value is None,
    )
    answers: int
    low: int = Field(description="low answers: CSAT 1-2, NPS 0-6 (detractors)")
    distribution: dict[str, int] = Field(description="score -> answers, every score of the range")
    satisfied_share: float | None = Field(default=None, description="CSAT: share of 4 and 5")
    nps: float | None = Field(
        default=None, description="NPS: promoters (9-10) minus detractors (0-6), % of answers"
    )


class WindowStats(_Strict):
    """Counts of one funnel's cohort window, merged from every partition (``funnel.windows``).

    Revised as outcomes are decided; every revision has the same ``window_id`` (the record
    key). The record with ``final`` true is the last word: a sink keeps it over any revision
    (during a rebalance a stale revision may still arrive after it)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    window_id: str = Field(description="funnel/window start ms: the same for every revision")
    revision: int = Field(default=0, ge=0, description="0, 1, 2 ... per window")
    final: bool = Field(default=False, description="every stage's cohort is decided")
    funnel: str
    window_start: datetime
    window_end: datetime
    partitions: int
    stages: list[StageStats]
    segments: list[SegmentStats] = Field(default_factory=list)
    answers: list[SurveyStats] = Field(
        default_factory=list,
        description="funnels with surveys: answers per survey, stage and segment value",
        exclude_if=lambda answers: not answers,  # other funnels' records stay as they were
    )


class LifecycleAcquisition(_Strict):
    """An acquisition cohort (users first visiting in one ISO week through one channel) in
    one partition: its users, buyers, and their orders' value within each horizon of each
    user's own first visit (docs/lifecycle.md, "Value per user")."""

    week: str = Field(description="ISO week of the first visit, e.g. 2026-W10")
    week_start: datetime = Field(description="Monday 00:00 UTC of that week")
    channel: str = Field(description="a declared channel, other or unknown")
    users: int
    buyers: int
    value_cents: list[int] = Field(
        description="per horizon_days: the orders' value in hundredths, summed over the users"
    )


class LifecycleBuyers(_Strict):
    """A first-order cohort (buyers whose first order fell in one ISO week) in one
    partition (docs/lifecycle.md, "Repeat-purchase rate", "Churn", "Advocates")."""

    week: str = Field(description="ISO week of the first order")
    week_start: datetime
    buyers: int
    repeaters: list[int] = Field(
        description="per horizon_days: buyers with a second order within that many days"
    )
    advocates: int
    churned: int = Field(description="buyers churned as of the record's watermark")


class LifecycleFirstPurchase(_Strict):
    """Time from first visit to first order of one acquisition channel's buyers in one
    partition (docs/lifecycle.md, "Time to first purchase")."""

    channel: str
    buckets: list[tuple[float | None, int]] = Field(
        description="(upper bound in seconds, inclusive, or null above the last; buyers in "
        "that bucket, not cumulative)"
    )
    count: int
    sum_seconds: float


class LifecycleStats(_Strict):
    """A lifecycle funnel's figures in one unit partition, whole (on ``funnel.partials``, for
    the merger; docs/lifecycle.md, "Published").

    Each partition holds its own users, so a funnel's figures are the sum over partitions of
    each one's **latest** record: a record replaces that partition's previous one (never add
    two of one partition). The latest is the one with the highest ``version``; a partition's
    new owner (restart, rebalance) has a higher ``generation`` and replaces it even with
    figures that restarted from a checkpoint behind the last record."""

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["lifecycle"] = "lifecycle"
    record_id: str = Field(description="funnel/partition: the same for every record it replaces")
    funnel: str
    partition: int = Field(description="as the merger counts partitions (unit tasks: N..2N-1)")
    generation: int = Field(description="the partition owner's: grows with every restore")
    version: list[int] = Field(
        description="(generation, input offsets, watermark ms): a record with a lower version "
        "than one already held is a late copy"
    )
    watermark: datetime = Field(description="every event before it is in these figures")
    horizon_days: list[int]
    churn_days: int
    acquisition: list[LifecycleAcquisition]
    buyer_cohorts: list[LifecycleBuyers]
    first_purchase: list[LifecycleFirstPurchase]


class Abandonment(_Strict):
    """A session that reached an abandonment stage and made no progress within its timeout
    (``funnel.abandonments``); ``retracted`` when the session ordered afterwards."""

    schema_version: Literal[1] = SCHEMA_VERSION
    record_id: str = Field(description="abandonment_id, plus /retracted for a retraction")
    abandonment_id: str = Field(description="funnel/session/attempt start ms/stage: stable")
    kind: Literal["abandoned", "retracted"]
    funnel: str
    stage: str
    session_id: str
    user_id: str | None = None
    attempt_started_at: datetime
    last_activity_at: datetime
    abandoned_at: datetime = Field(description="when the stage's timeout ran out (event time)")
    cart_value: float | None = None
    currency: str | None = None
    segments: dict[str, str] = Field(default_factory=dict)
    ordered_at: datetime | None = Field(default=None, description="retractions: the order")


class AlertExplanation(_Strict):
    dimension: str
    value: str
    share_of_excess: float = Field(description="part of the window's excess drops in this value")
    observed_rate: float
    expected_rate: float
    decided: int
    dropped: int


class Alert(_Strict):
    """A drop-off spike on one funnel step, or broken tracking (``funnel.alerts``), written
    before any delivery."""

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(description="alert_id/state/watermark ms: one per notification")
    alert_id: str = Field(
        description="funnel/step/watermark ms of the evaluation that fired; data quality: "
        "funnel/tracking/topic:<name> or event_type:<name>/watermark ms"
    )
    kind: Literal["drop_off", "data_quality", "guardrail", "sample_ratio", "low_score"] = Field(
        default="drop_off",
        description="drop_off: a step converts less than its baseline; data_quality: an input "
        "topic or event type went silent while the rest flows (tracking broke, conversion may "
        "not have): the steps it feeds are not judged meanwhile; guardrail: an experiment's "
        "variant converts worse than its control at a step; sample_ratio: an experiment's "
        "exposures contradict its intended split; low_score: the share of a survey's low "
        "answers at a stage (or a segment value of it) rose above its baseline "
        "(observed_rate now, expected_rate before; decided the answers, dropped the low ones)",
    )
    state: Literal["firing", "repeat", "resolved"]
    severity: Literal["page", "warning"]
    basis: Literal["final", "matched_age"] = Field(
        default="final",
        description="final: drop-off of final cohorts; matched_age: young cohorts converting "
        "less than the baseline by the same age",
    )
    funnel: str
    step: str
    window_start: datetime
    window_end: datetime
    observed_rate: float
    expected_rate: float
    p_value: float
    decided: int
    dropped: int
    excess_dropped: float
    dropped_value: float = Field(description="cart value of the window's dropped sessions")
    explanations: list[AlertExplanation] = Field(default_factory=list)
    summary: str
    dashboard_url: str | None = None
    runbook_url: str | None = None
    silent_topic: str | None = Field(default=None, description="data quality: the topic")
    silent_event_types: list[str] = Field(
        default_factory=list, description="data quality: the event types missing"
    )
    held_steps: list[str] = Field(
        default_factory=list,
        description="data quality: steps whose conversion tests skip the silent span",
    )
    expected_events: float | None = Field(
        default=None, description="data quality: events expected over the silent windows"
    )
    experiment: str | None = Field(default=None, description="guardrail, sample ratio")
    variant: str | None = Field(
        default=None, description="guardrail: the variant (observed_rate is its conversion)"
    )
    control: str | None = Field(
        default=None, description="guardrail: the control (expected_rate is its conversion)"
    )
    arms: dict[str, list[int]] = Field(
        default_factory=dict,
        description="guardrail: the control's and the variant's [decided, converted] attempts "
        "at the step, summed over the cohorts from window_start to window_end",
    )
    difference: list[float] = Field(
        default_factory=list,
        description="guardrail: variant - control conversion, [estimate, low, high] of its "
        "always-valid confidence interval at 1 - alpha",
    )
    relative_difference: list[float] = Field(
        default_factory=list,
        description="guardrail: the difference over the control's rate, [estimate, low, high]",
    )
    alpha: float | None = Field(
        default=None, description="guardrail, sample ratio: the test's false-alert rate"
    )
    exposures: dict[str, int] = Field(
        default_factory=dict, description="sample ratio: exposed attempts per variant"
    )
    intended_split: dict[str, float] = Field(
        default_factory=dict, description="sample ratio: the declared share of each variant"
    )
    survey: str | None = Field(default=None, description="low score: the survey")
    segment: str | None = Field(
        default=None,
        description="low score: the segment value (dimension=value) judged; absent: the stage's "
        "total",
    )


# --- replay report (streamer replay --from --to) ------------------------------------------
class ReplayAbandonments(_Strict):
    stage: str
    abandoned: int = Field(description="sessions that timed out at this abandonment stage")
    retracted: int = Field(description="of those, the ones that ordered later in the range")


class ReplayFunnel(_Strict):
    funnel: str
    totals: WindowStats = Field(
        description="every cohort window of the range summed (window_id funnel/range)"
    )
    windows: list[WindowStats] = Field(
        description="per cohort window: final ones as they became final, the rest as of --to"
    )
    abandonments: list[ReplayAbandonments]
    alerts: list[Alert] = Field(description="what the detector would have written, in order")
    warming_up: list[str] = Field(description="steps whose baseline was still warming up at --to")


class ReplayEvents(_Strict):
    read: int = Field(description="messages read from the input topics")
    in_range: int = Field(description="accepted events whose occurred_at is in [from, to)")
    drained: int = Field(
        default=0, description="--drain: accepted events after --to of sessions seen before it"
    )
    out_of_range: int = Field(description="valid events before --from or at/after --to")
    duplicate: int
    late: int = Field(description="behind the watermark (as the live worker would drop them)")
    rejected: int = Field(description="not decodable or not valid (the live worker's dead letters)")
    ignored: int = Field(
        default=0,
        description="events the tracking plan does not declare (unplanned.events: ignore)",
    )


class ReplayRun(_Strict):
    """Facts of the run, not of the data: dropped by ``--no-run-info``."""

    started_at: datetime
    seconds: float
    events_per_second: float


class ReplayReport(_Strict):
    """What ``streamer replay --from --to`` found: the same core as the live worker, over a
    time range of the input topics. The same range and settings give the same bytes."""

    schema_version: Literal[1] = SCHEMA_VERSION
    range_from: datetime
    range_to: datetime
    drained_to: datetime | None = Field(
        default=None,
        description="--drain: read on to here (every cohort window of the range final)",
    )
    allowed_lateness_seconds: float
    overrides: dict[str, str] = Field(
        default_factory=dict, description="--set KEY=VALUE applied to every funnel (what-if)"
    )
    topics: list[str]
    events: ReplayEvents
    funnels: list[ReplayFunnel]
    run: ReplayRun | None = None
