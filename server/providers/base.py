"""What every upstream kind shares: one pooled httpx client, error mapping, SSE reading.

Every provider speaks the canonical format (OpenAI chat completions) to the router;
translation to its own wire format happens inside it, through server.translate. The interface is
`Provider`: one named method per operation, each Unsupported unless a kind implements it; the router
reaches them through `complete(op, ...)` and `stream(op, ...)`, an explicit dispatch (no string
lookup), so every hop is visible to readers and to the type checker.
"""
from __future__ import annotations

import email.utils
import json
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import httpx

from server.config import ProviderConfig, Timeouts
from server.translate import StreamError
from server.translate.sse import SSEDecoder

POOL_SIZE = 32          # connections per httpx pool (see Pools)
CONTEXT_MARKERS = ("context_length_exceeded", "context length", "context window", "prompt is too long",
                   "too many tokens", "maximum context")


class UpstreamError(Exception):
    """kind: "connect" | "timeout" | "http" | "context_window" | "stream" (broke after it began)."""

    def __init__(self, message: str, status: int | None = None, kind: str = "http",
                 retry_after: float | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message, self.status, self.kind, self.retry_after, self.body = message, status, kind, retry_after, body

    @property
    def retryable(self) -> bool:
        """May the next deployment be tried? Only for failures that say nothing about the request."""
        if self.kind in ("connect", "timeout", "stream"):
            return True
        return self.kind == "http" and self.status is not None and (self.status in (408, 429) or self.status >= 500)

    def client_status(self) -> int:
        if self.kind == "timeout":
            return 504
        if self.kind in ("connect", "stream") or self.status in (401, 403, 407):
            return 502      # an upstream refusing the gateway's own credentials is not the caller's fault
        return self.status or 502


class Unsupported(Exception):
    """The provider kind has no such operation (e.g. embeddings on Anthropic)."""


KeySource = Callable[[], Awaitable[str | None]]
Op = Literal["chat", "completions", "embeddings", "run"]          # a non-streamed operation
StreamOp = Literal["chat", "completions", "run"]                  # a streamed one


class Provider(ABC):
    kind = "base"

    def __init__(self, cfg: ProviderConfig, timeouts: Timeouts, key_source: KeySource | None = None) -> None:
        self.cfg, self.name, self.timeouts = cfg, cfg.name, timeouts.merged(cfg.timeouts)
        self.base_url = cfg.base_url.rstrip("/")
        self._key_source = key_source
        self._key: str | None = cfg.api_key
        self._key_checked = 0.0
        self._seen_keys: set[str] = set()
        self.pools = Pools(cfg.max_connections, cfg.headers)

    async def aclose(self) -> None:
        await self.pools.aclose()

    async def api_key(self) -> str | None:
        """The key from config, else the stored secret, looked up at most once a minute."""
        if self._key is not None and self._key_source is None:
            return self._key
        now = time.monotonic()
        if self._key_source is not None and now - self._key_checked > 60:
            self._key_checked = now
            self._key = await self._key_source() or self._key
            if self._key:
                self._seen_keys.add(self._key)
        return self._key

    def secrets(self) -> set[str]:
        """Every secret value this provider was given (its keys, a rotated one too, and configured
        header values): what server/redact.py scrubs from an upstream's messages."""
        return {v for v in (self.cfg.api_key, self._key, *self._seen_keys, *self.cfg.headers.values()) if v}

    @abstractmethod
    async def _headers(self) -> dict[str, str]:
        """The upstream's auth (and version) headers, key included."""

    # ---- the router's entry points: one explicit dispatch per kind of call ----
    def complete(self, op: Op, req: dict, model: str, t: Timeouts) -> Awaitable[Any]:
        if op == "chat":
            return self.chat(req, model, t)
        if op == "completions":
            return self.completions(req, model, t)
        if op == "embeddings":
            return self.embeddings(req, model, t)
        return self.run(req, model, t)

    def stream(self, op: StreamOp, req: dict, model: str, t: Timeouts) -> AsyncGenerator[Any, None]:
        if op == "chat":
            return self.chat_stream(req, model, t)
        if op == "completions":
            return self.completions_stream(req, model, t)
        return self.run_stream(req, model, t)

    # ---- the operations (canonical in, canonical out) ----
    async def chat(self, req: dict, model: str, t: Timeouts) -> dict:
        raise Unsupported(f"{self.kind} provider {self.name!r} has no chat completions")

    def chat_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        raise Unsupported(f"{self.kind} provider {self.name!r} has no chat completions")

    async def completions(self, req: dict, model: str, t: Timeouts) -> dict:
        raise Unsupported(f"{self.kind} provider {self.name!r} has no text completions")

    def completions_stream(self, req: dict, model: str, t: Timeouts) -> AsyncGenerator[dict, None]:
        raise Unsupported(f"{self.kind} provider {self.name!r} has no text completions")

    async def embeddings(self, req: dict, model: str, t: Timeouts) -> dict:
        raise Unsupported(f"{self.kind} provider {self.name!r} has no embeddings")

    async def run(self, inputs: dict, model: str, t: Timeouts) -> dict:
        raise Unsupported(f"{self.kind} provider {self.name!r} runs chat models only")

    def run_stream(self, inputs: dict, model: str, t: Timeouts) -> AsyncGenerator[tuple[str, Any], None]:
        raise Unsupported(f"{self.kind} provider {self.name!r} runs chat models only")

    # ---- HTTP helpers ----
    @staticmethod
    def plain_timeout(t: Timeouts) -> httpx.Timeout:
        return httpx.Timeout(connect=t.connect, read=t.total, write=t.total, pool=t.connect)

    @staticmethod
    def stream_timeout(t: Timeouts) -> httpx.Timeout:
        # The router bounds the first token (ttft) and the stream buffer the gaps (idle) and the total;
        # this read timeout is only the backstop for a socket that goes silent.
        return httpx.Timeout(connect=t.connect, read=max(t.ttft, t.idle), write=t.total, pool=t.connect)

    async def post_json(self, url: str, body: dict, headers: dict, t: Timeouts) -> dict:
        with self.pools.lease() as client:
            try:
                resp = await client.post(url, json=body, headers=headers, timeout=self.plain_timeout(t))
            except httpx.HTTPError as e:
                raise transport_error(e) from e
        if resp.status_code >= 400:
            raise http_error(resp.status_code, resp.content, resp.headers)
        try:
            return resp.json()
        except ValueError as e:
            raise UpstreamError(f"{self.name}: upstream sent invalid JSON", resp.status_code, "http") from e

    async def translated_stream(self, url: str, body: dict, translator: Any, t: Timeouts) -> AsyncIterator[dict]:
        """An upstream SSE stream in another format, as canonical chunks through `translator`."""
        try:
            async for event, data in self.sse(url, body, await self._headers(), t):
                try:
                    payload = json.loads(data)
                except ValueError as e:
                    raise UpstreamError(f"{self.name}: invalid JSON in stream", None, "stream") from e
                for chunk in translator.feed(event, payload):
                    yield chunk
            for chunk in translator.finish():
                yield chunk
        except StreamError as e:
            raise UpstreamError(e.message, e.status, "stream", body={"type": e.type}) from e

    async def sse(self, url: str, body: dict, headers: dict, t: Timeouts) -> AsyncIterator[tuple[str | None, str]]:
        """(event, data) pairs of an upstream SSE response; errors as UpstreamError."""
        with self.pools.lease() as client:
            request = client.build_request("POST", url, json=body, headers=headers, timeout=self.stream_timeout(t))
            try:
                resp = await client.send(request, stream=True)
            except httpx.HTTPError as e:
                raise transport_error(e) from e
            try:
                if resp.status_code >= 400:
                    raise http_error(resp.status_code, await resp.aread(), resp.headers)
                decoder = SSEDecoder()
                async for raw in resp.aiter_bytes():
                    for item in decoder.feed(raw):
                        yield item
                for item in decoder.flush():
                    yield item
            except httpx.HTTPError as e:
                raise transport_error(e) from e
            finally:
                await resp.aclose()


class Pools:
    """A provider's keep-alive connections, made once for the process (no client per request), split
    over a few small httpx pools: httpcore's bookkeeping costs grow with the square of a pool's
    connections, which shows at hundreds of concurrent streams. The least busy pool serves."""

    def __init__(self, max_connections: int, headers: dict[str, str]) -> None:
        count = max(1, -(-max_connections // POOL_SIZE))
        limits = httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE, keepalive_expiry=60)
        self.clients = [httpx.AsyncClient(limits=limits, headers=headers, follow_redirects=False)
                        for _ in range(count)]
        self.busy = [0] * count

    @contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        i = min(range(len(self.busy)), key=self.busy.__getitem__)
        self.busy[i] += 1
        try:
            yield self.clients[i]
        finally:
            self.busy[i] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def transport_error(e: httpx.HTTPError) -> UpstreamError:
    if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
        return UpstreamError(f"upstream timed out ({type(e).__name__})", None, "timeout")
    return UpstreamError(f"upstream connection failed ({type(e).__name__})", None, "connect")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def http_error(status: int, content: bytes, headers: httpx.Headers) -> UpstreamError:
    try:
        body = json.loads(content or b"null")
    except ValueError:
        body = content.decode(errors="replace")[:500]
    message = _message_of(body) or f"upstream returned HTTP {status}"
    kind = "context_window" if status in (400, 413) and any(m in message.lower() for m in CONTEXT_MARKERS) else "http"
    if isinstance(body, dict) and "context_length_exceeded" in json.dumps(body):
        kind = "context_window"
    retry = parse_retry_after(headers.get("retry-after"))
    if retry is None and headers.get("retry-after-ms"):
        retry = float(headers["retry-after-ms"]) / 1000
    return UpstreamError(message, status, kind, retry, body)


def _message_of(body: Any) -> str | None:
    """OpenAI {"error": {"message"}}, Anthropic {"error": {"message"}}, Gemini {"error": {"message"}}, Cog {"detail"}."""
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            return str(msg) if msg else None
        if isinstance(err, str):
            return err
    if isinstance(body, str):
        return body or None
    return None
