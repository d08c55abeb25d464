"""Anthropic-compatible API: POST /v1/messages (streaming too), for any model in the catalog.
Clients authenticate with `x-api-key: <gateway key>`, as the Anthropic SDK sends it."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import read_body
from server.api.deps import error_response
from server.streams import Event, Relay
from server.translate.anthropic import (
    OpenAIToAnthropicStream,
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from server.wire.anthropic import MessagesRequest

router = APIRouter()


class AnthropicRelay(Relay):
    """Canonical chunks -> Anthropic events; a failure after the first token ends with `event: error`."""
    format = "anthropic"

    def __init__(self, model: str) -> None:
        super().__init__()
        self.translator = OpenAIToAnthropicStream(model)

    def tag(self, event: str | None, data: Any, stream_id: str) -> Any:
        """The stream id goes in message_start's `message` (the SDKs keep its unknown fields)."""
        if event == "message_start" and isinstance(data, dict) and isinstance(data.get("message"), dict):
            return {**data, "message": {**data["message"], "cogkit_stream_id": stream_id}}
        return super().tag(event, data, stream_id)

    def events(self, chunk: dict) -> list[Event]:
        self.observe(chunk)
        return self.translator.feed(chunk)

    def end(self) -> list[Event]:
        return self.translator.finish()

    def fail(self, message: str, kind: str) -> list[Event]:
        etype = "overloaded_error" if kind == "timeout" else "api_error"
        return self.translator.finish({"type": etype, "message": message})


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
