"""Anthropic-compatible API: POST /v1/messages (streaming too), for any model in the catalog.
Clients authenticate with `x-api-key: <gateway key>`, as the Anthropic SDK sends it."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.api.body import read_body, validate
from server.api.deps import error_response
from server.providers import UpstreamError
from server.redact import redact
from server.relays import AnthropicRelay
from server.translate.anthropic import (
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from server.usage import estimate_input
from server.wire.anthropic import MessagesRequest

router = APIRouter()


@router.post("/v1/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    """Input tokens of a Messages request, for any model: passed through to an Anthropic deployment,
    else the provider's own count where it offers one (Gemini's countTokens), else the gateway's
    estimate (CHARS_PER_TOKEN characters per token of the JSON of the messages, as for credit holds).
    `x-cogkit-token-count` says which: "provider" or "estimate"."""
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await read_body(request)
    validate(request, MessagesRequest, {"max_tokens": 1, **body})     # max_tokens is not sent to count_tokens
    canonical = anthropic_to_openai_request({"max_tokens": 1, **body})
    call = gw.new_call(request, "count_tokens", body["model"], key, body, False)
    for target in call.resolved.targets:
        provider = gw.providers[target.provider]
        try:
            counted = await provider.count_tokens(canonical, target.upstream_model, provider.timeouts,
                                                  body if provider.kind == "anthropic" else None)
        except UpstreamError as e:
            if not e.retryable:
                return error_response(request, e.client_status(), redact(e.message, provider.secrets()))
            continue                # this deployment cannot count now: the next one, or the estimate
        if counted is not None:
            return JSONResponse({"input_tokens": counted},
                                headers={"x-cogkit-token-count": "provider", "x-cogkit-provider": target.provider})
    return JSONResponse({"input_tokens": estimate_input(canonical)}, headers={"x-cogkit-token-count": "estimate"})


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
