"""Where the files streamer ships live: the default funnels, the local broker's Maven project,
the dashboards and alert rules.

A wheel carries them as package data (``streamer/_deploy``, copied from ``deploy/`` when the
wheel is built, see setup.py); a source checkout (and an editable install) reads ``deploy/``
itself. Nothing else should look for them through ``__file__``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["deploy_dir"]

_PACKAGE = Path(__file__).resolve().parent


def deploy_dir() -> Path:
    """The shipped ``deploy/`` files: the installed package's copy, else the checkout's."""
    packaged = _PACKAGE / "_deploy"
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / "deploy"
