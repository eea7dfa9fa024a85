"""A local HTTP server that behaves like Slack's incoming webhooks (for tests and demos).

- ``POST /services/<token>`` with JSON that has ``text``: 200 ``ok``, recorded.
- More than one message a second on a webhook: 429 with ``Retry-After`` (seconds,
  ``retry_after``: 3 unless set), body ``rate_limited``, not accepted (it is recorded with its
  status, so a test can check that no request came before the ``Retry-After`` was over).
- Broken JSON, or neither ``text`` nor legacy ``attachments`` (each with ``text`` or
  ``fallback``, as Alertmanager sends them): 400 ``invalid_payload``. Token ``archived``: 410
  ``channel_is_archived``; ``missing``: 404 ``channel_not_found``; ``revoked``: 403
  ``invalid_token``.
- :meth:`FakeSlack.fail_next` scripts outages: the next N requests get a status and body
  (e.g. 500 ``rollup_error``).

It runs its own event loop on a thread, so a test and worker subprocesses can all use it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from streamer.worker_process import free_port

__all__ = ["FakeSlack", "SlackRequest"]

_PERMANENT = {
    "archived": (410, "channel_is_archived"),
    "missing": (404, "channel_not_found"),
    "revoked": (403, "invalid_token"),
}


def _has_text(payload: Any) -> bool:
    """A message Slack can show: ``text``, or attachments that each carry a text."""
    if not isinstance(payload, dict):
        return False
    if payload.get("text"):
        return True
    attachments = payload.get("attachments")
    return (
        isinstance(attachments, list)
        and bool(attachments)
        and all(isinstance(a, dict) and (a.get("text") or a.get("fallback")) for a in attachments)
    )


@dataclass
class SlackRequest:
    token: str
    status: int
    body: str
    payload: dict[str, Any] | None
    at: float


@dataclass
class FakeSlack:
    min_interval: float = 1.0
    retry_after: int = 3
    requests: list[SlackRequest] = field(default_factory=list)
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._last_accepted: dict[str, float] = {}
        self._script: list[tuple[int, str]] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def url(self, token: str = "T000/B000/secret-token") -> str:
        return f"http://127.0.0.1:{self.port}/services/{token}"

    @property
    def accepted(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.payload for r in self.requests if r.status == 200 and r.payload]

    def statuses(self) -> list[int]:
        with self._lock:
            return [r.status for r in self.requests]

    def fail_next(self, count: int, status: int = 500, body: str = "rollup_error") -> None:
        with self._lock:
            self._script.extend([(status, body)] * count)

    async def _handle(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        raw = await request.read()
        now = time.monotonic()
        with self._lock:
            status, body, payload = 200, "ok", None
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = None
            if self._script:
                status, body = self._script.pop(0)
            elif token.split("/")[-1] in _PERMANENT:
                status, body = _PERMANENT[token.split("/")[-1]]
            elif not _has_text(payload):
                status, body = 400, "invalid_payload"
            elif now - self._last_accepted.get(token, -1e9) < self.min_interval:
                status, body = 429, "rate_limited"
            else:
                self._last_accepted[token] = now
            self.requests.append(SlackRequest(token, status, body, payload, time.time()))
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
        return web.Response(status=status, text=body, headers=headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/services/{token:.+}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)  # paths hold the webhook token
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> FakeSlack:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
