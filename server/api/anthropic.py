"""Anthropic-compatible API: POST /v1/messages (streaming too), for any model in the catalog.
Clients authenticate with `x-api-key: <gateway key>`, as the Anthropic SDK sends it."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import read_body
from server.api.deps import error_response
from server.relays import AnthropicRelay
from server.translate.anthropic import (
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from server.wire.anthropic import MessagesRequest

router = APIRouter()


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await read_body(request, MessagesRequest)
    canonical = anthropic_to_openai_request(body)
    stream = bool(body.get("stream"))
    call = gw.new_call(request, "messages", body["model"], key, body, stream)
    if call.resolved.kind == "platform":
        return error_response(request, 400, f"{call.model} is a platform model: call POST /ai/run/{call.model}")
    model = body["model"]
    if stream:
        return await gw.serve(request, key, call, "chat", canonical, relay=lambda: AnthropicRelay(model))
    return await gw.serve(request, key, call, "chat", canonical,
                          shape=lambda result: openai_to_anthropic_response(result, model))
