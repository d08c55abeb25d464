"""What every upstream kind shares: one pooled HTTP client, error mapping, SSE reading.

The client is the gateway's own (server/providers/http1.py, which says why: measured, aiohttp
took twice its CPU per streamed request, and httpx before it about a third of the gateway's).

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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

from server.config import ProviderConfig, Timeouts
from server.jsonio import dumps, loads
from server.providers.http1 import Pool, TimedOut, Timeout, TransportError
from server.translate import StreamError
from server.translate.sse import SSEDecoder

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
        self.pool = Pool(cfg.max_connections, cfg.headers)

    async def aclose(self) -> None:
        await self.pool.aclose()

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

    async def count_tokens(self, req: dict, model: str, t: Timeouts, anthropic_body: dict | None = None) -> int | None:
        """Input tokens of a canonical request by the provider's own count, where it offers one (None:
        it offers none). `anthropic_body`: the client's Anthropic request, for a passthrough."""
        return None

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
    def plain_timeout(t: Timeouts) -> Timeout:
        return Timeout(connect=t.connect, total=t.total)

    @staticmethod
    def stream_timeout(t: Timeouts) -> Timeout:
        # The router bounds the first token (ttft) and the stream buffer the gaps (idle) and the total;
        # this read timeout is only the backstop for a socket that goes silent.
        return Timeout(connect=t.connect, read=max(t.ttft, t.idle))

    async def post_json(self, url: str, body: dict, headers: dict, t: Timeouts) -> dict:
        content, status, resp_headers = await self.fetch("POST", url, dumps(body), {**headers, **JSON}, t)
        if status >= 400:
            raise http_error(status, content, resp_headers)
        try:
            result: dict = loads(content)
        except ValueError as e:
            raise UpstreamError(f"{self.name}: upstream sent invalid JSON", status, "http") from e
        return result

    async def fetch(self, method: str, url: str, body: bytes | None, headers: dict,
                    t: Timeouts) -> tuple[bytes, int, dict[str, str]]:
        """One plain exchange: (body, status, headers); transport failures as UpstreamError."""
        try:
            async with await self.pool.request(method, url, body, headers, self.plain_timeout(t)) as resp:
                return await resp.read(), resp.status, resp.headers
        except TransportError as e:
            raise transport_error(e) from e

    async def translated_stream(self, url: str, body: dict, translator: Any, t: Timeouts) -> AsyncIterator[dict]:
        """An upstream SSE stream in another format, as canonical chunks through `translator`."""
        try:
            async for event, data in self.sse(url, body, await self._headers(), t):
                try:
                    payload = loads(data)
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
        try:
            async with await self.pool.request("POST", url, dumps(body), {**headers, **JSON},
                                               self.stream_timeout(t)) as resp:
                if resp.status >= 400:
                    raise http_error(resp.status, await resp.read(), resp.headers)
                decoder = SSEDecoder()
                while raw := await resp.receive():
                    for item in decoder.feed(raw):
                        yield item
                for item in decoder.flush():
                    yield item
        except TransportError as e:
            raise transport_error(e) from e


JSON = {"content-type": "application/json"}


def transport_error(e: TransportError) -> UpstreamError:
    """A failure of the connection itself: an answer that stopped coming, or anything else (refused,
    reset, closed mid-answer, a connect timeout: the next deployment may well answer)."""
    if isinstance(e, TimedOut):
        return UpstreamError(f"upstream timed out ({e})", None, "timeout")
    return UpstreamError(f"upstream connection failed ({e})", None, "connect")


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def http_error(status: int, content: bytes, headers: Mapping[str, str]) -> UpstreamError:
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
