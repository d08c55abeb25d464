"""OpenAI Responses API <-> the canonical format (chat completions). Pure: dicts in, dicts out.

- request:  `input` (a string or items: messages, function_call, function_call_output), `instructions`,
  function `tools`, `tool_choice`, `max_output_tokens`, `text.format`, plus the conversation stored for
  `previous_response_id` -> a canonical chat request;
- response: a canonical chat completion -> a Response object (`output` items: a message with
  output_text, function_call items), with Responses-style `usage`;
- stream:   canonical chunks -> the typed events (response.created ... response.completed), numbered
  by `sequence_number`, each as (event name, data) with the name equal to data["type"].
"""
from __future__ import annotations

import time
from typing import Any

from server.translate import new_id, text_of

TERMINAL = ("response.completed", "response.incomplete", "response.failed")


class Untranslatable(ValueError):
    """A Responses feature with no canonical equivalent (a built-in tool, an unknown item); says which."""


# ------------------------------------------------------------------ request
def _content(content: Any, field: str) -> str | list[dict[str, Any]]:
    """Responses content parts -> chat content (a string when it is only text)."""
    if content is None or isinstance(content, str):
        return content or ""
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "refusal":
            parts.append({"type": "text", "text": part.get("refusal") or ""})
        elif kind == "input_image" and part.get("image_url"):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("auto", "low", "high"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise Untranslatable(f"{field}.{i}: content of type {kind!r} is not supported by this gateway")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`input` -> canonical messages; consecutive function_call items become one assistant message."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type") or "message"
        field = f"input.{i}"
        if kind == "message":
            role = item.get("role") or "user"
            messages.append({"role": role, "content": _content(item.get("content"), f"{field}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id") or item.get("id") or new_id("call_"), "type": "function",
                    "function": {"name": item.get("name") or "", "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") and not last.get("content"):
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item.get("call_id") or "",
                             "content": output if isinstance(output, str) else text_of(_content(output, field))})
        elif kind == "reasoning":
            continue                       # a model's own reasoning summary: nothing a chat upstream takes back
        else:
            raise Untranslatable(f"{field}: input items of type {kind!r} are not supported by this gateway")
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function":
            raise Untranslatable(f"tools.{i}: built-in tools ({tool.get('type')!r}) are not supported by this "
                                 "gateway; declare a function tool")
        fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def to_chat_request(req: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Responses request (and the stored conversation before it) -> a canonical chat request."""
    messages = list(history or [])
    if req.get("instructions"):
        messages.insert(0, {"role": "system", "content": req["instructions"]})   # not carried to the next turn
    messages += input_messages(req["input"])
    out: dict[str, Any] = {"model": req["model"], "messages": messages}
    if req.get("tools"):
        out["tools"] = _tools(req["tools"])
    choice = req.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif isinstance(choice, str):
        out["tool_choice"] = choice
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("parallel_tool_calls", "parallel_tool_calls"), ("user", "user")):
        if req.get(src) is not None:
            out[dst] = req[src]
    fmt = (req.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": {
            k: v for k, v in (("name", fmt.get("name") or "output"), ("schema", fmt.get("schema")),
                              ("strict", fmt.get("strict"))) if v is not None}}
    if req.get("stream"):
        out["stream"] = True
    return out


def conversation(chat_request: dict[str, Any], output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What previous_response_id continues from: the turn's messages (without its instructions) and the
    model's answer, as canonical messages."""
    messages = [m for i, m in enumerate(chat_request["messages"]) if not (i == 0 and m["role"] == "system")]
    text = "".join(part.get("text", "") for item in output if item.get("type") == "message"
                   for part in item.get("content") or ())
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item.get("type") == "function_call"]
    answer: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        answer["tool_calls"] = calls
    return [*messages, answer]


# ------------------------------------------------------------------ response
def usage(canonical: dict[str, Any] | None) -> dict[str, Any] | None:
    if not canonical:
        return None
    inp, out = int(canonical.get("prompt_tokens") or 0), int(canonical.get("completion_tokens") or 0)
    cached = (canonical.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (canonical.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    written = (canonical.get("prompt_tokens_details") or {}).get("cache_creation_tokens") or 0
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": reasoning}, "total_tokens": inp + out}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text else []}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def envelope(req: dict[str, Any], response_id: str, model: str, created: float) -> dict[str, Any]:
    """The Response object's fields that echo the request."""
    return {"id": response_id, "object": "response", "created_at": created, "status": "in_progress",
            "model": model, "output": [], "error": None, "incomplete_details": None,
            "instructions": req.get("instructions"), "metadata": req.get("metadata") or {},
            "max_output_tokens": req.get("max_output_tokens"),
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": req.get("previous_response_id"), "temperature": req.get("temperature"),
            "top_p": req.get("top_p"), "tool_choice": req.get("tool_choice") or "auto",
            "tools": req.get("tools") or [], "text": req.get("text") or {"format": {"type": "text"}},
            "truncation": "disabled", "store": req.get("store", True), "usage": None}


def _finish(response: dict[str, Any], finish_reason: str | None) -> None:
    if finish_reason == "length":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "max_output_tokens"}
    elif finish_reason == "content_filter":
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": "content_filter"}
    else:
        response["status"] = "completed"
        response["completed_at"] = time.time()


def from_chat_response(result: dict[str, Any], req: dict[str, Any], response_id: str) -> dict[str, Any]:
    """A canonical chat completion -> a Response object."""
    response = envelope(req, response_id, result.get("model") or req["model"], result.get("created") or time.time())
    choice = (result.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("content"):
        output.append(message_item(new_id("msg_"), text_of(message["content"])))
    for tc in message.get("tool_calls") or ():
        fn = tc.get("function") or {}
        output.append(call_item(new_id("fc_"), tc.get("id") or new_id("call_"), fn.get("name") or "",
                                fn.get("arguments") or "{}"))
    response["output"] = output
    response["usage"] = usage(result.get("usage"))
    _finish(response, choice.get("finish_reason"))
    return response


# ------------------------------------------------------------------ stream
class ToResponsesStream:
    """Canonical chunks -> Responses stream events. The message item opens at the first text, a
    function_call item at each tool call's first delta; every open item is closed by finish()."""

    def __init__(self, req: dict[str, Any], response_id: str, model: str) -> None:
        self.response = envelope(req, response_id, model, time.time())
        self.seq = 0
        self.items: list[dict[str, Any]] = []          # output items, by output_index
        self.message: dict[str, Any] | None = None      # the open message item
        self.calls: dict[int, dict[str, Any]] = {}     # canonical tool-call index -> its item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return kind, data

    def _snapshot(self) -> dict[str, Any]:
        return {**self.response, "output": [dict(item) for item in self.items]}

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        return [self._event("response.created", response=self._snapshot()),
                self._event("response.in_progress", response=self._snapshot())]

    def feed(self, chunk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for tc in delta.get("tool_calls") or ():
                out += self._call(tc)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        return out

    def _text(self, text: str) -> list[tuple[str, dict[str, Any]]]:
        out = []
        if self.message is None:
            self.message = message_item(new_id("msg_"), "", "in_progress")
            self.message["text"] = ""
            self.items.append(self.message)
            index = len(self.items) - 1
            out.append(self._event("response.output_item.added", output_index=index,
                                   item=message_item(self.message["id"], "", "in_progress")))
            out.append(self._event("response.content_part.added", item_id=self.message["id"], output_index=index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        self.message["text"] += text
        out.append(self._event("response.output_text.delta", item_id=self.message["id"],
                               output_index=self.items.index(self.message), content_index=0, delta=text,
                               logprobs=[]))
        return out

    def _call(self, tc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        out = []
        fn = tc.get("function") or {}
        item = self.calls.get(tc.get("index", 0))
        if item is None:
            item = call_item(new_id("fc_"), tc.get("id") or new_id("call_"), fn.get("name") or "", "", "in_progress")
            self.calls[tc.get("index", 0)] = item
            self.items.append(item)
            out.append(self._event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item)))
        elif fn.get("name"):
            item["name"] += fn["name"]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                   output_index=self.items.index(item), delta=fn["arguments"]))
        return out

    def _close_items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for index, item in enumerate(self.items):
            if item["status"] != "in_progress":
                continue
            if item["type"] == "message":
                text = item.pop("text", "")
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                out.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                       content_index=0, text=text, logprobs=[]))
                out.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                       content_index=0, part=part))
                self.items[index] = item = message_item(item["id"], text)
            else:
                item["status"] = "completed"
                out.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                       output_index=index, name=item["name"], arguments=item["arguments"]))
            out.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        return out

    def output(self) -> list[dict[str, Any]]:
        """The output items so far (for the stored conversation)."""
        return [message_item(i["id"], i.get("text", "")) if i["type"] == "message" and "text" in i else i
                for i in self.items]

    def finish(self, error: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The closing events: every open item done, then response.completed (or .incomplete), or with
        `error` ({"code", "message"}) an `error` event and response.failed."""
        out = self._close_items()
        self.response["usage"] = usage(self.usage)
        if error is not None:
            self.response["status"] = "failed"
            # response.error.code is one of OpenAI's fixed codes; the `error` event carries the gateway's own kind.
            code = "rate_limit_exceeded" if error.get("code") == "rate_limit" else "server_error"
            self.response["error"] = {"code": code, "message": error["message"]}
            out.append(self._event("error", code=error.get("code") or "server_error", message=error["message"],
                                   param=None))
            out.append(self._event("response.failed", response=self._snapshot()))
            return out
        _finish(self.response, self.finish_reason)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=self._snapshot()))
        return out
