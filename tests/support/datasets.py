"""Where the tests find recorded datasets (one place, so moving one changes one line)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def otto_sample() -> Path:
    """The real OTTO sample's ``sessions.jsonl``. Not in this repository yet: the shared/
    folder beside the checkout, or ``$STREAMER_SHARED_DIR``. Its tests fail, saying where
    they looked, when it is absent: they need the real data and do not skip."""
    shared = Path(os.environ.get("STREAMER_SHARED_DIR", ROOT.parent / "shared"))
    path = shared / "datasets/otto-sample/sessions.jsonl"
    if not path.is_file():
        pytest.fail(
            f"the OTTO sample is missing: expected {path} (the shared/ folder beside the "
            "checkout, or STREAMER_SHARED_DIR). This test needs the real data and does not skip."
        )
    return path
