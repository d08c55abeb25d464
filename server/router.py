"""Which deployment serves a request, and failover between them.

Before the first token, a connection error, a timeout, 408, 429 or 5xx moves on to the
next deployment (in priority order, or lowest recent latency first); any other 4xx is the
caller's and goes straight back. A deployment that fails is put in cooldown (a circuit
breaker: skipped until its cooldown ends, then one request re-probes it). After the first
token nothing is retried: the caller turns the error into an in-band stream error, and the router
still hears of it (UpstreamStream), so a deployment that breaks streams cools down too. Only this
module reads or changes a deployment's health.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from server.call import Call
from server.catalog import Catalog, Resolved, Target
from server.config import CacheConfig, RoutingConfig
from server.metrics import Metrics
from server.providers import Provider, UpstreamError
from server.providers.base import Op, StreamOp
from server.redact import scrub

__all__ = ["Call", "Health", "ResponseCache", "Router", "UpstreamStream"]   # Call: re-exported for old imports

LATENCY_WEIGHT = 0.3   # EWMA weight of the newest latency sample


@dataclass
class Health:
    failures: int = 0
    open_until: float = 0.0
    cooldown: float = 0.0
    probing: bool = False
    latency: float | None = None           # EWMA seconds (TTFT for streams)


class Router:
    def __init__(self, catalog: Catalog, providers: dict[str, Provider], routing: RoutingConfig,
                 metrics: Metrics) -> None:
        self.catalog, self.providers, self.cfg, self.metrics = catalog, providers, routing, metrics
        self.health: dict[str, Health] = {}

    # ---- ordering and the circuit breaker ----
    def order(self, resolved: Resolved) -> list[Target]:
        now = time.monotonic()
        ready, cooling = [], []
        for t in resolved.targets:
            h = self.health.get(t.key)
            if h is None or h.failures < self.cfg.cooldown_failures:
                ready.append(t)
            elif now >= h.open_until and not h.probing:
                ready.append(t)            # half-open: this request re-probes it
            else:
                cooling.append(t)
        if self.cfg.strategy == "latency":
            ready.sort(key=lambda t: (self.health.get(t.key) or Health()).latency or 0.0)
        # Everything cooling: trying is still better than refusing without asking anyone.
        cooling.sort(key=lambda t: self.health[t.key].open_until)
        return (ready or cooling)[: max(1, self.cfg.max_attempts)]

    def _begin(self, t: Target) -> None:
        h = self.health.get(t.key)
        if h is not None and h.failures >= self.cfg.cooldown_failures:
            h.probing = True

    def succeeded(self, t: Target, latency: float) -> None:
        h = self.health.setdefault(t.key, Health())
        h.failures, h.probing, h.cooldown = 0, False, 0.0
        h.latency = latency if h.latency is None else (1 - LATENCY_WEIGHT) * h.latency + LATENCY_WEIGHT * latency

    def failed(self, t: Target, err: UpstreamError) -> None:
        if not err.retryable:
            h = self.health.get(t.key)
            if h is not None:
                h.probing = False
            return
        h = self.health.setdefault(t.key, Health())
        was_probe, h.probing = h.probing, False
        h.failures += 1
        if h.failures >= self.cfg.cooldown_failures:
            # A failed re-probe doubles the wait; Retry-After (capped) can lengthen it.
            h.cooldown = min(self.cfg.cooldown_max, h.cooldown * 2 if was_probe and h.cooldown else self.cfg.cooldown)
            h.cooldown = max(h.cooldown, min(err.retry_after or 0.0, self.cfg.cooldown_max))
            h.open_until = time.monotonic() + h.cooldown
            self.metrics.cooldowns.labels(provider=t.provider).inc()

    def cooling(self) -> dict[str, float]:
        now = time.monotonic()
        return {k: round(h.open_until - now, 1) for k, h in self.health.items() if h.open_until > now}

    # ---- calls ----
    async def complete(self, call: Call, op: Op, payload: dict) -> Any:
        """A non-streamed call (`chat`, `completions`, `embeddings`, `run`) with failover. A non-streamed
        answer's first byte is the answer, so it must come within `ttft` like a stream's first token (else
        the next deployment is tried); a platform prediction (`run`) is bounded by `total` instead."""
        async def attempt(provider: Provider, target: Target) -> Any:
            limit = provider.timeouts.total if op == "run" else provider.timeouts.ttft
            try:
                async with asyncio.timeout(limit):   # (not wait_for: no extra task per call)
                    return await provider.complete(op, self._payload(provider, call, payload, target),
                                                   target.upstream_model, provider.timeouts)
            except TimeoutError:
                raise UpstreamError(f"no answer from {target.provider} within {limit:g}s", None, "timeout") from None
        return await self._failover(call, attempt)

    async def open_stream(self, call: Call, op: StreamOp, payload: dict) -> UpstreamStream:
        """Start a streamed call; returns once a deployment produced its first token."""
        async def attempt(provider: Provider, target: Target) -> UpstreamStream:
            items = provider.stream(op, self._payload(provider, call, payload, target), target.upstream_model,
                                    provider.timeouts)
            try:
                # asyncio.timeout, not wait_for: wait_for runs the wait as a task of its own, one more
                # task per stream (about 3 % of the gateway's CPU under streaming load).
                async with asyncio.timeout(provider.timeouts.ttft):
                    head = await _until_first_token(items)
            except TimeoutError:
                await items.aclose()
                raise UpstreamError(f"no first token from {target.provider} within {provider.timeouts.ttft:g}s",
                                    None, "timeout") from None
            except BaseException:
                await items.aclose()
                raise
            call.ttft_s = time.perf_counter() - call.started
            return UpstreamStream(self, target, head, items)
        result: UpstreamStream = await self._failover(call, attempt)
        return result

    async def _failover(self, call: Call, attempt: Callable[[Provider, Target], Awaitable[Any]]) -> Any:
        resolved = call.resolved
        assert resolved is not None
        fallback_used = False
        last: UpstreamError | None = None
        targets = self.order(resolved)
        i = 0
        retried_429 = False
        while i < len(targets):
            target = targets[i]
            provider = self.providers[target.provider]
            call.attempted.append(target.provider)
            if len(call.attempted) > 1:
                self.metrics.failovers.labels(model=call.model, provider=target.provider).inc()
            self._begin(target)
            t0 = time.perf_counter()
            try:
                result = await attempt(provider, target)
            except UpstreamError as e:
                scrub(e, provider.secrets())   # an upstream may quote the key it was given
                call.upstream_s += time.perf_counter() - t0
                self.failed(target, e)
                last = e
                if e.kind == "context_window" and resolved.context_fallback and not fallback_used:
                    fallback_used = True   # the prompt is too big for this model: go to the larger one
                    resolved = call.resolved = self.catalog.resolve(resolved.context_fallback)
                    targets, i = self.order(resolved), 0
                    continue
                if not e.retryable:
                    raise
                last_chance = i == len(targets) - 1
                if (e.status == 429 and last_chance and not retried_429 and e.retry_after is not None
                        and e.retry_after <= self.cfg.retry_after_cap
                        and len(call.attempted) < self.cfg.max_attempts):
                    retried_429 = True     # the only one left asked us to wait a little: do, once
                    await asyncio.sleep(e.retry_after)
                    continue
                if len(call.attempted) >= self.cfg.max_attempts:
                    break
                i += 1
                continue
            elapsed = time.perf_counter() - t0
            call.upstream_s += elapsed
            call.target = target
            self.succeeded(target, call.ttft_s if call.ttft_s is not None else elapsed)
            return result
        assert last is not None
        raise last

    def _payload(self, provider: Provider, call: Call, payload: dict, target: Target) -> dict:
        if call.metadata and provider.cfg.accepts_metadata and call.endpoint != "run":
            return {**payload, "metadata": call.metadata}
        return payload


class UpstreamStream:
    """A streamed answer past its first token: `head` (the items so far), then `rest()`. A failure
    from here on is never retried, but it counts against the deployment, as a failure before the
    first token does: an upstream error as it happens, a timeout the stream buffer saw by `broke`."""

    def __init__(self, router: Router, target: Target, head: list, items: AsyncGenerator[Any, None]) -> None:
        self.router, self.target, self.head, self._items = router, target, head, items

    async def rest(self) -> AsyncIterator[Any]:
        try:
            async for item in self._items:
                yield item
        except UpstreamError as e:
            scrub(e, self.router.providers[self.target.provider].secrets())
            self.broke(e.message)
            raise

    def broke(self, reason: str) -> None:
        self.router.failed(self.target, UpstreamError(reason, None, "stream"))

    async def aclose(self) -> None:
        await self._items.aclose()


def _is_token(item: Any) -> bool:
    if isinstance(item, tuple):        # platform events: anything the model said
        return True
    if item.get("usage"):
        return True
    for choice in item.get("choices") or ():
        delta = choice.get("delta") or {}
        if (choice.get("finish_reason") or choice.get("text") or delta.get("content") or delta.get("tool_calls")
                or delta.get("reasoning_content") or delta.get("refusal")):
            return True
    return False


async def _until_first_token(items: AsyncIterator[Any]) -> list:
    """Items up to and including the first real token (a role-only opening chunk is not one)."""
    head = []
    async for item in items:
        head.append(item)
        if _is_token(item):
            return head
    if not head:
        raise UpstreamError("upstream stream was empty", None, "stream")
    return head


class ResponseCache:
    """Exact-match cache of non-streamed responses, per tenant, with a TTL (off by default)."""

    def __init__(self, cfg: CacheConfig) -> None:
        self.cfg = cfg
        self._entries: OrderedDict[str, tuple[float, Any, str]] = OrderedDict()

    @staticmethod
    def key(tenant_id: str, endpoint: str, model: str, payload: dict) -> str:
        text = json.dumps([tenant_id, endpoint, model, payload], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> tuple[Any, str] | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return hit[1], hit[2]

    def put(self, key: str, value: Any, provider: str) -> None:
        self._entries[key] = (time.monotonic() + self.cfg.ttl, value, provider)
        self._entries.move_to_end(key)
        while len(self._entries) > self.cfg.max_entries:
            self._entries.popitem(last=False)
