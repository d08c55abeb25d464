"""The Gateway: the objects every route shares (`request.app.state.gateway`), built once per app,
and the three entry points `server/api/*` call, each owned by one module:
    authenticate  -> server/admission.py   (keys)
    new_call      -> server/serving.py     (resolve the model string)
    serve         -> server/serving.py     (admit: rate limits, credits; route; answer or stream; bill)
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from server.admission import Admission
from server.auth import Auth
from server.billing import Billing
from server.catalog import Catalog
from server.config import GatewayConfig
from server.conversations import Conversations
from server.ledger import Ledger
from server.logs import setup_logging
from server.metrics import Metrics
from server.platform.engine_vllm import VllmProvider
from server.platform.provider import ManagedProvider
from server.platform.service import PROVIDER as PLATFORM_PROVIDER
from server.platform.service import Platform
from server.platform.vllm import VLLM_PROVIDER
from server.providers import Provider, make_provider
from server.recovery import Recovery
from server.router import ResponseCache, Router
from server.serving import Serving
from server.store import Store
from server.store.conversations import ConversationRepo
from server.store.streams import StreamRepo
from server.streams import Streams

T = TypeVar("T")

# Store reads (key-cache misses, resumes served from the store, recovery's scans, ...) go through
# this many threads of the gateway's own, not asyncio's default pool (min(32, CPUs + 4) threads):
# every thread that touches the store ends up holding a pooled SQLite connection (its page and
# statement caches) and a glibc malloc arena of its own, whose freed pages it keeps. Measured in a
# 2-minute soak at 64 streams on 2 CPUs: the default pool's 6 threads -> 13 arenas, RSS still rising
# over the last 80 s (+10 MiB); 2 readers -> 9 arenas, +0.8 MiB over the whole second half.
STORE_READERS = 2


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.log = setup_logging(config.logging.level)
        self.store = Store(config.db_url())
        self.auth = Auth(self.store, config.master_key.encode() if config.master_key else None,
                         cache_ttl=config.auth_cache_ttl)
        self.ledger = Ledger(self.store, config.redis_url)
        self.catalog = Catalog(config)
        self.metrics = Metrics()
        self.providers: dict[str, Provider] = {
            p.name: make_provider(p, config.timeouts, self._secret_source(p.api_key_secret, p.api_key_env))
            for p in config.providers}
        self.platform = Platform(self.store, config.platform, self.metrics.registry)
        self.providers[PLATFORM_PROVIDER] = ManagedProvider(self.platform, config.timeouts)
        self.providers[VLLM_PROVIDER] = VllmProvider(self.platform, config.timeouts, self.metrics.registry)
        self.router = Router(self.catalog, self.providers, config.routing, self.metrics)
        # Every store write goes through this one thread: writers never wait on each other's locks
        # (SQLite's busy wait sleeps for milliseconds), and the event loop never blocks on the store.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cogkit-store-writer")
        self.reader = ThreadPoolExecutor(max_workers=STORE_READERS, thread_name_prefix="cogkit-store-reader")
        self.streams = Streams(config.streams, StreamRepo(self.store), self.metrics, self.log, self.writer,
                               self.reader)
        self.conversations = Conversations(ConversationRepo(self.store), self.write, self.read,
                                           config.conversation_retention)
        self.recovery = Recovery(self.streams.repo, self.ledger, config.streams, self.write, self.read, self.log)
        self.admission = Admission(self.auth, self.ledger, self.write, self.read)
        self.billing = Billing(self.ledger, self.metrics, self.log, self.write, config.logging.log_prompts)
        self.serving = Serving(self.catalog, self.router, self.providers, self.streams, self.admission,
                               self.billing, self.metrics, ResponseCache(config.cache) if config.cache.enabled else None,
                               self.platform)
        # The entry points of server/api/* (see the module docstring).
        self.authenticate = self.admission.authenticate
        self.new_call = self.serving.new_call
        self.serve = self.serving.serve

    def _secret_source(self, secret: str | None, env: str | None) -> Callable[[], Awaitable[str | None]] | None:
        if not secret and not env:
            return None

        async def lookup() -> str | None:
            if env and os.environ.get(env):
                return os.environ[env]
            return await self.read(self.auth.get_provider_secret, None, secret) if secret else None
        return lookup

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the store-writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in one of the store-reader threads (STORE_READERS)."""
        return await asyncio.get_running_loop().run_in_executor(self.reader, fn, *args)

    async def startup(self) -> None:
        self.streams.start_background()
        self.recovery.start()                  # settles what a dead process left on this store, then watches
        self.conversations.start()
        self.billing.start()
        await self.platform.startup(self.writer)

    async def shutdown(self) -> None:
        await self.platform.shutdown()
        await self.recovery.close()
        await self.conversations.close()
        await self.streams.close()             # ends every stream, which queues its bill
        await self.billing.close()
        self.writer.shutdown(wait=True)
        self.reader.shutdown(wait=True)
        for provider in self.providers.values():
            await provider.aclose()
        self.store.close()
