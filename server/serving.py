"""Serving an admitted request: route it (server/router.py), then answer it as JSON or start its
resumable stream (server/streams.py through the caller's relay), with the x-cogkit-* headers; every
failure comes back in the caller's format, and every way out ends in exactly one `billing.finish`."""
from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from server.admission import Admission
from server.api.deps import api_error, error_body, error_response
from server.auth import KeyInfo
from server.billing import Billing
from server.call import Call
from server.catalog import Catalog, UnknownModel
from server.metrics import Metrics
from server.platform.service import CURRENT_CALL, NotDeployed, Platform
from server.providers import Provider, Unsupported, UpstreamError
from server.providers.base import Op, StreamOp
from server.recovery import stream_meta
from server.relays import Relay
from server.router import ResponseCache, Router
from server.status import CANCELED, ERROR, OK, Status
from server.streams import Streams
from server.usage import estimate_output, of_result


class Serving:
    def __init__(self, catalog: Catalog, router: Router, providers: dict[str, Provider], streams: Streams,
                 admission: Admission, billing: Billing, metrics: Metrics, cache: ResponseCache | None,
                 platform: Platform) -> None:
        self.catalog, self.router, self.providers, self.streams = catalog, router, providers, streams
        self.admission, self.billing, self.metrics, self.cache = admission, billing, metrics, cache
        self.platform = platform

    def new_call(self, request: Request, endpoint: str, model: str, key: KeyInfo, body: dict, stream: bool) -> Call:
        call = Call(request_id="req_" + secrets.token_hex(16), endpoint=endpoint, model=model, tenant_id=key.tenant_id,
                    key_id=key.id, metadata=caller_metadata(request, body), stream=stream)
        try:   # platform models first; else the catalog (UnknownModel -> 404 with suggestions)
            call.resolved = self.platform.resolve(model, key.tenant_id) or self.catalog.resolve(model)
        except NotDeployed as e:
            raise api_error(request, e.status, e.message, code="model_not_deployed") from None
        CURRENT_CALL.set(call)                           # the platform notes its cold start on it
        return call

    async def serve(self, request: Request, key: KeyInfo, call: Call, op: Op, payload: dict,
                    shape: Callable[[Any], Any] | None = None,
                    relay: Callable[[], Relay] | None = None) -> Response:
        """Admit and run one call: a JSON answer (`shape` turns the canonical result into the caller's
        format), or, with `relay`, a buffered resumable stream. Errors come back in the caller's format."""
        await self.admission.admit(call, key, payload)
        try:
            if relay is None:
                return await self._complete(call, key, op, payload, shape or (lambda r: r))
            if op == "embeddings":
                raise Unsupported("embeddings are not streamed")
            return await self._stream(call, key, op, payload, relay)
        except UpstreamError as e:
            self.billing.finish(call, key, ERROR, e.message)
            headers = self.headers(call)
            if e.status in (429, 503) and e.retry_after is not None:
                headers["retry-after"] = str(max(1, round(e.retry_after)))
            return error_response(request, e.client_status(), e.message, headers=headers)
        except Unsupported as e:
            self.billing.finish(call, key, ERROR, str(e))
            return error_response(request, 400, str(e), headers=self.headers(call))
        except UnknownModel as e:   # a context-window fallback that names no model
            self.billing.finish(call, key, ERROR, str(e))
            return error_response(request, 404, str(e), code="model_not_found")
        except asyncio.CancelledError:     # the client went away before the answer
            self.billing.finish(call, key, CANCELED, "client disconnected")
            raise
        except BaseException:
            self.billing.finish(call, key, ERROR, "internal error")
            raise

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

    def unknown_model(self, request: Request, e: UnknownModel) -> JSONResponse:
        body = error_body(request, 404, str(e), code="model_not_found")
        (body.get("error") or body)["suggestions"] = e.suggestions
        return JSONResponse(body, status_code=404)

    async def _complete(self, call: Call, key: KeyInfo, op: Op, payload: dict, shape: Callable[[Any], Any]) -> Response:
        cache_key = None
        if self.cache is not None and call.endpoint != "run":
            cache_key = self.cache.key(call.tenant_id, call.endpoint, call.model, payload)
            hit = self.cache.get(cache_key)
            if hit is not None:
                call.cached, call.input_tokens = True, 0
                self.metrics.cache_hits.inc()
                response = JSONResponse(shape(hit[0]), headers={**self.headers(call), "x-cogkit-provider": hit[1]})
                self.billing.finish(call, key, OK)
                return response
        result = await self.router.complete(call, op, payload)
        counted = of_result(result)
        if counted is not None:
            call.input_tokens, call.output_tokens = counted
        elif op != "run":
            call.output_tokens = estimate_output(result)
        if self.cache is not None and cache_key is not None and call.target is not None:
            self.cache.put(cache_key, result, call.target.provider)
        response = JSONResponse(shape(result), headers=self.headers(call))
        self.billing.finish(call, key, OK)
        return response

    async def _stream(self, call: Call, key: KeyInfo, op: StreamOp, payload: dict,
                      make_relay: Callable[[], Relay]) -> Response:
        upstream = await self.router.open_stream(call, op, payload)
        relay = make_relay()

        async def on_done(status: Status, error: str | None) -> None:
            call.input_tokens, call.output_tokens = relay.meter.tokens(call.input_tokens)
            self.billing.finish(call, key, status, error)

        buf = self.streams.start(call.tenant_id, self.providers[upstream.target.provider].timeouts, relay,
                                 upstream, on_done, stream_meta(call))
        call.stream_id = buf.id
        if call.reservation is not None and call.reservation.micros:
            await self.streams.persist(buf)    # credit is held: settleable after a crash from the first byte
        return EventStream(self.streams.follow(buf), headers={**self.headers(call), "cache-control": "no-cache"})


class EventStream(Response):
    """A live stream's SSE response: the buffer's events (Streams.follow), written as they come. Unlike
    Starlette's StreamingResponse it starts no task group with a second task listening for the client's
    disconnect (measured: anyio's task group and cancel scopes were ~5 % of the gateway's CPU under
    streaming load). Nothing needs that watcher here: the pump reads the upstream to its end whether
    or not the client stays (server/streams.py), a write to a closed connection is dropped by the
    server, and a follower whose client left ends with its stream, which the stream's timeouts bound.
    The last events go out with the end of the body, in one write rather than two."""
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[tuple[bytes, bool]], headers: dict[str, str]) -> None:
        self.events = events
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        ended = False
        async for chunk, last in self.events:     # (to its end: a generator left open is closed by a task)
            await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            ended = last
        if not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


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
