"""The worker with a tracking plan, on the benchmark's data: the default plan (``preset:streamer``,
the same contract the worker reads without a plan) and the Segment preset.

- ``plan``: the pre-loaded topics, read by a worker given ``preset:streamer``: the cost of the
  compiled plan against the built-in contract's pydantic models, same data, same run.
- ``segment``: the same traffic rewritten as Segment track/page calls
  (``tests.support.shapes.segment``) on input topics of its own, read by a worker given the
  Segment preset (with ``landing`` declared on page calls, and the shop's own events beside
  it) and the checkout funnel on Segment's names, so it publishes the same windows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from streamer.kafka_io import ensure_topic_plan
from streamer.plan.load import preset_path
from streamer.settings import Settings
from streamer.shapes import SHOP_EVENTS
from streamer.testing import produce
from tests.support.pipeline_run import send_to_partitions
from tests.support.shapes import shaped

from . import kafka_runs
from .data import CHECKOUT, Loaded, make_dataset
from .procs import Children

__all__ = ["plan_worker_run", "segment_worker_run"]

# The checkout funnel's event types -> Segment's names (the shop's where Segment has none).
_SEGMENT_NAMES = {
    "page_view": "page",
    "product_view": "Product Viewed",
    "add_to_cart": "Product Added",
    "checkout_started": "Checkout Started",
    "payment_submitted": "Payment Info Entered",
    "order_placed": "Order Completed",
}


def own_topics(settings: Settings, suffix: str, inputs: bool = False) -> Settings:
    """``settings`` with output topics (and with ``inputs``, input topics) of their own."""
    names = {
        name: f"{getattr(settings, name)}-{suffix}"
        for name in Settings.model_fields
        if name.endswith("_topic")
        and (inputs or name not in ("clickstream_topic", "checkout_topic"))
    }
    return settings.model_copy(update=names)


def plan_worker_run(
    children: Children, settings: Settings, loaded: Loaded, workdir: Path
) -> kafka_runs.WorkerResult:
    """The worker given the default plan, on the pre-loaded topics."""
    config = own_topics(settings, "plan").model_copy(update={"tracking_plan": "preset:streamer"})
    return kafka_runs.worker_run(children, config, loaded, workdir, "plan")


def _segment_funnel(folder: Path) -> Path:
    """The checkout funnel on Segment's names (its value filter on ``total``; segments by
    Segment's context fields and the payment method)."""
    funnel = yaml.safe_load(CHECKOUT.read_text())
    for stage in funnel["stages"]:
        types = stage.pop("event_types", None) or [stage.pop("event_type")]
        stage["event_types"] = [_SEGMENT_NAMES[t] for t in types]
        if stage.get("where") == {"value": {"gt": 0}}:
            stage["where"] = {"total": {"gt": 0}}
    funnel["segments"] = {
        "device": {"source": "context.device_type", "cap": 6},
        "channel": {"source": "context.utm_medium", "cap": 8},
        "payment_method": {"cap": 8},
    }
    path = folder / "checkout-segment.yaml"
    path.write_text(yaml.safe_dump(funnel, sort_keys=False))
    return path


def segment_worker_run(
    children: Children, settings: Settings, loaded: Loaded, workdir: Path
) -> kafka_runs.WorkerResult:
    """The same traffic as Segment calls on topics of its own, through the Segment preset."""
    folder = workdir / "segment"
    traffic = shaped("segment", make_dataset(loaded.events), folder / "plan")
    preset = yaml.safe_load(preset_path("segment").read_text())
    preset["events"]["page"]["properties"]["landing"] = {"type": "boolean"}
    (folder / "plan" / "segment.yaml").write_text(yaml.safe_dump(preset, sort_keys=False))
    assert (folder / "plan" / "shop.yaml").read_text() == SHOP_EVENTS
    config = own_topics(settings, "segment", inputs=True).model_copy(
        update={"tracking_plan": str(traffic.plan_dir), "funnels": (_segment_funnel(folder),)}
    )

    async def preload() -> None:
        from streamer.app import topic_plan

        await ensure_topic_plan(config, topic_plan(config))
        await produce(config, traffic.messages(config))
        await send_to_partitions(config, traffic.closing(config))

    asyncio.run(preload())
    return kafka_runs.worker_run(children, config, loaded, workdir, "segment")
