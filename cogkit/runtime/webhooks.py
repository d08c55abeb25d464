"""Webhooks: the prediction's state POSTed to the caller's URL on start,
output, logs and completion, filtered by webhook_events_filter. Output and
logs events are throttled to one every 0.5 s; the completed event is always
sent (with retries), after any pending one, so the receiver's last word is final."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

EVENTS = ("start", "output", "logs", "completed")
DEFAULT_FILTER = list(EVENTS)
THROTTLED = ("output", "logs")


class WebhookSender:
    def __init__(self, client: httpx.AsyncClient, url: str, events_filter: list[str] | None,
                 state: Callable[[], dict[str, Any]], interval: float = 0.5, retries: int = 3) -> None:
        self._client = client
        self._url = url
        self._filter = set(events_filter or DEFAULT_FILTER)
        self._state = state
        self._interval = interval
        self._retries = retries
        self._last_sent = 0.0
        self._pending: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def notify(self, event: str) -> None:
        if event not in self._filter and event != "completed":
            return
        if event == "completed":
            if "completed" in self._filter:
                asyncio.get_running_loop().create_task(self._send_final())
            return
        if event in THROTTLED:
            if self._pending is None:  # a pending send will carry this change too
                delay = max(0.0, self._last_sent + self._interval - time.monotonic())
                self._pending = asyncio.get_running_loop().create_task(self._send_later(delay))
            return
        asyncio.get_running_loop().create_task(self._send(retries=0))

    async def _send_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._pending = None
        await self._send(retries=0)

    async def _send_final(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        await self._send(retries=self._retries)

    async def _send(self, retries: int) -> None:
        async with self._lock:
            self._last_sent = time.monotonic()
            payload = self._state()
            for attempt in range(retries + 1):
                try:
                    response = await self._client.post(self._url, json=payload, timeout=10)
                    if response.status_code < 500:
                        return
                except httpx.HTTPError:
                    pass
                if attempt < retries:
                    await asyncio.sleep(0.2 * 2**attempt)
