"""OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.
Clients authenticate with `Authorization: Bearer <gateway key>`, as the OpenAI SDK sends it."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import openapi_body, read_body
from server.api.deps import error_response
from server.relays import OpenAIRelay
from server.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter()          # the POSTs: mounted first (server/app.py)
models_router = APIRouter()   # GET /v1/models...: mounted after the platform's own /v1/models/{ns}/{name} routes


async def _openai_call(request: Request, endpoint: str, wire: type) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await read_body(request, wire)
    stream = bool(body.get("stream")) and endpoint != "embeddings"
    call = gw.new_call(request, endpoint, body["model"], key, body, stream)
    if call.resolved.kind == "platform" and not (endpoint == "chat" and gw.platform.owns(call)):
        return error_response(request, 400, f"{call.model} is a platform model: call POST /ai/run/{call.model}")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    # `x-cogkit-sse: data-only`: `data:` lines only, for SSE readers that take every line for data (vLLM's
    # benchmark client); such a stream is resumed by ?from=N, not Last-Event-ID.
    data_only = request.headers.get("x-cogkit-sse") == "data-only"

    def relay() -> OpenAIRelay:
        made = OpenAIRelay(include_usage, completion=endpoint == "completions")
        made.data_only = data_only
        return made
    return await gw.serve(request, key, call, endpoint, body, relay=relay if stream else None)


@router.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await _openai_call(request, "chat", ChatCompletionRequest)


@router.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
async def completions(request: Request) -> Response:
    return await _openai_call(request, "completions", CompletionRequest)


@router.post("/v1/embeddings", openapi_extra=openapi_body(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    return await _openai_call(request, "embeddings", EmbeddingRequest)


@models_router.get("/v1/models")
async def models(request: Request) -> dict:
    gw = request.app.state.gateway
    await gw.authenticate(request)
    return {"object": "list", "data": gw.catalog.listing()}


@models_router.get("/v1/models/{model:path}")
async def model(request: Request, model: str) -> dict:
    gw = request.app.state.gateway
    await gw.authenticate(request)
    resolved = gw.catalog.resolve(model)
    for entry in gw.catalog.listing():
        if entry["id"] == resolved.name:
            return entry
    return {"id": resolved.name, "object": "model", "created": 0, "owned_by": resolved.targets[0].provider}
