"""OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.
Clients authenticate with `Authorization: Bearer <gateway key>`, as the OpenAI SDK sends it."""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.app import read_body
from server.api.deps import error_response
from server.streams import Event, Relay
from server.wire.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

router = APIRouter()


class OpenAIRelay(Relay):
    """Canonical chunks pass through as they are; `data: [DONE]` at the end. A failure after the
    first token ends the stream with a chunk whose finish_reason is "error" and an `error` object."""
    format = "openai"

    def __init__(self, include_usage: bool, completion: bool = False) -> None:
        super().__init__()
        self.include_usage, self.completion = include_usage, completion
        self.id, self.model, self.created = "", "", int(time.time())

    def events(self, chunk: dict) -> list[Event]:
        self.observe(chunk)
        if not self.id:
            self.id, self.model, self.created = chunk.get("id", ""), chunk.get("model", ""), chunk.get("created", 0)
        if not chunk.get("choices") and chunk.get("usage") and not self.include_usage:
            return []   # the usage chunk we asked for; a client that didn't would trip on `choices: []`
        return [(None, chunk)]

    def end(self) -> list[Event]:
        return [(None, "[DONE]")]

    def fail(self, message: str, kind: str) -> list[Event]:
        choice = ({"index": 0, "text": "", "logprobs": None, "finish_reason": "error"} if self.completion
                  else {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "error"})
        chunk = {"id": self.id, "object": "text_completion" if self.completion else "chat.completion.chunk",
                 "created": self.created, "model": self.model, "choices": [choice],
                 "error": {"message": message, "type": "upstream_error", "code": kind}}
        if self.include_usage and self.usage:
            chunk["usage"] = self.usage
        return [(None, chunk), (None, "[DONE]")]


async def _openai_call(request: Request, endpoint: str, wire: type) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await read_body(request, wire)
    stream = bool(body.get("stream")) and endpoint != "embeddings"
    call = gw.new_call(request, endpoint, body["model"], key, body, stream)
    if call.resolved.kind == "platform" and not (endpoint == "chat" and gw.platform.owns(call)):
        return error_response(request, 400, f"{call.model} is a platform model: call POST /ai/run/{call.model}")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    relay = (lambda: OpenAIRelay(include_usage, completion=endpoint == "completions")) if stream else None
    return await gw.serve(request, key, call, endpoint, body, relay=relay)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _openai_call(request, "chat", ChatCompletionRequest)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _openai_call(request, "completions", CompletionRequest)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await _openai_call(request, "embeddings", EmbeddingRequest)


@router.get("/v1/models")
async def models(request: Request) -> dict:
    gw = request.app.state.gateway
    await gw.authenticate(request)
    return {"object": "list", "data": gw.catalog.listing()}


@router.get("/v1/models/{model:path}")
async def model(request: Request, model: str) -> dict:
    gw = request.app.state.gateway
    await gw.authenticate(request)
    resolved = gw.catalog.resolve(model)
    for entry in gw.catalog.listing():
        if entry["id"] == resolved.name:
            return entry
    return {"id": resolved.name, "object": "model", "created": 0, "owned_by": resolved.targets[0].provider}
