"""POST /ai/run/{model_string}: one call for any model, its own inputs in, its output out.

Body: the model's inputs, either bare (`{"prompt": "hi"}`) or wrapped (`{"input": {...}}`), plus
`"stream": true` for server-sent events and `"metadata": {...}` for spend reports. Platform models
(`@ns/model`) get the inputs as they are; chat models take `messages` (OpenAI format) or `prompt`
(+ `system`), with any other chat parameter (max_tokens, tools, ...).

Answer: `{"id", "model", "provider", "output", "usage", ...}`. Stream: first `event: start`
(`{"id", "model", "provider", "cogkit_stream_id"}`), then `event: output` per piece of output,
`event: logs` for a platform model's logs, then `event: completed` with the same envelope as the
JSON answer, or `event: error`.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import check_files, read_body, validate
from server.api.deps import api_error
from server.relays import ChatRunRelay, PlatformRunRelay, chat_envelope, platform_envelope
from server.wire.run import RunChatInputs

router = APIRouter()
CHAT_KEYS = ("messages", "prompt", "system")


def chat_request(inputs: dict, model: str) -> dict:
    """A chat model's inputs -> a canonical chat request."""
    req = {k: v for k, v in inputs.items() if k not in CHAT_KEYS}
    messages = list(inputs.get("messages") or [])
    if not messages and inputs.get("prompt") is not None:
        messages = [{"role": "user", "content": str(inputs["prompt"])}]
    if inputs.get("system") and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": inputs["system"]})
    return {**req, "model": model, "messages": messages}


@router.post("/ai/run/{model:path}")
async def run(request: Request, model: str) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await read_body(request)
    stream = bool(body.pop("stream", False))
    call = gw.new_call(request, "run", model, key, body, stream)
    wrapped = isinstance(body.get("input"), dict)
    inputs = body["input"] if wrapped else body
    check_files(request, inputs)
    if call.resolved.kind == "platform":
        if stream:
            return await gw.serve(request, key, call, "run", inputs, relay=lambda: PlatformRunRelay(call))
        return await gw.serve(request, key, call, "run", inputs, shape=lambda p: platform_envelope(call, p))
    if call.resolved.kind != "chat":
        raise api_error(request, 400, f"{model} is a {call.resolved.kind} model: use its OpenAI-compatible endpoint")
    validate(request, RunChatInputs, inputs, ("input",) if wrapped else ())
    req = chat_request(inputs, model)
    if not req["messages"]:
        raise api_error(request, 422, "input: a chat model needs `messages` or `prompt`", param="input")
    if stream:
        return await gw.serve(request, key, call, "chat", req, relay=lambda: ChatRunRelay(call))
    return await gw.serve(request, key, call, "chat", req, shape=lambda r: chat_envelope(call, r))
