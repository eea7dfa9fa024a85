"""Read and replay the dead-letter topic.

``replay`` re-submits the original bytes of dead letters to their source topic (same key, same
broker timestamp, a ``streamer.replay_of`` header) after a fix, e.g. a schema upgrade. A
compacted ledger topic ``<dlq>.replayed`` records every dead letter already re-submitted, so
running replay again, or with other filters, never sends one twice; and the ingest stage's
de-duplication drops a replayed event whose ``event_id`` was already accepted.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from streamer.events import DeadLetter
from streamer.kafka_io import ensure_topics, make_producer, read_topic
from streamer.settings import Settings

__all__ = [
    "REPLAY_HEADER",
    "DeadLetterReplayReport",
    "ledger_topic",
    "parse_dead_letters",
    "replay_dead_letters",
]

log = logging.getLogger(__name__)

REPLAY_HEADER = "streamer.replay_of"


def ledger_topic(settings: Settings) -> str:
    return f"{settings.dlq_topic}.replayed"


def parse_dead_letters(
    records: Iterable[tuple[bytes | None, bytes | None]],
) -> tuple[list[DeadLetter], int]:
    letters, unreadable = [], 0
    for _, value in records:
        try:
            letters.append(DeadLetter.model_validate_json(value or b""))
        except ValidationError:
            unreadable += 1
    return letters, unreadable


@dataclass
class DeadLetterReplayReport:
    selected: int = 0
    replayed: int = 0
    already_replayed: int = 0
    filtered_out: int = 0
    unreadable: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


async def replay_dead_letters(
    settings: Settings, reasons: frozenset[str] | None = None, dry_run: bool = False
) -> DeadLetterReplayReport:
    ledger = ledger_topic(settings)
    await ensure_topics(settings, [ledger], configs={ledger: {"cleanup.policy": "compact"}})
    done = {key.decode() for key, value in await read_topic(settings, ledger) if key and value}
    letters, unreadable = parse_dead_letters(await read_topic(settings, settings.dlq_topic))
    report = DeadLetterReplayReport(unreadable=unreadable)
    chosen: list[DeadLetter] = []
    for letter in letters:
        if letter.dead_letter_id in done:
            report.already_replayed += 1
        elif reasons is not None and letter.reason.value not in reasons:
            report.filtered_out += 1
        else:
            chosen.append(letter)
            done.add(letter.dead_letter_id)  # the DLQ may hold the same id twice (at-least-once)
            report.by_reason[letter.reason.value] = report.by_reason.get(letter.reason.value, 0) + 1
    report.selected = len(chosen)
    if dry_run or not chosen:
        return report
    producer = make_producer(settings, acks="all")
    await producer.start()
    try:
        for letter in chosen:
            key = base64.b64decode(letter.key_base64) if letter.key_base64 is not None else None
            # The source first, then the ledger: a crash in between replays again next time,
            # and ingest's de-duplication drops the second copy.
            await producer.send_and_wait(
                letter.source_topic,
                key=key,
                value=base64.b64decode(letter.payload_base64),
                timestamp_ms=letter.source_timestamp_ms,
                headers=[(REPLAY_HEADER, letter.dead_letter_id.encode())],
            )
            await producer.send_and_wait(
                ledger,
                key=letter.dead_letter_id.encode(),
                value=orjson.dumps({"replayed_at": datetime.now(UTC).isoformat(),
                                    "to": letter.source_topic}),
            )  # fmt: skip
            report.replayed += 1
    finally:
        await producer.stop()
    log.info("replayed %d dead letters from %s", report.replayed, settings.dlq_topic)
    return report
