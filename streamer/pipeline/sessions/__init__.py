"""Sessions stage: source messages -> validated events -> tasks -> partials and abandonments.

One hop: producers key clickstream and checkout by session id on co-partitioned topics, so
partition N of both is one *task* (:class:`streamer.funnel.task.Task`) processed in place.
One concern per module:

- ``records``: output records built from the core's notices (abandonments);
- ``checkpoint_log``: the per-partition log of delta records in the state table, read and
  written as pure code over a mapping;
- ``runtime``: what the stage keeps beside each task (offsets, acks waiting, the log's range);
- ``committer``: the checkpoint, as one recipe (snapshot -> outputs -> state writes -> producer
  flush -> ack), and the stage's seal;
- ``catch_up``: funnels added to a running worker, rebuilt from the input already read;
- ``stage``: :class:`SessionsStage`: assignment and restore, decode (``streamer.decoders``)
  and apply, idle inputs,
  publishing;
- ``wiring``: :func:`install`, the Faust topics, table, agent, callbacks and timer;
  :func:`install_units`, the same stage as the unit tasks of user funnels.
"""

from streamer.pipeline.sessions.records import abandonment_record
from streamer.pipeline.sessions.stage import SessionsStage
from streamer.pipeline.sessions.wiring import install, install_units

__all__ = ["SessionsStage", "abandonment_record", "install", "install_units"]
