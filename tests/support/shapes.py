"""Generated shop traffic in a vendor's shape (``streamer.shapes``) with its plan folder: the
vendor's preset copied as a shop would, and a file of the shop's own events. The routing to
topics and the message keys stay those of the contract event, so a session's events share a
partition.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson

from streamer.plan.load import preset_path
from streamer.settings import Settings
from streamer.shapes import SHAPERS, SHOP_EVENTS
from streamer.simulate import topic_for
from tests.support.traffic import Dataset, closing_messages


@dataclass(frozen=True)
class ShapedTraffic:
    """A dataset in a vendor's shape, and the plan folder that declares it."""

    shape: str
    dataset: Dataset
    plan_dir: Path

    def messages(self, settings: Settings) -> list[tuple[str, bytes, bytes]]:
        shaper = SHAPERS[self.shape]
        return [
            (
                topic_for(settings, e["event_type"]),
                e["session_id"].encode(),
                orjson.dumps(shaper(e)),
            )
            for e in self.dataset.arrivals
        ]

    def closing(self, settings: Settings) -> list[tuple[str, int, bytes, bytes]]:
        """The closing events (page views far later, matching no stage), in this shape."""
        shaper = SHAPERS[self.shape]
        out = []
        for topic, partition, key, value in closing_messages(settings, self.dataset.closing_ms):
            event = orjson.loads(value) | {"event_type": "page_view", "page": "/closing"}
            out.append((topic, partition, key, orjson.dumps(shaper(event))))
        return out

    def documents(self) -> list[bytes]:
        """Every message value of the dataset, in arrival order (the oracle's input)."""
        shaper = SHAPERS[self.shape]
        return [orjson.dumps(shaper(e)) for e in self.dataset.arrivals]


def shaped(shape: str, dataset: Dataset, folder: Path) -> ShapedTraffic:
    """``dataset`` in ``shape``, with a plan folder: the vendor's preset, copied as a shop
    would, and a file of the shop's own events."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(preset_path(shape), folder / f"{shape}.yaml")
    (folder / "shop.yaml").write_text(SHOP_EVENTS)
    return ShapedTraffic(shape, dataset, folder)
