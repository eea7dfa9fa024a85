"""Sessions stage: follow every session through the funnels, per partition, in event time.

Reads ``funnel.events`` (normalized events keyed by session id, and ticks); keeps one session
state per session in the ``sessions`` table (one write per accepted event); hands everything
else to the pure :class:`PartitionEngine`, and sends what it returns: partials and progress to
``funnel.partials``, late events to the DLQ.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson

from streamer.decode import Rejection
from streamer.events import Abandonment, ReasonCode
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.engine import NEVER, EngineOutput, PartitionEngine, PartitionMeta
from streamer.funnel.session import VALUE_FIELDS, Contribution, SessionState, StoredEvent
from streamer.metrics import Metrics
from streamer.pipeline.ingest import SourceMessage, dead_letter_for

__all__ = ["TICK_FIELD", "SessionsStage", "needed_fields", "stored_event", "tick_record"]

log = logging.getLogger(__name__)

SendFn = Callable[[bytes | None, bytes], Awaitable[Any]]
TICK_FIELD = "tick_watermark_ms"
_ENVELOPE = {
    "schema_version",
    "event_id",
    "event_type",
    "session_id",
    "user_id",
    "occurred_at",
    "sent_at",
    "context",
}


def tick_record(watermark_ms: int) -> bytes:
    return orjson.dumps({TICK_FIELD: watermark_ms})


def needed_fields(funnels: tuple[FunnelDefinition, ...]) -> frozenset[str]:
    """The flattened fields the funnels read (stage filters and segments)."""
    names: set[str] = {*VALUE_FIELDS, "currency"}
    for funnel in funnels:
        for stage in funnel.stages:
            names.update(condition.property for condition in stage.where)
        for segment in funnel.segments:
            kind, _, name = segment.source.partition(".")
            names.add(name if kind == "property" else segment.source)
    return frozenset(names)


def stored_event(document: dict[str, Any], keep: frozenset[str]) -> StoredEvent:
    """A normalized event (as ingest wrote it) -> what a session keeps of it."""
    fields: dict[str, Any] = {k: v for k, v in document.items() if k not in _ENVELOPE and k in keep}
    if document.get("user_id"):
        fields["user_id"] = document["user_id"]  # for abandonment records
    context = document.get("context") or {}
    for key, value in context.items():
        if key == "experiments":
            for name, variant in (value or {}).items():
                if f"experiment.{name}" in keep:
                    fields[f"experiment.{name}"] = variant
        elif f"context.{key}" in keep:
            fields[f"context.{key}"] = value
    occurred = datetime.fromisoformat(document["occurred_at"].replace("Z", "+00:00"))
    return StoredEvent(
        round(occurred.timestamp() * 1000), document["event_id"], document["event_type"], fields
    )


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def abandonment_record(
    funnel: FunnelDefinition,
    state: SessionState,
    drop: Contribution,
    ordered_ms: int | None = None,
) -> Abandonment:
    """The record of an abandoned attempt (or of its retraction, with ``ordered_ms``)."""
    stage = funnel.stages[drop.index].name
    abandonment_id = f"{funnel.name}/{state.session_id}/{drop.attempt_ms}/{stage}"
    seen = [e for e in state.events if e.at_ms <= drop.at_ms]
    user_id = next(
        (e.fields["user_id"] for e in reversed(state.events) if "user_id" in e.fields), None
    )
    currency = next(
        (e.fields["currency"] for e in reversed(seen) if e.fields.get("currency")), None
    )
    return Abandonment(
        record_id=abandonment_id if ordered_ms is None else f"{abandonment_id}/retracted",
        abandonment_id=abandonment_id,
        kind="abandoned" if ordered_ms is None else "retracted",
        funnel=funnel.name,
        stage=stage,
        session_id=state.session_id,
        user_id=user_id,
        attempt_started_at=_at(drop.attempt_ms),
        last_activity_at=_at(drop.last_activity_ms),
        abandoned_at=_at(drop.at_ms),
        cart_value=drop.value or None,
        currency=currency,
        segments={
            funnel.segments[i].name: value
            for i, value in enumerate(drop.segments)
            if value is not None
        },
        ordered_at=_at(ordered_ms) if ordered_ms is not None else None,
    )


def _session_key(session_id: str) -> str:
    return "s:" + session_id


def _meta_key(partition: int) -> str:
    return f"m:{partition}"


class SessionsStage:
    def __init__(
        self,
        *,
        funnels: tuple[FunnelDefinition, ...],
        table: MutableMapping[str, bytes],
        metrics: Metrics,
        allowed_lateness_ms: int,
        retention_ms: int,
        send_partial: SendFn,
        send_dead_letter: SendFn,
        send_abandonment: SendFn,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.funnels = funnels
        self._table = table
        self._metrics = metrics
        self._lateness_ms = allowed_lateness_ms
        self._retention_ms = retention_ms
        self._send_partial = send_partial
        self._send_dead_letter = send_dead_letter
        self._send_abandonment = send_abandonment
        self._clock = clock
        self._keep = needed_fields(funnels)
        self.engines: dict[int, PartitionEngine] = {}
        self._restore_needed: set[int] = set()

    # --- lifecycle ---------------------------------------------------------------------
    def partitions_assigned(self) -> None:
        """After a rebalance every engine is rebuilt from the table on its next message."""
        self._restore_needed.update(self.engines)

    def _engine(self, partition: int) -> tuple[PartitionEngine, EngineOutput | None]:
        engine = self.engines.get(partition)
        replay: EngineOutput | None = None
        if engine is None or partition in self._restore_needed:
            engine = PartitionEngine(
                self.funnels,
                partition,
                allowed_lateness_ms=self._lateness_ms,
                retention_ms=self._retention_ms,
            )
            meta = self._load_meta(partition)
            states = [state for state in self._all_states() if state.partition == partition]
            replay = engine.restore(meta, states)
            self.engines[partition] = engine
            self._restore_needed.discard(partition)
            log.info(
                "partition %d: funnel state rebuilt from %d sessions (watermark %s)",
                partition,
                len(states),
                _fmt_ms(engine.watermark_ms),
            )
        return engine, replay

    def _all_states(self) -> list[SessionState]:
        out = []
        for key, value in list(self._table.items()):
            if key.startswith("s:"):
                out.append(SessionState.from_json(orjson.loads(value)))
        return out

    def _load_meta(self, partition: int) -> PartitionMeta:
        raw = self._table.get(_meta_key(partition))
        if raw is None:
            return PartitionMeta(partition)
        data = orjson.loads(raw)
        return PartitionMeta(partition, int(data["tick"]), int(data["max"]))

    def _load(self, session_id: str) -> SessionState | None:
        raw = self._table.get(_session_key(session_id))
        return SessionState.from_json(orjson.loads(raw)) if raw is not None else None

    # --- processing --------------------------------------------------------------------
    async def process(self, message: SourceMessage) -> EngineOutput | None:
        """Handle one record of ``funnel.events``; nothing in it can raise out of here."""
        try:
            return await self._process(message)
        except Exception as exc:
            log.exception(
                "sessions stage failed on %s/%d/%d",
                message.topic,
                message.partition,
                message.offset,
            )
            await self._dead_letter(
                message, ReasonCode.PROCESSING_ERROR, f"internal error: {exc!r}"
            )
            return None

    async def _process(self, message: SourceMessage) -> EngineOutput | None:
        engine, replay = self._engine(message.partition)
        if replay is not None:
            await self._send_outputs(replay, message.partition)
        try:
            document = orjson.loads(message.value or b"")
            if TICK_FIELD in document:
                out = engine.on_tick(int(document[TICK_FIELD]), self._load)
                self._table[_meta_key(message.partition)] = orjson.dumps(
                    {"tick": engine.meta.tick_watermark_ms, "max": engine.meta.max_event_ms}
                )
            else:
                session_id = str(document["session_id"])
                event = stored_event(document, self._keep)
                out = engine.on_event(self._load(session_id), session_id, event, self._load)
        except (ValueError, KeyError, TypeError) as exc:
            # funnel.events is written by ingest only; a foreign record is dead-lettered.
            await self._dead_letter(
                message, ReasonCode.SCHEMA_VIOLATION, f"not a funnel event: {exc!r}"
            )
            return None
        if out.late:
            lag = engine.watermark_ms - event.at_ms
            self._metrics.late_events.inc()
            await self._dead_letter(
                message,
                ReasonCode.LATE,
                f"occurred_at is {lag / 1000:.3f}s behind the partition watermark "
                f"{_fmt_ms(engine.watermark_ms)} (allowed lateness {self._lateness_ms / 1000:g}s)",
            )
        if out.overflow:
            self._metrics.session_overflow.inc()
        if out.write is not None:
            self._table[_session_key(out.write.session_id)] = orjson.dumps(out.write.to_json())
        for session_id in out.deletes:
            del self._table[_session_key(session_id)]
        await self._send_outputs(out, message.partition)
        return out

    async def _send_outputs(self, out: EngineOutput, partition: int) -> None:
        for funnel_index, state, drop in out.abandonments:
            record = abandonment_record(self.funnels[funnel_index], state, drop)
            await self._send_abandonment(
                state.session_id.encode(), record.model_dump_json().encode()
            )
            self._metrics.abandonments.labels(funnel=record.funnel, stage=record.stage).inc()
        for funnel_index, state, retraction in out.retractions:
            record = abandonment_record(
                self.funnels[funnel_index], state, retraction.drop, retraction.order_ms
            )
            await self._send_abandonment(
                state.session_id.encode(), record.model_dump_json().encode()
            )
            self._metrics.retractions.labels(funnel=record.funnel, stage=record.stage).inc()
        for partial in out.partials:
            await self._send_partial(None, orjson.dumps(partial.to_json()))
        if out.progress_ms is not None:
            progress = {"kind": "progress", "partition": partition, "watermark": out.progress_ms}
            await self._send_partial(None, orjson.dumps(progress))

    async def _dead_letter(self, message: SourceMessage, reason: ReasonCode, text: str) -> None:
        field = "occurred_at" if reason is ReasonCode.LATE else None
        letter = dead_letter_for(message, Rejection(reason, text, field), self._clock())
        self._metrics.dead_letters.labels(topic=message.topic, reason=reason.value).inc()
        log.info("dead-lettered %s: %s (%s)", letter.dead_letter_id, reason.value, text[:200])
        await self._send_dead_letter(message.key, letter.model_dump_json().encode())


def _fmt_ms(ms: int) -> str:
    if ms <= NEVER:
        return "none yet"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
