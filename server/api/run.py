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

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import check_files, read_body, validate
from server.api.deps import api_error
from server.router import Call
from server.streams import Event, Relay
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


def chat_envelope(call: Call, result: dict) -> dict:
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out = {"id": call.request_id, "model": call.model, "provider": call.target.provider if call.target else None,
           "status": "succeeded", "output": message.get("content") or "", "finish_reason": choice.get("finish_reason"),
           "usage": result.get("usage")}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def start_event(call: Call) -> list[Event]:
    """The stream's first event: who answers, and (added by Relay.tag) the stream id to resume it by."""
    return [("start", {"id": call.request_id, "model": call.model,
                       "provider": call.target.provider if call.target else None})]


def platform_envelope(call: Call, prediction: dict) -> dict:
    return {"id": call.request_id, "model": call.model, "provider": call.target.provider if call.target else None,
            "status": prediction.get("status", "succeeded"), "output": prediction.get("output"),
            "metrics": prediction.get("metrics") or {}, "logs": prediction.get("logs") or ""}


class ChatRunRelay(Relay):
    format = "run"

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call, self.text, self.finish_reason = call, [], None
        self.tool_calls: dict[int, dict] = {}

    def start(self) -> list[Event]:
        return start_event(self.call)

    def events(self, chunk: dict) -> list[Event]:
        self.observe(chunk)
        out: list[Event] = []
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.text.append(delta["content"])
                out.append(("output", json.dumps(delta["content"])))
            for tc in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(tc.get("index", 0), {"id": tc.get("id"), "type": "function",
                                                                      "function": {"name": "", "arguments": ""}})
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return out

    def end(self) -> list[Event]:
        message: dict[str, Any] = {"content": "".join(self.text)}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        result = {"choices": [{"message": message, "finish_reason": self.finish_reason}], "usage": self.usage}
        return [("completed", chat_envelope(self.call, result))]

    def fail(self, message: str, kind: str) -> list[Event]:
        return [("error", {"message": message, "code": kind, "output": "".join(self.text), "usage": self.usage})]


class PlatformRunRelay(Relay):
    """A platform model's own events (`output`, `logs`) relayed as they come."""
    format = "run"

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call, self.prediction = call, {}

    def start(self) -> list[Event]:
        return start_event(self.call)

    def events(self, item: tuple[str, Any]) -> list[Event]:
        event, data = item
        if event == "completed":
            self.prediction = data if isinstance(data, dict) else {}
            metrics = self.prediction.get("metrics") or {}
            tokens = metrics.get("output_token_count") or metrics.get("output_tokens")
            if tokens:
                self.usage = {"prompt_tokens": metrics.get("input_token_count") or 0, "completion_tokens": tokens}
            return []
        if event == "output" and isinstance(data, str):
            self.chars += len(data)
        return [(event, json.dumps(data))] if event in ("output", "logs") else []

    def end(self) -> list[Event]:
        return [("completed", platform_envelope(self.call, self.prediction or {"status": "succeeded"}))]

    def fail(self, message: str, kind: str) -> list[Event]:
        return [("error", {"message": message, "code": kind})]


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
