"""The app factory and the Gateway: the shared objects every router uses
(`request.app.state.gateway`), and one request's life: authenticate, resolve the model,
admit (rate limit, credit reservation), call through the router, bill after the response."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from server.api.deps import (
    api_error,
    error_body,
    error_response,
    install_error_handlers,
    presented_key,
    require_key,
)
from server.auth import Auth, KeyInfo
from server.catalog import Catalog, UnknownModel
from server.config import GatewayConfig
from server.ledger import Ledger, Reservation, UsageRecord
from server.logs import log_call, setup_logging
from server.metrics import Metrics
from server.platform.engine_vllm import VllmProvider
from server.platform.provider import ManagedProvider
from server.platform.service import CURRENT_CALL, NotDeployed, Platform
from server.platform.service import PROVIDER as PLATFORM_PROVIDER
from server.platform.vllm import VLLM_PROVIDER
from server.providers import Provider, Unsupported, UpstreamError, make_provider
from server.router import Call, ResponseCache, Router
from server.store import Store
from server.store.streams import StreamRepo
from server.streams import Relay, Streams

CHARS_PER_TOKEN = 4           # the gateway's own token count, when an upstream reports none
DEFAULT_MAX_OUTPUT = 1024     # output tokens assumed for a credit reservation without max_tokens
UNLIMITED_TTL = 1.0           # seconds a tenant seen without a credit balance skips the reservation round trip
BILLING_INTERVAL = 0.02       # seconds finished requests wait to be billed together


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
        self.streams = Streams(config.streams, StreamRepo(self.store), self.metrics, self.log, self.writer)
        self.cache = ResponseCache(config.cache) if config.cache.enabled else None
        self._keys: dict[str, tuple[float, KeyInfo]] = {}     # sha256(key) -> (expires, info)
        self._unlimited: dict[str, float] = {}               # tenant -> until when it is known unlimited
        self._bills: list[tuple] = []                         # (reservation, key, output tokens, UsageRecord)

    def _secret_source(self, secret: str | None, env: str | None):
        if not secret and not env:
            return None

        async def lookup() -> str | None:
            if env and os.environ.get(env):
                return os.environ[env]
            return await asyncio.to_thread(self.auth.get_provider_secret, None, secret) if secret else None
        return lookup

    async def write(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.writer, fn, *args)

    async def startup(self) -> None:
        self.streams.start_background()
        self._bills_ready = asyncio.Event()
        self._biller_task = asyncio.create_task(self._biller())
        await self.platform.startup(self.writer)

    async def shutdown(self) -> None:
        await self.platform.shutdown()
        await self.streams.close()             # ends every stream, which queues its bill
        self._biller_task.cancel()
        await asyncio.gather(self._biller_task, return_exceptions=True)
        batch, self._bills = self._bills, []
        await self.write(self._bill, batch)
        self.writer.shutdown(wait=True)
        for provider in self.providers.values():
            await provider.aclose()
        self.store.close()

    # ---- one request ----
    async def authenticate(self, request: Request) -> KeyInfo:
        """The caller's key; a hit in this small cache costs no thread hop, a miss asks the store off the loop."""
        plaintext = presented_key(request) or ""
        digest = hashlib.sha256(plaintext.encode()).hexdigest()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            request.state.key = hit[1]
            return hit[1]
        info = await asyncio.to_thread(require_key, request)   # raises 401 in the caller's format
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[digest] = (time.monotonic() + min(self.config.auth_cache_ttl, 5.0), info)
        return info

    def new_call(self, request: Request, endpoint: str, model: str, key: KeyInfo, body: dict, stream: bool) -> Call:
        call = Call(request_id="req_" + uuid.uuid4().hex, endpoint=endpoint, model=model, tenant_id=key.tenant_id,
                    key_id=key.id, metadata=caller_metadata(request, body), stream=stream)
        try:
            call.resolved = self.platform.resolve(model, key.tenant_id) or self.catalog.resolve(model)
        except NotDeployed as e:
            raise api_error(request, e.status, e.message, code="model_not_deployed") from None
        CURRENT_CALL.set(call)                           # the platform notes its cold start on it
        return call

    async def admit(self, call: Call, key: KeyInfo, payload: dict) -> None:
        """Rate limit and credit reservation, off the event loop (raise RateLimited / InsufficientCredits)."""
        tokens_in = estimate_tokens(payload)
        max_out = payload.get("max_tokens") or payload.get("max_completion_tokens") or DEFAULT_MAX_OUTPUT
        target = call.resolved.targets[0] if call.resolved and call.resolved.targets else None
        estimate = target.cost(tokens_in, int(max_out)) if target else 0.0
        call.input_tokens = tokens_in

        now = time.monotonic()
        until = self._unlimited.get(key.tenant_id)
        if key.rpm is None and key.tpm is None and until is not None:
            if until > now:
                # Known unlimited a moment ago: nothing to hold, no store round trip on the hot path.
                # (settle still charges the spend; a balance set meanwhile applies within UNLIMITED_TTL.)
                call.reservation = Reservation(key.tenant_id, 0, limited=False)
                return
            self._unlimited[key.tenant_id] = now + UNLIMITED_TTL   # this request re-checks; the others go on

        def work():
            self.ledger.check_rate(key, tokens_in)
            return self.ledger.reserve(key.tenant_id, estimate)
        call.reservation = await self.write(work)
        if call.reservation.limited:
            self._unlimited.pop(key.tenant_id, None)
        else:
            self._unlimited[key.tenant_id] = time.monotonic() + UNLIMITED_TTL

    def finish(self, call: Call, key: KeyInfo, status: str | None = None, error: str | None = None) -> None:
        """Bill and record after the response: settle, usage row, token count; in a thread, in the background."""
        if status is not None:
            call.status = status
        if error is not None:
            call.error = error
        call.ended = time.perf_counter()
        self.metrics.observe_call(call)
        log_call(self.log, call, self.config.logging.log_prompts)
        record = UsageRecord(
            request_id=call.request_id, tenant_id=call.tenant_id, key_id=call.key_id, model=call.model,
            provider=call.target.provider if call.target else None,
            upstream_model=call.target.upstream_model if call.target else None,
            input_tokens=call.input_tokens, output_tokens=call.output_tokens, cost=call.cost(),
            latency_ms=round(call.latency_s() * 1000, 3),
            ttft_ms=round(call.ttft_s * 1000, 3) if call.ttft_s is not None else None,
            status=call.status, failovers=call.failovers, attempted=list(call.attempted),
            metadata=call.metadata, stream_id=call.stream_id)
        self._bills.append((call.reservation, key, call.output_tokens, record))
        self._bills_ready.set()

    async def _biller(self) -> None:
        """Billing after responses, batched: one thread hop for everything finished meanwhile."""
        while True:
            await self._bills_ready.wait()
            await asyncio.sleep(BILLING_INTERVAL)
            self._bills_ready.clear()
            batch, self._bills = self._bills, []
            await self.write(self._bill, batch)

    def _bill(self, batch: list) -> None:
        """In the writer thread: every request finished since the last pass, billed in one transaction
        (usage rows idempotent on request_id, settlements only for rows that were new: exactly once)."""
        if not batch:
            return
        try:
            self.ledger.bill_many([(reservation, record) for reservation, _key, _tokens, record in batch])
        except Exception:  # noqa: BLE001 - e.g. one bad row: bill them one by one, so the others still go in
            self.log.exception("billing a batch failed; billing its requests one by one")
            for reservation, _key, _tokens, record in batch:
                try:
                    self.ledger.bill_many([(reservation, record)])
                except Exception:  # noqa: BLE001 - a billing failure is logged, never raised at a finished response
                    self.log.exception("recording usage failed", extra={"fields": {"request_id": record.request_id}})
        tokens: dict[str, tuple[KeyInfo, int]] = {}     # key id -> (key, output tokens): one count per key
        for _reservation, key, output_tokens, _record in batch:
            if output_tokens and key.tpm is not None:
                tokens[key.id] = (key, tokens.get(key.id, (key, 0))[1] + output_tokens)
        for key, n in tokens.values():
            try:
                self.ledger.count_tokens(key, n)
            except Exception:  # noqa: BLE001 - a rate counter is best effort after the response
                self.log.exception("counting tokens failed", extra={"fields": {"key_id": key.id}})

    def headers(self, call: Call) -> dict[str, str]:
        call.overhead = call.overhead_ms()     # until the answer starts: streaming time is not ours
        out = {"x-cogkit-request-id": call.request_id, "x-cogkit-attempted": ",".join(call.attempted),
               "x-cogkit-overhead-ms": f"{call.overhead:.3f}"}
        if call.target is not None:
            out["x-cogkit-provider"] = call.target.provider
        if call.stream_id:
            out["x-cogkit-stream-id"] = call.stream_id
        if call.cached:
            out["x-cogkit-cache"] = "hit"
        out.update(call.extra_headers)
        return out

    async def serve(self, request: Request, key: KeyInfo, call: Call, op: str, payload: dict,
                    shape: Callable[[Any], Any] | None = None,
                    relay: Callable[[], Relay] | None = None) -> Response:
        """Run one admitted call: a JSON answer (`shape` turns the canonical result into the caller's format),
        or, with `relay`, a buffered resumable stream. Errors come back in the caller's format."""
        await self.admit(call, key, payload)
        try:
            if relay is None:
                return await self._complete(call, key, op, payload, shape or (lambda r: r))
            return await self._stream(call, key, op, payload, relay)
        except UpstreamError as e:
            self.finish(call, key, "error", e.message)
            status = e.client_status()
            headers = self.headers(call)
            if e.status in (429, 503) and e.retry_after is not None:
                headers["retry-after"] = str(max(1, round(e.retry_after)))
            return error_response(request, status, e.message, headers=headers)
        except Unsupported as e:
            self.finish(call, key, "error", str(e))
            return error_response(request, 400, str(e), headers=self.headers(call))
        except UnknownModel as e:   # a context-window fallback that names no model
            self.finish(call, key, "error", str(e))
            return error_response(request, 404, str(e), code="model_not_found")
        except asyncio.CancelledError:     # the client went away before the answer
            self.finish(call, key, "canceled", "client disconnected")
            raise
        except BaseException:
            self.finish(call, key, "error", "internal error")
            raise

    async def _complete(self, call: Call, key: KeyInfo, op: str, payload: dict, shape: Callable) -> Response:
        cache_key = None
        if self.cache is not None and call.endpoint != "run":
            cache_key = self.cache.key(call.tenant_id, call.endpoint, call.model, payload)
            hit = self.cache.get(cache_key)
            if hit is not None:
                call.cached, call.input_tokens = True, 0
                self.metrics.cache_hits.inc()
                response = JSONResponse(shape(hit[0]), headers={**self.headers(call), "x-cogkit-provider": hit[1]})
                self.finish(call, key, "ok")
                return response
        result = await self.router.complete(call, op, payload)
        input_tokens, output_tokens = usage_of(result)
        if input_tokens or output_tokens:
            call.input_tokens, call.output_tokens = input_tokens, output_tokens
        elif op != "run":
            call.output_tokens = estimate_output(result)
        if cache_key is not None:
            self.cache.put(cache_key, result, call.target.provider)
        response = JSONResponse(shape(result), headers=self.headers(call))
        self.finish(call, key, "ok")
        return response

    async def _stream(self, call: Call, key: KeyInfo, op: str, payload: dict, relay: Callable[[], Relay]) -> Response:
        head, rest = await self.router.open_stream(call, op, payload)
        target = call.target
        provider = self.providers[target.provider]
        the_relay = relay()

        async def on_done(status: str, error: str | None, r: Relay) -> None:
            if r.usage:
                call.input_tokens = r.usage.get("prompt_tokens", call.input_tokens) or call.input_tokens
                call.output_tokens = r.usage.get("completion_tokens", 0) or 0
            else:   # no usage from upstream (it broke, or never sends one): count it ourselves
                call.output_tokens = -(-r.chars // CHARS_PER_TOKEN)
            if status == "partial":
                self.router.failed(target, UpstreamError(error or "stream failed", None, "stream"))
            self.finish(call, key, "canceled" if status == "cancelled" else status, error)

        buf = self.streams.start(call.tenant_id, provider.timeouts, the_relay, head, rest, on_done)
        call.stream_id = buf.id
        return StreamingResponse(self.streams.follow(buf), media_type="text/event-stream",
                                 headers={**self.headers(call), "cache-control": "no-cache"})

    def unknown_model(self, request: Request, e: UnknownModel) -> JSONResponse:
        body = error_body(request, 404, str(e), code="model_not_found")
        (body.get("error") or body)["suggestions"] = e.suggestions
        return JSONResponse(body, status_code=404)


def caller_metadata(request: Request, body: dict) -> dict:
    """`metadata` from the body (removed: upstreams mostly reject it) or the x-cogkit-metadata JSON header."""
    meta: dict = {}
    header = request.headers.get("x-cogkit-metadata")
    if header:
        try:
            parsed = json.loads(header)
            if isinstance(parsed, dict):
                meta.update(parsed)
        except ValueError:
            pass
    value = body.pop("metadata", None)
    if isinstance(value, dict):
        meta.update(value)
    return {str(k): v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)
            for k, v in meta.items()}


def estimate_tokens(payload: dict) -> int:
    text = json.dumps(payload.get("messages") or payload.get("prompt") or payload.get("input")
                      or payload.get("system") or "", separators=(",", ":"))
    return -(-len(text) // CHARS_PER_TOKEN)


def estimate_output(result: Any) -> int:
    try:
        text = json.dumps(result.get("choices"), separators=(",", ":")) if isinstance(result, dict) else ""
    except (TypeError, ValueError):
        return 0
    return -(-len(text) // CHARS_PER_TOKEN)


def usage_of(result: Any) -> tuple[int, int]:
    """(input, output) tokens from a canonical response, an embeddings response or a prediction's metrics."""
    if not isinstance(result, dict):
        return 0, 0
    usage = result.get("usage")
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
        completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
        return int(prompt), int(completion)
    metrics = result.get("metrics")
    if isinstance(metrics, dict):
        return (int(metrics.get("input_token_count") or metrics.get("input_tokens") or 0),
                int(metrics.get("output_token_count") or metrics.get("output_tokens") or 0))
    return 0, 0


def create_app(config: GatewayConfig) -> FastAPI:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    app = FastAPI(title="cogkit gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.gateway = gateway
    install_error_handlers(app)

    from server.api import admin, anthropic, openai, run, spend, streams
    from server.platform import api_deployments, api_models, api_replicate
    for module in (api_models, api_deployments, api_replicate):   # before openai's catch-all /v1/models/{model}
        app.include_router(module.router)
    for module in (openai, anthropic, run, streams, spend, admin):
        app.include_router(module.router)

    @app.exception_handler(UnknownModel)
    async def on_unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
        return gateway.unknown_model(request, exc)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "cooling": gateway.router.cooling()}

    logging.getLogger("uvicorn.error").propagate = False
    return app


async def read_body(request: Request, wire: type | None = None) -> dict:
    """The JSON body as a dict, checked against its wire model (a bad field -> 422 naming it).
    The dict itself goes on, so fields the model doesn't know pass through untouched."""
    from pydantic import ValidationError

    from server.api.deps import api_error
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise api_error(request, 400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise api_error(request, 400, "The request body must be a JSON object.")
    if wire is not None:
        try:
            wire.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise api_error(request, 422, f"{field}: {err['msg']}", param=field) from None
    return body
