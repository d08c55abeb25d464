"""The client-format relays, together: each turns canonical upstream items (OpenAI chat chunks, or a
platform model's events) into the events of one client format, and meters usage as they pass.
The stream buffer (server/streams.py) numbers, stores and fans out what a relay produces; the
relays know nothing of buffering. /ai/run's envelopes live here too: its JSON answer and its
stream's `completed` event are the same object."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from server.call import Call
from server.translate.anthropic import OpenAIToAnthropicStream
from server.translate.gemini import OpenAIToGeminiStream
from server.translate.responses import ToResponsesStream
from server.usage import Meter

Event = tuple[str | None, Any]          # (SSE event name or None, data dict or str)


class Relay:
    """Upstream items in, client-format events out. `meter` counts the usage as they pass."""
    format = "openai"
    data_only = False                   # True: events as `data:` lines only (no `id:`, no `: stream` comment)

    def __init__(self) -> None:
        self.meter = Meter()

    def start(self) -> list[Event]:
        """Events before the upstream's first item (none, but for /ai/run's `start`)."""
        return []

    def tag(self, event: str | None, data: Any, stream_id: str) -> Any:
        """The stream's first event, carrying its id in a field the format's clients keep: by default
        a top-level "cogkit_stream_id" in a JSON object (OpenAI SDKs keep unknown fields)."""
        return {**data, "cogkit_stream_id": stream_id} if isinstance(data, dict) else data

    def events(self, item: Any) -> list[Event]:
        raise NotImplementedError

    def end(self) -> list[Event]:
        raise NotImplementedError

    def fail(self, message: str, kind: str) -> list[Event]:
        raise NotImplementedError


# ---- OpenAI chat and text completions ----
class OpenAIRelay(Relay):
    """Canonical chunks pass through as they are; `data: [DONE]` at the end. A failure after the
    first token ends the stream with a chunk whose finish_reason is "error" and an `error` object."""
    format = "openai"

    def __init__(self, include_usage: bool, completion: bool = False) -> None:
        super().__init__()
        self.include_usage, self.completion = include_usage, completion
        self.id, self.model, self.created = "", "", int(time.time())

    def events(self, chunk: dict) -> list[Event]:
        self.meter.chunk(chunk)
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
        chunk: dict[str, Any] = {
            "id": self.id, "object": "text_completion" if self.completion else "chat.completion.chunk",
            "created": self.created, "model": self.model, "choices": [choice],
            "error": {"message": message, "type": "upstream_error", "code": kind}}
        if self.include_usage and self.meter.usage:
            chunk["usage"] = self.meter.usage
        return [(None, chunk), (None, "[DONE]")]


# ---- Anthropic messages ----
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
        self.meter.chunk(chunk)
        return list(self.translator.feed(chunk))

    def end(self) -> list[Event]:
        return list(self.translator.finish())

    def fail(self, message: str, kind: str) -> list[Event]:
        etype = "overloaded_error" if kind == "timeout" else "api_error"
        return list(self.translator.finish({"type": etype, "message": message}))


# ---- /ai/run ----
def chat_envelope(call: Call, result: dict) -> dict:
    """/ai/run's answer for a chat model (and its stream's `completed` event)."""
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    out = {"id": call.request_id, "model": call.model, "provider": call.target.provider if call.target else None,
           "status": "succeeded", "output": message.get("content") or "", "finish_reason": choice.get("finish_reason"),
           "usage": result.get("usage")}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    return out


def platform_envelope(call: Call, prediction: dict) -> dict:
    """/ai/run's answer for a platform model (and its stream's `completed` event)."""
    return {"id": call.request_id, "model": call.model, "provider": call.target.provider if call.target else None,
            "status": prediction.get("status", "succeeded"), "output": prediction.get("output"),
            "metrics": prediction.get("metrics") or {}, "logs": prediction.get("logs") or ""}


def start_event(call: Call) -> list[Event]:
    """The stream's first event: who answers, and (added by Relay.tag) the stream id to resume it by."""
    return [("start", {"id": call.request_id, "model": call.model,
                       "provider": call.target.provider if call.target else None})]


class ChatRunRelay(Relay):
    """A chat model on /ai/run: `output` per piece of text, then `completed` with the envelope."""
    format = "run"

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call, self.finish_reason = call, None
        self.text: list[str] = []
        self.tool_calls: dict[int, dict] = {}

    def start(self) -> list[Event]:
        return start_event(self.call)

    def events(self, chunk: dict) -> list[Event]:
        self.meter.chunk(chunk)
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
        result = {"choices": [{"message": message, "finish_reason": self.finish_reason}], "usage": self.meter.usage}
        return [("completed", chat_envelope(self.call, result))]

    def fail(self, message: str, kind: str) -> list[Event]:
        return [("error", {"message": message, "code": kind, "output": "".join(self.text),
                           "usage": self.meter.usage})]


class PlatformRunRelay(Relay):
    """A platform model's own events (`output`, `logs`) relayed as they come."""
    format = "run"

    def __init__(self, call: Call) -> None:
        super().__init__()
        self.call = call
        self.prediction: dict = {}

    def start(self) -> list[Event]:
        return start_event(self.call)

    def events(self, item: tuple[str, Any]) -> list[Event]:
        event, data = item
        if event == "completed":
            self.prediction = data if isinstance(data, dict) else {}
            self.meter.metrics(self.prediction.get("metrics") or {})
            return []
        if event == "output" and isinstance(data, str):
            self.meter.output(data)
        return [(event, json.dumps(data))] if event in ("output", "logs") else []

    def end(self) -> list[Event]:
        return [("completed", platform_envelope(self.call, self.prediction or {"status": "succeeded"}))]

    def fail(self, message: str, kind: str) -> list[Event]:
        return [("error", {"message": message, "code": kind})]


# ---- OpenAI Responses ----
class ResponsesRelay(Relay):
    """Canonical chunks -> Responses API events (response.created ... response.completed); a failure
    after the first token ends with `error` and response.failed. `on_end` gets the output items (the
    conversation kept for previous_response_id)."""
    format = "responses"

    def __init__(self, req: dict, response_id: str, model: str,
                 on_end: Callable[[list[dict]], None] | None = None) -> None:
        super().__init__()
        self.translator = ToResponsesStream(req, response_id, model)
        self.on_end = on_end

    def start(self) -> list[Event]:
        return list(self.translator.start())

    def events(self, chunk: dict) -> list[Event]:
        self.meter.chunk(chunk)
        return list(self.translator.feed(chunk))

    def end(self) -> list[Event]:
        events: list[Event] = list(self.translator.finish())
        if self.on_end is not None:
            self.on_end(self.translator.output())
        return events

    def fail(self, message: str, kind: str) -> list[Event]:
        return list(self.translator.finish({"code": kind, "message": message}))


# ---- Gemini generateContent ----
class GeminiRelay(Relay):
    """Canonical chunks -> Gemini stream chunks (SSE data only, as streamGenerateContent?alt=sse sends);
    a failure after the first token ends with a chunk holding Google's `error` object."""
    format = "gemini"
    data_only = True                    # google-genai takes any other line for data (resume with ?from=N)

    def __init__(self, model: str) -> None:
        super().__init__()
        self.translator = OpenAIToGeminiStream(model)

    def events(self, chunk: dict) -> list[Event]:
        self.meter.chunk(chunk)
        return [(None, data) for data in self.translator.feed(chunk)]

    def end(self) -> list[Event]:
        return [(None, data) for data in self.translator.finish()]

    def fail(self, message: str, kind: str) -> list[Event]:
        status = 504 if kind == "timeout" else 500
        return [(None, data) for data in self.translator.finish({"status": status, "message": message})]
