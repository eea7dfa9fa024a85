"""Sessions stage: source messages -> validated events -> tasks -> partials and abandonments.

One hop: producers key clickstream and checkout by session id on co-partitioned topics, so
partition N of both is one *task* (:class:`streamer.funnel.task.Task`) processed in place.
One concern per module:

- ``projection``: what the core keeps of an event (the fields the funnels read);
- ``records``: output records built from the core's notices (abandonments);
- ``checkpoint_log``: the per-partition log of delta records in the state table, read and
  written as pure code over a mapping;
- ``stage``: :class:`SessionsStage`: decode, apply, gaps and stalls, idle inputs, publishing,
  and the checkpoint recipe (snapshot -> state writes and outputs -> producer flush -> ack);
- ``wiring``: :func:`install`, the Faust topics, table, agent, callbacks and timer.
"""

from streamer.pipeline.sessions.projection import needed_fields, stored_event
from streamer.pipeline.sessions.records import abandonment_record
from streamer.pipeline.sessions.stage import SessionsStage
from streamer.pipeline.sessions.wiring import install

__all__ = ["SessionsStage", "abandonment_record", "install", "needed_fields", "stored_event"]
