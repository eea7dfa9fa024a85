"""Periodic work of a stage, which must not turn a clean stop into a crash."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["install_timer"]

log = logging.getLogger(__name__)


def install_timer(
    app: Any, interval_s: float, body: Callable[[], Awaitable[None]], name: str
) -> None:
    """Run ``body`` every ``interval_s`` seconds on ``app``.

    Faust stops the producer before it cancels its timers, so a tick under way when the worker
    is told to stop can find the producer gone. What that tick did not send is what a SIGKILL
    at the same moment would lose, and the next start re-derives it from the last checkpoint:
    it is logged, not raised (raised, it makes a clean stop exit 1 as a crash). An error while
    running is raised as before: the worker stops rather than go on without its timer.
    """

    async def tick() -> None:
        if app.should_stop:
            return
        try:
            await body()
        except Exception as exc:
            if not app.should_stop:
                raise
            log.info("%s: cut short by the worker stopping (%s); nothing is lost", name, exc)

    tick.__name__ = tick.__qualname__ = name  # Faust names the timer (and its logs) after it
    app.timer(interval_s)(tick)
