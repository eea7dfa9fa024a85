"""The lifecycle through the worker's own stages, without a broker: months of generated users
(tests/support/traffic.py) as the shop's events through a session task that forwards them to a
unit task keeping its units and lifecycle records on disk behind a cache of 3, stopped as by a
SIGKILL after random checkpoints and restarted on the same disk: the unit task's figures equal
the SQL oracle's over the events the decoder accepted (the others are dead-lettered)."""

from __future__ import annotations

import base64
import random
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from streamer.decode import DecodeLimits, Rejection
from streamer.decoders import ContractDecoder, DecodedEvent, PlanDecoder, needed_fields
from streamer.funnel.definition import load_funnel
from streamer.funnel.lifecycle import Lifecycle
from streamer.pipeline.messages import SourceMessage
from streamer.pipeline.units import UnitForwarder
from streamer.plan.compile import compile_plan
from streamer.plan.load import load_plan
from streamer.schemas import EXAMPLES
from tests.oracle.lifecycle import lifecycle_figures
from tests.support.lifecycle_records import (
    count_diff,
    latest_records,
    oracle_counts,
    shop_event,
    summed_records,
)
from tests.support.stage_harness import Recorder
from tests.support.traffic import generate_lifecycle
from tests.unit.test_lifecycle import SHIPPED, START_MS, _diff, _figures
from tests.unit.test_unit_store_restore import SOURCES, _run, _stage, _stop, _unit_stage


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


async def test_the_unit_tasks_figures_equal_the_oracle_through_restarts(tmp_path: Path) -> None:
    funnels = (load_funnel(SHIPPED),)
    declaration = funnels[0].lifecycle
    assert declaration is not None
    rng = random.Random(3)
    events = generate_lifecycle(seed=3, users=120, days=100, start_ms=START_MS)
    events.sort(key=lambda e: (e["at_ms"], rng.random()))
    for event in events:
        # The contract's value is a number (a boolean is refused, numeric text read as a
        # number: test_an_order_value_is_a_number_or_numeric_text); the core's own test covers
        # values that are not numbers. Here they are 0.
        value = event["properties"].get("value")
        if event["event_type"] == "order_placed" and not _number(value):
            event["properties"]["value"] = 0  # also when missing: the contract requires one
    sent: list[tuple[bytes | None, bytes, Any]] = []

    async def send(key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
        sent.append((key, value, headers))
        return await Recorder()(key, value)

    dead = Recorder()
    sessions = _stage(
        (),
        {},
        topics=SOURCES,
        units=UnitForwarder(send=send, partitions=1),
        send_dead_letter=dead,
        # As the worker's: one decoder for every funnel (the session side runs none of the
        # user funnels, but forwards the fields they read).
        decoder=ContractDecoder(DecodeLimits(), needed_fields(funnels)),
    )
    at = START_MS
    for index, event in enumerate(events):
        at = event["at_ms"]
        value = orjson.dumps(shop_event(event, index))
        # The broker's time is the event's: months of history are not refused as too old.
        message = SourceMessage("clickstream", 0, index, at, b"k", value)
        await sessions.process(message, lambda: None)
        if index % 40 == 39:
            for topic in SOURCES:
                sessions.inputs.observe(topic, 0, at)
            await sessions.mark_idle({}, idle_timeout_s=3600)
            await sessions.publish()
    for topic in SOURCES:
        sessions.inputs.observe(topic, 0, at + 1)
    await sessions.mark_idle({}, idle_timeout_s=3600)
    await sessions.publish()
    refused = {
        orjson.loads(base64.b64decode(orjson.loads(v)["payload_base64"]))["event_id"]
        for _, v in dead.sent
    }
    accepted = [e for e in events if e["event_id"] not in refused]
    reasons = {orjson.loads(v)["reason"] for _, v in dead.sent}
    assert reasons == {"schema_violation"}  # the negative values, and nothing else
    assert 0 < len(refused) < len(events) // 20
    forwarded = [
        SourceMessage("units", 0, offset, at, key, value, tuple(headers))
        for offset, (key, value, headers) in enumerate(sent)
    ]

    stops = sorted(rng.sample(range(len(forwarded) // 4, len(forwarded)), 2))
    checkpoints = set(rng.sample(range(len(forwarded)), 20)) | {stop - 1 for stop in stops}
    partials = Recorder()
    table: dict[str, bytes] = {}
    for stop in (*stops, len(forwarded)):
        stage = _unit_stage(funnels, table, tmp_path, partials)
        await _run(stage, forwarded[:stop], checkpoints)
        if stop < len(forwarded):
            _stop(stage)
    [runtime] = stage.runtimes.values()
    task = runtime.task
    core = task.lifecycles["lifecycle"]
    assert runtime.store is not None
    assert runtime.store.lifecycle_users("lifecycle").capacity == 3
    sql = lifecycle_figures(accepted, declaration, task.watermark_ms)
    assert _diff(_figures(core), sql) == []
    # Published: the latest record (each restarted owner's first publish sends one, then at
    # most one per checkpoint interval: an hour here, so here a last one is asked for).
    runtime.lifecycle_published_at = None
    await stage.publish()
    records = [orjson.loads(v) for _, v in partials.sent]
    published = [r for r in records if r["kind"] == "lifecycle"]
    generations = sorted({r["generation"] for r in published})
    assert len(generations) == 3  # three owners (two restarts), each publishing
    [latest] = latest_records(published).values()
    assert latest["generation"] == generations[-1] == runtime.generation
    assert count_diff(summed_records([latest]), oracle_counts(sql)) == []
    assert sum(c.buyers for c in core.buyer_cohorts.values()) > 30


def test_an_order_value_is_a_number_or_numeric_text() -> None:
    """docs/lifecycle.md, "Order": on the contract (and its preset, ``coercion: lax``) an
    order's ``value`` of true/false is refused and dead-lettered, never counted as 1.00 or 0;
    numeric text is read as the number it writes (shops send decimal text to keep cents
    exact), so the lifecycle counts ``"12.50"`` as 1250 hundredths."""
    funnels = (load_funnel(SHIPPED),)
    declaration = funnels[0].lifecycle
    assert declaration is not None
    keep = needed_fields(funnels)
    decoders = (
        ContractDecoder(DecodeLimits(), keep),
        PlanDecoder(compile_plan(load_plan("preset:streamer")), DecodeLimits(), keep),
    )
    order = {**EXAMPLES["order_placed"]}
    del order["sent_at"]
    received = datetime.fromisoformat(order["occurred_at"])
    for decoder in decoders:
        for flag in (True, False):
            raw = orjson.dumps({**order, "value": flag})
            refused = decoder.decode(raw, topic="checkout", received_at=received)
            assert isinstance(refused, Rejection), (decoder, flag)
            assert refused.reason == "schema_violation"
            assert refused.field == "value"
            assert "boolean" in refused.message
        raw = orjson.dumps({**order, "value": "12.50"})
        decoded = decoder.decode(raw, topic="checkout", received_at=received)
        assert isinstance(decoded, DecodedEvent), decoder
        core = Lifecycle(declaration)
        core.apply(decoded.user_id or "u", decoded.event)
        assert core.users[decoded.user_id or "u"].value_cents == 1250
