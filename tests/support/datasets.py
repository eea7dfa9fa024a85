"""Where the tests find recorded datasets (one place, so moving one changes one line)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def otto_sample() -> Path:
    """The real OTTO sample's ``sessions.jsonl``, in the repository (tests/data/otto-sample,
    CC-BY 4.0: see its README)."""
    return ROOT / "tests/data/otto-sample/sessions.jsonl"
