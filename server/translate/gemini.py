"""Canonical (OpenAI chat completions) <-> Gemini generateContent. Pure functions, no I/O.

Gemini's JSON accepts camelCase and snake_case field names; what we read accepts both
(`_get`), what we write is camelCase as the API documents it."""
from __future__ import annotations

import json

from server.translate import (
    GEMINI_TO_OPENAI_STOP,
    OPENAI_TO_GEMINI_STOP,
    StreamError,
    chunk,
    guess_media_type,
    loads_args,
    new_id,
    now,
    openai_usage,
    parse_data_url,
    text_of,
)

# Gemini function `parameters` is an OpenAPI Schema subset: other JSON-Schema keys are a 400.
_SCHEMA_KEYS = {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
                "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
                "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "PERMISSION_DENIED": 403, "NOT_FOUND": 404,
           "RESOURCE_EXHAUSTED": 429, "INTERNAL": 500, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


def _get(d: dict, camel: str, default=None):
    if camel in d:
        return d[camel]
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return d.get(snake, default)


def _schema(s):
    if not isinstance(s, dict):
        return s
    out = {}
    for key, value in s.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = _schema(value)
        elif key == "anyOf":
            out[key] = [_schema(x) for x in value]
        elif key == "type" and isinstance(value, list):      # ["string", "null"] -> nullable string
            kinds = [v for v in value if v != "null"]
            out["type"] = kinds[0] if kinds else "string"
            if "null" in value:
                out["nullable"] = True
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------- canonical -> Gemini upstream
def _parts(content) -> list[dict]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for part in content:
        if part.get("type") == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif part.get("type") == "image_url":
            image = part["image_url"]
            url = image if isinstance(image, str) else image["url"]
            data_url = parse_data_url(url)
            if data_url:
                parts.append({"inlineData": {"mimeType": data_url[0], "data": data_url[1]}})
            else:
                parts.append({"fileData": {"mimeType": guess_media_type(url), "fileUri": url}})
    return parts


def openai_to_gemini_request(req: dict, upstream_model: str | None = None) -> dict:
    """The model is not part of a Gemini body (it is in the URL); `upstream_model` is accepted for
    symmetry with the Anthropic translator."""
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}            # tool_call_id -> function name (Gemini answers by name)

    def add(role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:    # parallel results go in one turn
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for msg in req.get("messages", []):
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(_parts(msg.get("content")))
        elif role == "user":
            add("user", _parts(msg.get("content")))
        elif role == "assistant":
            parts = _parts(msg.get("content"))
            for call in msg.get("tool_calls") or []:
                fn = call.get("function", {})
                names[call.get("id", "")] = fn.get("name", "")
                parts.append({"functionCall": {"name": fn.get("name", ""), "args": loads_args(fn.get("arguments"))}})
            add("model", parts)
        elif role == "tool":
            text = text_of(msg.get("content"))
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            response = value if isinstance(value, dict) else {"content": value}
            add("user", [{"functionResponse": {"name": names.get(msg.get("tool_call_id", ""), msg.get("name", "")),
                                               "response": response}}])

    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"),
                     ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                     ("frequency_penalty", "frequencyPenalty")):
        if req.get(src) is not None:
            config[dst] = req[src]
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = req.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    fmt = (req.get("response_format") or {}).get("type")
    if fmt in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if config:
        out["generationConfig"] = config
    if req.get("tools"):
        decls = []
        for tool in req["tools"]:
            fn = tool.get("function") or {}
            decl = {"name": fn.get("name", ""), "description": fn.get("description", "")}
            params = fn.get("parameters")
            if params and params.get("properties"):     # Gemini rejects an OBJECT without properties
                decl["parameters"] = _schema(params)
            decls.append(decl)
        out["tools"] = [{"functionDeclarations": decls}]
        choice = req.get("tool_choice")
        if choice in ("auto", "none", "required"):
            out["toolConfig"] = {"functionCallingConfig": {"mode": {"required": "ANY"}.get(choice, choice.upper())}}
        elif isinstance(choice, dict):
            out["toolConfig"] = {"functionCallingConfig": {
                "mode": "ANY", "allowedFunctionNames": [choice.get("function", {}).get("name", "")]}}
    return out


def _usage_from_gemini(meta: dict | None) -> dict:
    meta = meta or {}
    prompt = _get(meta, "promptTokenCount", 0) or 0
    thoughts = _get(meta, "thoughtsTokenCount", 0) or 0
    completion = (_get(meta, "candidatesTokenCount", 0) or 0) + thoughts   # thoughts are billed as output
    return openai_usage(prompt, completion, cached=_get(meta, "cachedContentTokenCount", 0) or 0,
                        reasoning=thoughts)


def _call(part: dict, index: int | None = None) -> dict:
    fc = _get(part, "functionCall")
    out = {"id": fc.get("id") or new_id("call_"), "type": "function",
           "function": {"name": fc.get("name", ""), "arguments": json.dumps(fc.get("args") or {})}}
    if index is not None:
        out = {"index": index, **out}
    return out


def _finish(reason: str | None, has_calls: bool) -> str:
    mapped = GEMINI_TO_OPENAI_STOP.get(reason or "STOP", "stop")
    return "tool_calls" if has_calls and mapped == "stop" else mapped


def gemini_to_openai_response(resp: dict, model: str) -> dict:
    choices = []
    for i, cand in enumerate(resp.get("candidates") or []):
        texts, thoughts, calls = [], [], []
        for part in (cand.get("content") or {}).get("parts") or []:
            if _get(part, "functionCall"):
                calls.append(_call(part))
            elif "text" in part:
                (thoughts if part.get("thought") else texts).append(part["text"])
        message: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
        if calls:
            message["tool_calls"] = calls
        if thoughts:
            message["reasoning_content"] = "".join(thoughts)
        choices.append({"index": cand.get("index", i), "message": message, "logprobs": None,
                        "finish_reason": _finish(_get(cand, "finishReason"), bool(calls))})
    if not choices:     # the prompt itself was blocked (promptFeedback.blockReason)
        choices = [{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": "content_filter"}]
    return {"id": _get(resp, "responseId") or new_id("chatcmpl-"), "object": "chat.completion", "created": now(),
            "model": model, "choices": choices, "usage": _usage_from_gemini(_get(resp, "usageMetadata"))}


class GeminiToOpenAIStream:
    """Upstream `streamGenerateContent?alt=sse` chunks -> canonical chunks. Gemini SSE has no event
    names, so feed(data) and feed(event, data) both work. The chunk with finishReason yields the
    finish chunk and then the usage chunk (`choices: []`); finish() at end of body raises
    StreamError if that never came. A `{"error": ...}` chunk raises StreamError."""

    def __init__(self, model: str, response_id: str) -> None:
        self.model, self.id, self.created = model, response_id, now()
        self.usage: dict | None = None
        self.done = False
        self._started = False
        self._calls = 0

    def _chunk(self, delta=None, finish=None, usage=None) -> dict:
        return chunk(self.id, self.model, self.created, delta, finish, usage)

    def feed(self, event_or_data, data: dict | None = None) -> list[dict]:
        data = event_or_data if data is None else data
        if "error" in data:
            err = data["error"] or {}
            status = err.get("code") or _STATUS.get(err.get("status"), 500)
            raise StreamError(err.get("message", "upstream stream error"), err.get("status", "INTERNAL"), status)
        out = []
        if not self._started:
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        meta = _get(data, "usageMetadata")
        if meta:
            self.usage = _usage_from_gemini(meta)     # cumulative: the latest one wins
        cand = (data.get("candidates") or [{}])[0]
        for part in (cand.get("content") or {}).get("parts") or []:
            if _get(part, "functionCall"):
                out.append(self._chunk({"tool_calls": [_call(part, self._calls)]}))
                self._calls += 1
            elif part.get("text"):
                key = "reasoning_content" if part.get("thought") else "content"
                out.append(self._chunk({key: part["text"]}))
        reason = _get(cand, "finishReason")
        if reason and not self.done:
            self.done = True
            self.usage = self.usage or _usage_from_gemini(None)
            out.append(self._chunk({}, _finish(reason, self._calls > 0)))
            out.append(self._chunk(usage=self.usage))
        return out

    def finish(self) -> list[dict]:
        if not self.done:
            raise StreamError("upstream stream ended before a finishReason", "INTERNAL", 502)
        return []


# ---------------------------------------------------------------- Gemini client -> canonical
def gemini_to_openai_request(req: dict, model: str) -> dict:
    messages: list[dict] = []
    system = _get(req, "systemInstruction")
    if system:
        messages.append({"role": "system", "content": "".join(p.get("text", "") for p in system.get("parts", []))})
    pending: dict[str, list[str]] = {}       # function name -> ids of its calls awaiting a response
    for content in req.get("contents", []):
        parts = content.get("parts") or []
        if content.get("role") == "model":
            text = "".join(p.get("text", "") for p in parts if "text" in p and not p.get("thought"))
            calls = []
            for part in parts:
                if _get(part, "functionCall"):
                    call = _call(part)
                    pending.setdefault(call["function"]["name"], []).append(call["id"])
                    calls.append(call)
            msg: dict = {"role": "assistant", "content": text or (None if calls else "")}
            if calls:
                msg["tool_calls"] = calls
            messages.append(msg)
            continue
        user_parts = []
        for part in parts:
            fr = _get(part, "functionResponse")
            if fr:
                ids = pending.get(fr.get("name", ""), [])
                call_id = fr.get("id") or (ids.pop(0) if ids else new_id("call_"))
                messages.append({"role": "tool", "tool_call_id": call_id, "content": json.dumps(fr.get("response"))})
            elif "text" in part:
                user_parts.append({"type": "text", "text": part["text"]})
            elif _get(part, "inlineData"):
                d = _get(part, "inlineData")
                url = f"data:{_get(d, 'mimeType')};base64,{d.get('data', '')}"
                user_parts.append({"type": "image_url", "image_url": {"url": url}})
            elif _get(part, "fileData"):
                user_parts.append({"type": "image_url", "image_url": {"url": _get(_get(part, "fileData"), "fileUri")}})
        if user_parts:
            plain = all(p["type"] == "text" for p in user_parts)
            messages.append({"role": "user",
                             "content": "".join(p["text"] for p in user_parts) if plain else user_parts})
    out: dict = {"model": model, "messages": messages}
    config = _get(req, "generationConfig") or {}
    for src, dst in (("temperature", "temperature"), ("topP", "top_p"), ("maxOutputTokens", "max_tokens"),
                     ("candidateCount", "n"), ("seed", "seed"), ("stopSequences", "stop")):
        if _get(config, src) is not None:
            out[dst] = _get(config, src)
    tools = [{"type": "function", "function": {"name": d["name"], "description": d.get("description", ""),
                                               "parameters": d.get("parameters") or {"type": "object", "properties": {}}}}
             for t in req.get("tools") or [] for d in _get(t, "functionDeclarations") or []]
    if tools:
        out["tools"] = tools
        fcc = _get(_get(req, "toolConfig") or {}, "functionCallingConfig") or {}
        mode, allowed = fcc.get("mode"), _get(fcc, "allowedFunctionNames") or []
        if mode == "ANY" and len(allowed) == 1:
            out["tool_choice"] = {"type": "function", "function": {"name": allowed[0]}}
        elif mode in ("AUTO", "ANY", "NONE"):
            out["tool_choice"] = {"AUTO": "auto", "ANY": "required", "NONE": "none"}[mode]
    return out


def _usage_to_gemini(usage: dict | None) -> dict:
    usage = usage or {}
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": completion, "totalTokenCount": prompt + completion}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached:
        meta["cachedContentTokenCount"] = cached
    return meta


def _model_parts(message: dict) -> list[dict]:
    parts = [{"text": text_of(message["content"])}] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        parts.append({"functionCall": {"name": fn.get("name", ""), "args": loads_args(fn.get("arguments"))}})
    return parts


def openai_to_gemini_response(resp: dict, model: str) -> dict:
    candidates = [{"content": {"role": "model", "parts": _model_parts(c.get("message") or {}) or [{"text": ""}]},
                   "finishReason": OPENAI_TO_GEMINI_STOP.get(c.get("finish_reason"), "STOP"),
                   "index": c.get("index", i)}
                  for i, c in enumerate(resp.get("choices") or [])]
    return {"candidates": candidates, "usageMetadata": _usage_to_gemini(resp.get("usage")),
            "modelVersion": model, "responseId": resp.get("id") or new_id("")}


class OpenAIToGeminiStream:
    """Canonical chunks -> Gemini stream chunks (SSE data dicts) for a Gemini-format client.
    Text goes out as it comes; function calls are whole in Gemini, so their argument deltas are
    collected and sent with finishReason and usageMetadata by finish()."""

    def __init__(self, model: str, response_id: str | None = None) -> None:
        self.model, self.id = model, response_id or new_id("")
        self._calls: dict[int, dict] = {}
        self._reason = "STOP"
        self._usage: dict | None = None

    def _out(self, parts: list[dict], finish: str | None = None) -> dict:
        cand: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        out = {"candidates": [cand], "modelVersion": self.model, "responseId": self.id}
        if finish:
            out["usageMetadata"] = _usage_to_gemini(self._usage)
        return out

    def feed(self, chunk: dict) -> list[dict]:
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(self._out([{"text": delta["content"]}]))
            for call in delta.get("tool_calls") or []:
                slot = self._calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                fn = call.get("function") or {}
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                self._reason = OPENAI_TO_GEMINI_STOP.get(choice["finish_reason"], "STOP")
        return out

    def finish(self, error: dict | None = None) -> list[dict]:
        if error is not None:
            code = error.get("status") if isinstance(error.get("status"), int) else 500
            return [{"error": {"code": code, "message": error.get("message", "upstream error"),
                               "status": {429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}.get(code, "INTERNAL")}}]
        parts = [{"functionCall": {"name": c["name"], "args": loads_args(c["arguments"])}}
                 for _, c in sorted(self._calls.items())]
        return [self._out(parts or [{"text": ""}], self._reason)]
