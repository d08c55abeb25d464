"""Canonical (OpenAI chat completions) <-> Anthropic Messages. Pure functions, no I/O."""
from __future__ import annotations

import json

from server.translate import (
    ANTHROPIC_TO_OPENAI_STOP,
    OPENAI_TO_ANTHROPIC_STOP,
    StreamError,
    chunk,
    loads_args,
    new_id,
    now,
    openai_usage,
    parse_data_url,
    text_of,
)

DEFAULT_MAX_TOKENS = 4096    # Anthropic requires max_tokens; OpenAI clients often leave it out
ERROR_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
                "api_error": 500, "overloaded_error": 529}


# ---------------------------------------------------------------- canonical -> Anthropic upstream
def _image_block(url: str) -> dict:
    data_url = parse_data_url(url)
    if data_url:
        return {"type": "image", "source": {"type": "base64", "media_type": data_url[0], "data": data_url[1]}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content) -> list[dict]:
    """OpenAI message content -> Anthropic content blocks (empty text dropped: Anthropic rejects it)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out = []
    for part in content:
        kind = part.get("type")
        if kind == "text" and part.get("text"):
            block = {"type": "text", "text": part["text"]}
            if part.get("cache_control"):
                block["cache_control"] = part["cache_control"]
            out.append(block)
        elif kind == "image_url":
            image = part["image_url"]
            out.append(_image_block(image if isinstance(image, str) else image["url"]))
    return out


def openai_to_anthropic_request(req: dict, upstream_model: str) -> dict:
    system: list[dict] = []
    messages: list[dict] = []

    def add(role: str, blocks: list[dict]) -> None:
        # Anthropic wants alternating turns and every tool_result of a turn in one user message.
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for msg in req.get("messages", []):
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_blocks(msg.get("content")))
        elif role == "user":
            add("user", _blocks(msg.get("content")))
        elif role == "assistant":
            blocks = _blocks(msg.get("content"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function", {})
                blocks.append({"type": "tool_use", "id": call["id"], "name": fn.get("name", ""),
                               "input": loads_args(fn.get("arguments"))})
            add("assistant", blocks)
        elif role == "tool":
            content = msg.get("content")
            result = content if isinstance(content, str) else _blocks(content)
            add("user", [{"type": "tool_result", "tool_use_id": msg.get("tool_call_id", ""), "content": result}])

    out: dict = {"model": upstream_model, "messages": messages,
                 "max_tokens": req.get("max_completion_tokens") or req.get("max_tokens") or DEFAULT_MAX_TOKENS}
    if system:
        plain = all(set(b) == {"type", "text"} for b in system)
        out["system"] = "\n\n".join(b["text"] for b in system) if plain else system
    if req.get("temperature") is not None:
        out["temperature"] = min(req["temperature"], 1.0)    # OpenAI allows 0..2, Anthropic 0..1
    if req.get("top_p") is not None:
        out["top_p"] = req["top_p"]
    stop = req.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if req.get("stream"):
        out["stream"] = True
    if req.get("user"):
        out["metadata"] = {"user_id": req["user"]}
    if req.get("tools"):
        out["tools"] = [{"name": t["function"]["name"],
                         "description": t["function"].get("description", ""),
                         "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}}}
                        for t in req["tools"] if t.get("type", "function") == "function"]
    choice = req.get("tool_choice")
    tool_choice = None
    if choice == "auto":
        tool_choice = {"type": "auto"}
    elif choice == "required":
        tool_choice = {"type": "any"}
    elif choice == "none":
        tool_choice = {"type": "none"}
    elif isinstance(choice, dict):
        tool_choice = {"type": "tool", "name": choice.get("function", {}).get("name", "")}
    if req.get("parallel_tool_calls") is False and out.get("tools"):
        tool_choice = tool_choice or {"type": "auto"}
        if tool_choice["type"] != "none":
            tool_choice["disable_parallel_tool_use"] = True
    if tool_choice and out.get("tools"):
        out["tool_choice"] = tool_choice
    return out


def _usage_from_anthropic(usage: dict) -> dict:
    """Anthropic counts cached input separately; OpenAI's prompt_tokens includes it."""
    inp = usage.get("input_tokens") or 0
    created = usage.get("cache_creation_input_tokens") or 0
    read = usage.get("cache_read_input_tokens") or 0
    return openai_usage(inp + created + read, usage.get("output_tokens") or 0, cached=read,
                        cache_creation_input_tokens=created, cache_read_input_tokens=read)


def anthropic_to_openai_response(resp: dict, model: str) -> dict:
    texts, thinking, calls = [], [], []
    for block in resp.get("content", []):
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "thinking":
            thinking.append(block.get("thinking", ""))
        elif kind == "tool_use":
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": json.dumps(block.get("input", {}))}})
    message: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    return {"id": resp.get("id") or new_id("chatcmpl-"), "object": "chat.completion", "created": now(),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": ANTHROPIC_TO_OPENAI_STOP.get(resp.get("stop_reason"), "stop")}],
            "usage": _usage_from_anthropic(resp.get("usage") or {})}


class AnthropicToOpenAIStream:
    """Upstream Anthropic SSE events -> canonical chunks. The last chunk (on message_stop) is the
    usage chunk (`choices: []`). An `error` event raises StreamError; call finish() when the
    upstream body ends: it raises StreamError if message_stop never came."""

    def __init__(self, model: str, response_id: str) -> None:
        self.model, self.id, self.created = model, response_id, now()
        self.usage: dict | None = None
        self.done = False
        self._raw_usage: dict = {}
        self._tools: dict[int, int] = {}       # Anthropic block index -> OpenAI tool_calls index

    def _chunk(self, delta=None, finish=None, usage=None) -> dict:
        return chunk(self.id, self.model, self.created, delta, finish, usage)

    def feed(self, event: str | None, data: dict) -> list[dict]:
        kind = data.get("type") or event
        if kind == "message_start":
            self._raw_usage.update((data.get("message") or {}).get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools[data["index"]] = len(self._tools)
                args = json.dumps(block["input"]) if block.get("input") else ""
                return [self._chunk({"tool_calls": [{"index": index, "id": block["id"], "type": "function",
                                                     "function": {"name": block["name"], "arguments": args}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                index = self._tools.get(data.get("index"), 0)
                return [self._chunk({"tool_calls": [{"index": index,
                                                     "function": {"arguments": delta["partial_json"]}}]})]
            if delta.get("type") == "thinking_delta":
                return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
            return []
        if kind == "message_delta":
            # message_delta usage is cumulative; newer APIs repeat input/cache counts in it too.
            self._raw_usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            self.usage = _usage_from_anthropic(self._raw_usage)
            reason = (data.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, ANTHROPIC_TO_OPENAI_STOP.get(reason, "stop"))]
        if kind == "message_stop":
            self.done = True
            self.usage = _usage_from_anthropic(self._raw_usage)
            return [self._chunk(usage=self.usage)]
        if kind == "error":
            err = data.get("error") or {}
            etype = err.get("type", "api_error")
            raise StreamError(err.get("message", "upstream stream error"), etype, ERROR_STATUS.get(etype, 500))
        return []   # ping, content_block_stop, unknown future events

    def finish(self) -> list[dict]:
        if not self.done:
            raise StreamError("upstream stream ended before message_stop", "api_error", 502)
        return []


# ---------------------------------------------------------------- Anthropic client -> canonical
def _parts(blocks: list[dict]) -> list[dict]:
    parts = []
    for block in blocks:
        if block.get("type") == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif block.get("type") == "image":
            src = block.get("source") or {}
            url = src.get("url") if src.get("type") == "url" else f"data:{src.get('media_type')};base64,{src.get('data')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _content(blocks: list[dict]):
    """Plain string when the blocks are text only (the widest accepted form), else parts."""
    parts = _parts(blocks)
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def anthropic_to_openai_request(req: dict) -> dict:
    messages: list[dict] = []
    system = req.get("system")
    if system:
        if not isinstance(system, str):   # keep blocks as text parts (cache_control survives)
            system = [{k: v for k, v in b.items() if k in ("type", "text", "cache_control")} for b in system]
        messages.append({"role": "system", "content": system})
    for msg in req.get("messages", []):
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
        if msg.get("role") == "assistant":
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            calls = [{"id": b["id"], "type": "function",
                      "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))}}
                     for b in blocks if b.get("type") == "tool_use"]
            out: dict = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                out["tool_calls"] = calls
            messages.append(out)
            continue
        # Tool results become tool messages, which OpenAI wants right after the assistant turn.
        for b in blocks:
            if b.get("type") == "tool_result":
                result = b.get("content")
                text = result if isinstance(result, str) else text_of(result or [])
                messages.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""), "content": text})
        rest = [b for b in blocks if b.get("type") in ("text", "image")]
        if rest:
            messages.append({"role": "user", "content": _content(rest)})

    out = {"model": req.get("model"), "messages": messages, "max_tokens": req.get("max_tokens")}
    for key in ("temperature", "top_p"):
        if req.get(key) is not None:
            out[key] = req[key]
    if req.get("stop_sequences"):
        out["stop"] = list(req["stop_sequences"])
    if req.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}   # Anthropic clients always get usage
    user = (req.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if req.get("tools"):
        out["tools"] = [{"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""),
            "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}}
            for t in req["tools"] if "name" in t]
    choice = req.get("tool_choice")
    if choice:
        kind = choice.get("type")
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or \
            {"type": "function", "function": {"name": choice.get("name", "")}}
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


def _usage_to_anthropic(usage: dict | None) -> dict:
    usage = usage or {}
    read = usage.get("cache_read_input_tokens") or (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    created = usage.get("cache_creation_input_tokens") or 0
    return {"input_tokens": max((usage.get("prompt_tokens") or 0) - read - created, 0),
            "cache_creation_input_tokens": created, "cache_read_input_tokens": read,
            "output_tokens": usage.get("completion_tokens") or 0}


def _msg_id(resp_id: str | None) -> str:
    return resp_id if resp_id and resp_id.startswith("msg_") else new_id("msg_")


def openai_to_anthropic_response(resp: dict, model: str) -> dict:
    choice = (resp.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": text_of(message["content"])})
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        content.append({"type": "tool_use", "id": call["id"], "name": fn.get("name", ""),
                        "input": loads_args(fn.get("arguments"))})
    return {"id": _msg_id(resp.get("id")), "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": OPENAI_TO_ANTHROPIC_STOP.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None, "usage": _usage_to_anthropic(resp.get("usage"))}


class OpenAIToAnthropicStream:
    """Canonical chunks -> (event, data) pairs for an Anthropic-format client. Call finish() at the
    end (or finish(error) to close with `event: error`)."""

    def __init__(self, model: str, message_id: str | None = None) -> None:
        self.model, self.id = model, _msg_id(message_id)
        self._started = False
        self._open: tuple[str, int] | None = None      # (kind, Anthropic index) of the open block
        self._next = 0
        self._tools: dict[int, int] = {}               # OpenAI tool index -> Anthropic block index
        self._stop = "end_turn"
        self._usage: dict | None = None

    def _start(self) -> list[tuple[str, dict]]:
        if self._started:
            return []
        self._started = True
        usage = _usage_to_anthropic(self._usage)
        usage["output_tokens"] = 0
        return [("message_start", {"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})]

    def _close(self) -> list[tuple[str, dict]]:
        if self._open is None:
            return []
        index, self._open = self._open[1], None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open_block(self, kind: str, block: dict) -> list[tuple[str, dict]]:
        events = self._close()
        self._open, self._next = (kind, self._next), self._next + 1
        events.append(("content_block_start", {"type": "content_block_start", "index": self._open[1],
                                               "content_block": block}))
        return events

    def feed(self, chunk: dict) -> list[tuple[str, dict]]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        events = self._start()
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue       # Anthropic has one candidate
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self._open is None or self._open[0] != "text":
                    events += self._open_block("text", {"type": "text", "text": ""})
                events.append(("content_block_delta", {"type": "content_block_delta", "index": self._open[1],
                                                       "delta": {"type": "text_delta", "text": delta["content"]}}))
            for call in delta.get("tool_calls") or []:
                idx = call.get("index", 0)
                fn = call.get("function") or {}
                if idx not in self._tools:
                    events += self._open_block("tool", {"type": "tool_use", "id": call.get("id") or new_id("toolu_"),
                                                        "name": fn.get("name", ""), "input": {}})
                    self._tools[idx] = self._open[1]
                if fn.get("arguments"):
                    events.append(("content_block_delta", {
                        "type": "content_block_delta", "index": self._tools[idx],
                        "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))
            if choice.get("finish_reason"):
                self._stop = OPENAI_TO_ANTHROPIC_STOP.get(choice["finish_reason"], "end_turn")
        return events

    def finish(self, error: dict | None = None) -> list[tuple[str, dict]]:
        if error is not None:
            etype = error.get("type") if error.get("type") in ERROR_STATUS else "api_error"
            return [("error", {"type": "error", "error": {"type": etype,
                                                          "message": error.get("message", "upstream error")}})]
        events = self._start() + self._close()
        usage = _usage_to_anthropic(self._usage)
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": self._stop, "stop_sequence": None},
                                         "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events
