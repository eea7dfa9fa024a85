"""Generate ``schemas/`` (the producer contract and the records streamer emits), and check for
drift.

Without a tracking plan (or with ``preset:streamer``, which is that contract) the input events'
schemas come from the pydantic models of ``streamer/events.py``, as committed in ``schemas/``:

- ``event.schema.json``: any input event (``oneOf`` on ``event_type``);
- ``events/<event_type>.schema.json``: one per event type;
- ``records/<record>.schema.json``: records streamer emits (dead letters, ...);
- ``examples/<name>.json``: a valid example of each.

With a tracking plan they come from the plan (``streamer.plan.schemas``):
``envelope.schema.json`` and ``events/<event>.schema.json``, beside the same ``records/`` and
the records' examples (the records do not depend on the plan).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from streamer.events import (
    EVENT_MODELS,
    Abandonment,
    Alert,
    AlertExplanation,
    DeadLetter,
    LifecycleAcquisition,
    LifecycleBuyers,
    LifecycleFirstPurchase,
    LifecycleStats,
    ReasonCode,
    ReplayReport,
    SegmentStats,
    StageStats,
    WindowStats,
    event_adapter,
)
from streamer.plan.load import load_plan
from streamer.plan.schemas import dump_schema, render_plan_schemas

__all__ = [
    "DEFAULT_PLAN",
    "EXAMPLES",
    "RECORD_MODELS",
    "check_schemas",
    "render_schemas",
    "write_schemas",
]

# The built-in contract as a plan: its schemas are the models' (the files committed in schemas/).
DEFAULT_PLAN = "preset:streamer"

_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_BASE_ID = "https://streamer.dev/schemas/"

RECORD_MODELS: dict[str, type[BaseModel]] = {
    "dead_letter": DeadLetter,
    "window_stats": WindowStats,
    "abandonment": Abandonment,
    "alert": Alert,
    "replay_report": ReplayReport,
    "lifecycle": LifecycleStats,
}

_CONTEXT = {"device": "ios", "channel": "email", "utm_source": "newsletter", "country": "DE",
            "app_version": "5.2.0", "experiments": {"checkout_button": "green"}}  # fmt: skip


def _event(event_type: str, seq: int, **props: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "event_id": f"9b0c6f1e-{seq:04d}",
        "event_type": event_type,
        "session_id": "s-81f2c4",
        "user_id": "u-10442",
        "occurred_at": f"2026-11-22T10:15:{seq:02d}.120+01:00",
        "sent_at": f"2026-11-22T10:15:{seq:02d}.480+01:00",
        "context": _CONTEXT,
        **props,
    }


EXAMPLES: dict[str, dict[str, Any]] = {
    "page_view": _event("page_view", 1, page="/sale/shoes", landing=True,
                        referrer="https://www.google.com/"),
    "product_view": _event("product_view", 2, product_id="p-1931", category="shoes",
                           price=89.9, currency="EUR"),
    "search": _event("search", 3, query="running shoes", results_count=42),
    "add_to_cart": _event("add_to_cart", 4, product_id="p-1931", quantity=1, price=89.9,
                          cart_value=89.9, currency="EUR"),
    "remove_from_cart": _event("remove_from_cart", 5, product_id="p-77", quantity=1,
                               cart_value=89.9, currency="EUR"),
    "checkout_started": _event("checkout_started", 6, cart_value=89.9, currency="EUR",
                               item_count=1),
    "shipping_submitted": _event("shipping_submitted", 7, shipping_method="standard",
                                 cart_value=89.9, currency="EUR"),
    "payment_submitted": _event("payment_submitted", 8, payment_method="paypal", amount=94.8,
                                currency="EUR"),
    "payment_failed": _event("payment_failed", 9, payment_method="paypal",
                             failure_reason="provider_timeout", amount=94.8, currency="EUR"),
    "order_placed": _event("order_placed", 10, order_id="o-553201", value=94.8, currency="EUR",
                           payment_method="card"),
    "review_submitted": _event("review_submitted", 11, product_id="p-1931", rating=5),
    "referral_sent": _event("referral_sent", 12, referral_channel="link"),
    "dead_letter": DeadLetter(
        dead_letter_id="checkout/2/18231",
        reason=ReasonCode.SCHEMA_VIOLATION,
        message="amount: Input should be greater than or equal to 0",
        field="amount",
        source_topic="checkout",
        source_partition=2,
        source_offset=18231,
        source_timestamp_ms=1795342503120,
        key_base64="cy04MWYyYzQ=",
        payload_base64="eyJldmVudF90eXBlIjoicGF5bWVudF9zdWJtaXR0ZWQiLCJhbW91bnQiOi0xfQ==",
        rejected_at=datetime(2026, 11, 22, 9, 15, 3, 402000, tzinfo=UTC),
    ).model_dump(mode="json"),
    "window_stats": WindowStats(
        window_id="checkout/1795342440000",
        revision=7,
        final=False,
        funnel="checkout",
        window_start=datetime(2026, 11, 22, 9, 14, tzinfo=UTC),
        window_end=datetime(2026, 11, 22, 9, 15, tzinfo=UTC),
        partitions=4,
        stages=[
            StageStats(stage="payment", entered=41, converted=30, dropped=6, open=5,
                       conversion_ratio=30 / 36, drop_off_ratio=6 / 36),
            StageStats(stage="order", entered=30, converted=0, dropped=0, final=True),
        ],
        segments=[
            SegmentStats(dimension="payment_method", value="paypal", stages=[
                StageStats(stage="payment", entered=12, converted=5, dropped=5, open=2,
                           conversion_ratio=0.5, drop_off_ratio=0.5),
                StageStats(stage="order", entered=5, converted=0, dropped=0, final=True),
            ]),
        ],
    ).model_dump(mode="json"),
    "abandonment": Abandonment(
        record_id="checkout/s-81f2c4/1795342500120/payment",
        abandonment_id="checkout/s-81f2c4/1795342500120/payment",
        kind="abandoned",
        funnel="checkout",
        stage="payment",
        session_id="s-81f2c4",
        user_id="u-10442",
        attempt_started_at=datetime(2026, 11, 22, 9, 15, 0, 120000, tzinfo=UTC),
        last_activity_at=datetime(2026, 11, 22, 9, 21, 8, tzinfo=UTC),
        abandoned_at=datetime(2026, 11, 22, 9, 31, 8, tzinfo=UTC),
        cart_value=94.8,
        currency="EUR",
        segments={"device": "ios", "channel": "email", "country": "DE",
                  "payment_method": "paypal"},
    ).model_dump(mode="json"),
    "alert": Alert(
        event_id="checkout/payment->order/1795343400000/firing/1795343400000",
        alert_id="checkout/payment->order/1795343400000",
        state="firing",
        severity="page",
        funnel="checkout",
        step="payment->order",
        window_start=datetime(2026, 11, 22, 9, 30, tzinfo=UTC),
        window_end=datetime(2026, 11, 22, 9, 31, tzinfo=UTC),
        observed_rate=0.3247,
        expected_rate=0.0812,
        p_value=3.1e-09,
        decided=77,
        dropped=25,
        excess_dropped=18.75,
        dropped_value=2931.4,
        explanations=[AlertExplanation(dimension="payment_method", value="paypal",
                                       share_of_excess=0.9412, observed_rate=0.7826,
                                       expected_rate=0.0834, decided=23, dropped=18)],
        summary="payment->order drop-off is 32.5% against 8.1% expected: 25 of 77 decided "
        "sessions dropped, 19 more than usual, carts worth 2,931.40. Most of the excess: "
        "payment_method=paypal (94%).",
        dashboard_url="https://grafana.example.com/d/streamer-funnel",
        runbook_url="https://wiki.example.com/runbooks/checkout-drop-off",
    ).model_dump(mode="json"),
    "alert_data_quality": Alert(
        event_id="checkout/tracking/topic:checkout/1795343460000/firing/1795343460000",
        alert_id="checkout/tracking/topic:checkout/1795343460000",
        kind="data_quality",
        state="firing",
        severity="warning",
        funnel="checkout",
        step="tracking",
        window_start=datetime(2026, 11, 22, 9, 30, tzinfo=UTC),
        window_end=datetime(2026, 11, 22, 9, 31, tzinfo=UTC),
        observed_rate=0.0,
        expected_rate=0.0,
        p_value=8.3e-57,
        decided=0,
        dropped=0,
        excess_dropped=0.0,
        dropped_value=0.0,
        summary="Tracking broke, not necessarily conversion: no topic checkout events since "
        "09:30 UTC, where about 129 were expected at its usual share of the traffic that "
        "still flows. Check the producer of these events. Meanwhile the conversion tests of "
        "cart->checkout, checkout->payment, payment->order skip the sessions whose "
        "conversions were due in the silence (no drop-off page from it).",
        dashboard_url="https://grafana.example.com/d/streamer-funnel",
        runbook_url="https://wiki.example.com/runbooks/checkout-drop-off",
        silent_topic="checkout",
        silent_event_types=["checkout_started", "order_placed", "payment_failed",
                            "payment_submitted"],
        held_steps=["cart->checkout", "checkout->payment", "payment->order"],
        expected_events=129.4,
    ).model_dump(mode="json"),
    "alert_guardrail": Alert(
        event_id="checkout/checkout_page/new_page/payment->order/firing/1795384800000",
        alert_id="checkout/checkout_page/new_page/payment->order",
        kind="guardrail",
        state="firing",
        severity="warning",
        funnel="checkout",
        step="payment->order",
        window_start=datetime(2026, 11, 22, 6, 0, tzinfo=UTC),
        window_end=datetime(2026, 11, 22, 19, 0, tzinfo=UTC),
        observed_rate=0.8274,
        expected_rate=0.9213,
        p_value=0.0021,
        decided=1172,
        dropped=202,
        excess_dropped=110.05,
        dropped_value=0.0,
        summary="Experiment checkout_page: variant new_page converts worse than control at "
        "payment->order: 82.7% of 1172 against 92.1% of 1181 decided attempts, -9.4 points "
        "(always-valid interval -14.9 to -3.9 at alpha 0.0167), -10.2% relative (interval "
        "-16.2% to -4.2%).",
        experiment="checkout_page",
        variant="new_page",
        control="control",
        arms={"control": [1181, 1088], "new_page": [1172, 970]},
        difference=[-0.0939, -0.1489, -0.0389],
        relative_difference=[-0.1019, -0.1616, -0.0422],
        alpha=0.016667,
    ).model_dump(mode="json"),
    # docs/lifecycle.md's worked example (week 2026-W10), as unit partition 5 of 8 holds it.
    "lifecycle": LifecycleStats(
        record_id="lifecycle/5",
        funnel="lifecycle",
        partition=5,
        generation=3,
        version=[3, 18231, 1780876800000],
        watermark=datetime(2026, 6, 8, tzinfo=UTC),
        horizon_days=[30, 60, 90],
        churn_days=60,
        acquisition=[
            LifecycleAcquisition(week="2026-W10", week_start=datetime(2026, 3, 2, tzinfo=UTC),
                                 channel="other", users=1, buyers=0, value_cents=[0, 0, 0]),
            LifecycleAcquisition(week="2026-W10", week_start=datetime(2026, 3, 2, tzinfo=UTC),
                                 channel="search", users=2, buyers=2,
                                 value_cents=[6550, 7550, 7550]),
        ],
        buyer_cohorts=[
            LifecycleBuyers(week="2026-W10", week_start=datetime(2026, 3, 2, tzinfo=UTC),
                            buyers=2, repeaters=[1, 2, 2], advocates=0, churned=2),
        ],
        first_purchase=[
            LifecycleFirstPurchase(channel="search", buckets=[
                (3600.0, 0), (21600.0, 1), (86400.0, 0), (259200.0, 1), (604800.0, 0),
                (1209600.0, 0), (2592000.0, 0), (5184000.0, 0), (7776000.0, 0), (None, 0)],
                count=2, sum_seconds=262800.0),
        ],
    ).model_dump(mode="json"),
}  # fmt: skip


def _with_header(schema: dict[str, Any], path: str, title: str) -> dict[str, Any]:
    return {"$schema": _DIALECT, "$id": _BASE_ID + path, "title": title, **schema}


def render_schemas(plan: str | None = None) -> dict[str, str]:
    """Every file of ``schemas/`` as ``relative path -> text``: the input events' schemas from
    the tracking plan ``plan`` (a source as ``load_plan`` takes it), else from the models. A
    plan error raises ``PlanError`` naming file:line and the field."""
    files: dict[str, str] = {}
    if plan is None or plan == DEFAULT_PLAN:
        files.update(_contract_event_schemas())
    else:
        for relative, schema in render_plan_schemas(load_plan(plan)).items():
            files[relative] = dump_schema(schema)
    for name, record in RECORD_MODELS.items():
        path = f"records/{name}.schema.json"
        schema = record.model_json_schema(mode="serialization")
        files[path] = dump_schema(_with_header(schema, path, name))
    contract = plan is None or plan == DEFAULT_PLAN
    for name, example in EXAMPLES.items():
        if contract or name not in EVENT_MODELS:  # the records' examples hold for any plan
            files[f"examples/{name}.json"] = dump_schema(example)
    return dict(sorted(files.items()))


def _contract_event_schemas() -> dict[str, str]:
    files: dict[str, str] = {}
    union = event_adapter.json_schema(mode="validation")
    files["event.schema.json"] = dump_schema(
        _with_header(union, "event.schema.json", "streamer event")
    )
    for event_type, model in EVENT_MODELS.items():
        path = f"events/{event_type}.schema.json"
        schema = model.model_json_schema(mode="validation")
        files[path] = dump_schema(_with_header(schema, path, event_type))
    return files


def write_schemas(root: Path, plan: str | None = None) -> list[Path]:
    """Write what :func:`render_schemas` gives under ``root``; the paths that changed."""
    written = []
    for relative, text in render_schemas(plan).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def check_schemas(root: Path, plan: str | None = None) -> list[str]:
    """Paths under ``root`` that differ from what :func:`render_schemas` gives (missing,
    changed, extra)."""
    expected = render_schemas(plan)
    origin = "by any model" if plan in (None, DEFAULT_PLAN) else "from the plan or a record model"
    problems = [
        f"{relative}: {'missing' if not (root / relative).exists() else 'out of date'}"
        for relative, text in expected.items()
        if not (root / relative).exists() or (root / relative).read_text() != text
    ]
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root).as_posix()
        if relative not in expected:
            problems.append(f"{relative}: not generated {origin} (remove it)")
    return problems
