"""The worker's start-up: partition layout checks and the garbage collector's tuning."""

from __future__ import annotations

import gc
import logging

from streamer.kafka_io import run_sync
from streamer.settings import Settings

# The worker holds every open session's state, hundreds of thousands of objects, and Python's
# cyclic collector with its default thresholds (700, 10, 10) walked them again and again: 17 s
# of a 90 s run on a 200k-event backlog (measured with gc.callbacks). Decision 0004 made
# collections rarer; decision 0007 (third round) keeps each one short instead: a collection
# walks only what is younger than the last one (``_freeze_survivors``), so the young generation's
# size bounds every pause, and 10,000 allocations keep it small (tens of ms of CPU at worst).
GC_THRESHOLDS = (10_000, 20, 100)


# Frozen objects are freed by their reference counts alone: a cycle among them would stay.
# Once the frozen objects are this many times what they were after the last full collection,
# the worker's sweep gives them back to the collector for one full collection: a pause like
# those of before, as rare as a doubling of the long-lived objects (the state, or leaked cycles).
SWEEP_WHEN_GROWN = 2
SWEEP_CHECK_EVERY_S = 60.0
_swept_size = [0]  # the frozen objects after the last full collection


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    """After each collection, what survived it leaves the collector's generations
    (``gc.freeze``, a constant-time move): open sessions live for minutes to days, and walking
    them again in the older generations held the event loop 0.4-0.6 s at a time."""
    if phase == "stop":
        gc.freeze()


def tune_garbage_collector() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()  # what exists now (modules, the app) lives as long as the process
    _swept_size[0] = gc.get_freeze_count()
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def sweep_frozen_if_grown() -> int | None:
    """One full collection of every object, frozen ones included, if the frozen objects have
    grown ``SWEEP_WHEN_GROWN`` times since the last: the cycles it freed, or None if not due."""
    if gc.get_freeze_count() <= SWEEP_WHEN_GROWN * max(_swept_size[0], GC_THRESHOLDS[0]):
        return None
    gc.unfreeze()
    freed = gc.collect()  # (its callback freezes what survived again)
    _swept_size[0] = gc.get_freeze_count()
    return freed


def check_source_partitions(settings: Settings) -> None:
    """One hop needs co-partitioned sources: the same partition count on both topics (and
    on the state table's changelog). Says which path the worker runs."""
    from streamer.errors import ConfigError
    from streamer.kafka_io import topic_partitions

    log = logging.getLogger("streamer.worker")
    topics = (settings.clickstream_topic, settings.checkout_topic)
    counts = {topic: len(run_sync(topic_partitions(settings, topic))) for topic in topics}
    if not settings.source_keyed_by_session:
        log.info(
            "re-key path: events of %s are validated and re-keyed by session id through %s "
            "(%d partitions), event-time fronts in-band (STREAMER_SOURCE_KEYED_BY_SESSION=false)",
            ", ".join(f"{t} ({n} partitions)" for t, n in counts.items()),
            settings.rekeyed_topic,
            settings.topic_partitions,
        )
        return
    for topic, count in counts.items():
        if count != settings.topic_partitions:
            raise ConfigError(
                f"topics are not co-partitioned: {topic} has {count} partitions but "
                f"topic_partitions is {settings.topic_partitions} "
                f"({', '.join(f'{t}: {n}' for t, n in counts.items())}). One hop needs both "
                "topics keyed by session_id with the same partition count: set "
                "STREAMER_TOPIC_PARTITIONS to it, or STREAMER_SOURCE_KEYED_BY_SESSION=false to "
                "re-key through an internal topic"
            )
    log.info(
        "one hop: %s are keyed by session id with %d partitions each, processed in place",
        " and ".join(topics),
        settings.topic_partitions,
    )
