"""The conversations behind `previous_response_id` (OpenAI Responses API): each stored response's
messages (canonical, without its instructions) and its answer, by response id and tenant. Kept in
memory for this process (so the next turn finds it at once, even before the write lands) and in
the store (so any replica finds it); a tenant never reads another's."""
from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

MEMORY_ENTRIES = 10_000          # recent conversations kept in memory, at most
PURGE_INTERVAL = 3600.0          # seconds between deletions of conversations past their retention

Write = Callable[..., Awaitable[Any]]     # runs a function on one of the gateway's store threads


class Conversations:
    def __init__(self, repo: Any, write: Write, read: Write, retention: float, retry_after: float = 0.2) -> None:
        self.repo, self.write, self.read = repo, write, read     # the gateway's store writer and readers
        self.retention, self.retry_after = retention, retry_after
        self._purger: asyncio.Task[None] | None = None
        self._recent: OrderedDict[str, tuple[str, list[dict[str, Any]]]] = OrderedDict()
        self._writes: set[asyncio.Future[Any]] = set()

    def remember(self, response_id: str, tenant_id: str, messages: list[dict[str, Any]]) -> None:
        """Keep one (from the event loop, synchronously: usable by the next request at once)."""
        self._recent[response_id] = (tenant_id, messages)
        while len(self._recent) > MEMORY_ENTRIES:
            self._recent.popitem(last=False)
        task: asyncio.Future[Any] = asyncio.ensure_future(self.write(self.repo.save, response_id, tenant_id, messages))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def get(self, response_id: str, tenant_id: str) -> list[dict[str, Any]] | None:
        hit = self._recent.get(response_id)
        if hit is not None:
            return hit[1] if hit[0] == tenant_id else None
        found: list[dict[str, Any]] | None = await self.read(self.repo.get, response_id, tenant_id)
        if found is None:       # perhaps its replica's write has not landed yet
            await asyncio.sleep(self.retry_after)
            found = await self.read(self.repo.get, response_id, tenant_id)
        return found

    def start(self) -> None:
        self._purger = asyncio.create_task(self._purge())

    async def _purge(self) -> None:
        """Stored conversations older than `retention` go (at start, then hourly)."""
        while True:
            try:
                await self.write(self.repo.purge_expired, self.retention)
            except Exception:  # noqa: BLE001 - the store may be down: tried again next hour
                logging.getLogger(__name__).exception("purging old conversations failed")
            await asyncio.sleep(PURGE_INTERVAL)

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
