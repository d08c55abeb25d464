"""A local OpenAI API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Same JSON and SSE bytes as api.openai.com (`data: {...}\\n\\n` chunks, a final usage chunk
with `choices: []` when stream_options.include_usage, then `data: [DONE]`), the same error
bodies and status codes, and x-ratelimit-* headers. Fast enough to stand in for an upstream
in benchmarks: no sleeps unless a fault or `token_delay` asks for one.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.faults import (
    DropConnection,
    FakeState,
    admin_routes,
    begin_reply,
    plan_reply,
    record,
    split_json,
    stream_guard,
    token_pause,
    tokens,
)

FAMILIES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "davinci", "babbage", "fake-")
LISTED = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-3.5-turbo-instruct", "text-embedding-3-small"]
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
DONE = b"data: [DONE]\n\n"


def _rid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _headers(remaining: int = 9999, reset: str = "6ms") -> dict:
    return {"x-request-id": _rid("req_"), "openai-processing-ms": "1", "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "10000", "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset, "x-ratelimit-limit-tokens": "30000000",
            "x-ratelimit-remaining-tokens": "29999000" if remaining else "0", "x-ratelimit-reset-tokens": reset}


def error(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status,
                        headers={**_headers(), **(headers or {})})


def fault_response(fault, model: str, prompt_tokens: int, limit: int | None) -> Response | None:
    """The error a fault (or an over-long prompt) turns this request into, if any."""
    mode = fault.mode if fault else None
    if mode == "error_500":
        return error(500, "The server had an error while processing your request. Sorry about that!", "server_error")
    if mode == "overloaded":
        return error(503, "The server is overloaded or not ready yet.", "server_error")
    if mode == "rate_limit":
        wait = fault.retry_after
        return error(429, f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
                          f"Limit 3, Used 3, Requested 1. Please try again in {wait:g}s.",
                     "requests", None, "rate_limit_exceeded",
                     {**_headers(0, f"{wait:g}s"), "retry-after": str(math.ceil(wait))})
    if mode == "context_window" or (limit is not None and prompt_tokens > limit):
        limit = limit or 128000
        return error(400, f"This model's maximum context length is {limit} tokens. However, your messages "
                          f"resulted in {max(prompt_tokens, limit + 1)} tokens. Please reduce the length of the "
                          f"messages.", param="messages", code="context_length_exceeded")
    return None


def _auth(state: FakeState, request: Request) -> Response | None:
    header = request.headers.get("authorization", "")
    if not header:
        return error(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                          "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API "
                          "key from https://platform.openai.com/account/api-keys.")
    key = header[7:] if header.lower().startswith("bearer ") else ""
    if not state.key_ok(key):
        shown = f"{key[:3]}***{key[-4:]}" if len(key) > 8 else key
        return error(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                          f"https://platform.openai.com/account/api-keys.", code="invalid_api_key")
    return None


def _model(state: FakeState, body) -> Response | None:
    if not isinstance(body, dict):
        return error(400, "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                          "using your HTTP library correctly. The OpenAI API expects a JSON payload.)")
    model = body.get("model")
    if not model:
        return error(400, "you must provide a model parameter")
    if not (model in state.models or model.startswith(FAMILIES)):
        return error(404, f"The model `{model}` does not exist or you do not have access to it.",
                     code="model_not_found")
    if body.get("stream_options") is not None and not body.get("stream"):
        return error(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                     param="stream_options")
    return None


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict) and p.get("type") == "text")


def _check_messages(body: dict) -> Response | None:
    msgs = body.get("messages")
    if msgs is None:
        return error(400, "Missing required parameter: 'messages'.", param="messages", code="missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        return error(400, "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                          "empty array instead.", param="messages", code="empty_array")
    t = body.get("temperature")
    if isinstance(t, (int, float)) and not 0 <= t <= 2:
        return error(400, f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} "
                          f"instead.", param="temperature", code="decimal_above_max_value")
    open_calls: list[str] = []           # tool_call ids still waiting for their tool message
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            return error(400, f"Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', "
                              f"'function', 'tool', and 'developer'.", param=f"messages[{i}].role", code="invalid_value")
        if role == "tool":
            if not m.get("tool_call_id"):
                return error(400, f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                             param=f"messages[{i}].tool_call_id", code="missing_required_parameter")
            if m["tool_call_id"] not in open_calls:
                return error(400, "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                                  "message with 'tool_calls'.", param=f"messages.[{i}].role")
            open_calls.remove(m["tool_call_id"])
            continue
        if open_calls:
            return error(400, "An assistant message with 'tool_calls' must be followed by tool messages responding "
                              "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                              + ", ".join(open_calls), param="messages.[%d].role" % i)
        if role in ("user", "system", "developer") and m.get("content") is None:
            return error(400, f"Missing required parameter: 'messages[{i}].content'.",
                         param=f"messages[{i}].content", code="missing_required_parameter")
        if isinstance(m.get("content"), list):
            for j, part in enumerate(m["content"]):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind not in ("text", "image_url", "input_audio", "file", "refusal"):
                    return error(400, f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                                      f"'input_audio', 'refusal', and 'file'.",
                                 param=f"messages[{i}].content[{j}].type", code="invalid_value")
                if kind == "image_url" and not str((part.get("image_url") or {}).get("url", "")).startswith(
                        ("http://", "https://", "data:image/")):
                    return error(400, "Invalid image URL: the URL must be an http(s) URL or a base64 data URL.",
                                 param=f"messages[{i}].content[{j}].image_url.url", code="invalid_image_url")
        if role == "assistant":
            open_calls = [c.get("id") for c in m.get("tool_calls") or []]
    if open_calls:
        return error(400, "An assistant message with 'tool_calls' must be followed by tool messages responding to "
                          "each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                          + ", ".join(open_calls), param="messages")
    return None


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class PartialResponse(Response):
    """Headers and half the body, then the socket closes (drop_mid_stream on a non-stream call)."""

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})
        raise DropConnection()


def create_app(state: FakeState) -> Starlette:
    async def chat(request: Request) -> Response:
        body = await record(state, request)
        bad = _auth(state, request) or _model(state, body) or _check_messages(body)
        if bad:
            return bad
        msgs, model = body["messages"], body["model"]
        prompt_tokens = sum(tokens(_text(m.get("content"))) for m in msgs)
        fault, bad = await begin_reply(state, lambda f: fault_response(f, model, prompt_tokens, state.context_window))
        if bad:
            return bad
        last = msgs[-1]
        user = next((m for m in reversed(msgs) if m.get("role") == "user"), {})
        tool_names = [t["function"]["name"] for t in body.get("tools") or [] if t.get("function")]
        if body.get("tool_choice") == "none":
            tool_names = []
        stop = body.get("stop")
        plan = plan_reply(_text(user.get("content")), tool_names,
                          _text(last.get("content")) if last.get("role") == "tool" else None,
                          body.get("max_completion_tokens") or body.get("max_tokens"),
                          [stop] if isinstance(stop, str) else stop)
        n = body.get("n") or 1
        finish = {"stop_sequence": "stop"}.get(plan.finish, plan.finish)
        calls = [(_rid("call_"), name, args) for name, args in plan.calls]
        usage = _usage(prompt_tokens, plan.completion_tokens * n)
        rid, created = _rid("chatcmpl-"), int(time.time())
        base = {"id": rid, "object": "chat.completion", "created": created, "model": model}
        mode = fault.mode if fault else None
        if not body.get("stream"):
            message = {"role": "assistant", "content": plan.text if not calls else None, "refusal": None,
                       "annotations": []}
            if calls:
                message["tool_calls"] = [{"id": cid, "type": "function",
                                          "function": {"name": name, "arguments": json.dumps(args)}}
                                         for cid, name, args in calls]
            out = {**base, "choices": [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                                       for i in range(n)],
                   "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake"}
            if mode == "drop_mid_stream":
                return PartialResponse(json.dumps(out), 200, _headers(), "application/json")
            return JSONResponse(out, headers=_headers())

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {**base, "object": "chat.completion.chunk", "service_tier": "default", "system_fingerprint": "fp_fake"}

        def frame(delta: dict | None, reason=None) -> bytes:
            out = {**base, "choices": [{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
                                       for i in range(n)]}
            if include_usage:
                out["usage"] = None
            return sse(out)

        async def gen():
            yield frame({"role": "assistant", "content": None if calls else "", "refusal": None})
            sent = 0
            for piece in plan.pieces:
                await token_pause(state)
                if mode in ("drop_mid_stream", "stream_error") and sent >= 2:
                    break
                yield frame({"content": piece})
                sent += 1
            for index, (cid, name, args) in enumerate(calls):
                await token_pause(state)
                yield frame({"tool_calls": [{"index": index, "id": cid, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]})
                for piece in split_json(args):
                    if mode in ("drop_mid_stream", "stream_error") and sent >= 2:
                        break
                    yield frame({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                    sent += 1
            if mode == "drop_mid_stream":
                raise DropConnection()
            if mode == "stream_error":
                yield sse({"error": {"message": "The server had an error while processing your request. Sorry "
                                                "about that!", "type": "server_error", "param": None, "code": None}})
                return
            yield frame({}, finish)
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage})
            yield DONE

        return StreamingResponse(stream_guard(state, gen()), headers=_headers(),
                                 media_type="text/event-stream; charset=utf-8")

    async def completions(request: Request) -> Response:
        body = await record(state, request)
        bad = _auth(state, request) or _model(state, body)
        if bad:
            return bad
        prompt = body.get("prompt")
        if prompt is None:
            return error(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
        prompts = [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompts]
        prompt_tokens = sum(tokens(p) for p in prompts)
        _fault, bad = await begin_reply(
            state, lambda f: fault_response(f, body["model"], prompt_tokens, state.context_window))
        if bad:
            return bad
        stop = body.get("stop")
        plans = [plan_reply(p, [], None, body.get("max_tokens", 16), [stop] if isinstance(stop, str) else stop)
                 for p in prompts]
        usage = _usage(prompt_tokens, sum(p.completion_tokens for p in plans))
        usage.pop("completion_tokens_details"), usage.pop("prompt_tokens_details")
        base = {"id": _rid("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": body["model"]}

        def reason(plan) -> str:
            return "length" if plan.finish == "length" else "stop"

        if not body.get("stream"):
            return JSONResponse({**base, "choices": [{"text": p.text, "index": i, "logprobs": None,
                                                      "finish_reason": reason(p)} for i, p in enumerate(plans)],
                                 "usage": usage, "system_fingerprint": "fp_fake"}, headers=_headers())
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def gen():
            for i, plan in enumerate(plans):
                for piece in plan.pieces:
                    await token_pause(state)
                    yield sse({**base, "choices": [{"text": piece, "index": i, "logprobs": None,
                                                    "finish_reason": None}]})
                yield sse({**base, "choices": [{"text": "", "index": i, "logprobs": None,
                                                "finish_reason": reason(plan)}]})
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage})
            yield DONE

        return StreamingResponse(stream_guard(state, gen()), headers=_headers(),
                                 media_type="text/event-stream; charset=utf-8")

    async def embeddings(request: Request) -> Response:
        body = await record(state, request)
        bad = _auth(state, request) or _model(state, body)
        if bad:
            return bad
        inp = body.get("input")
        if inp is None or inp == "" or inp == []:
            return error(400, "'input' is a required property" if inp is None else "'$.input' is invalid. Please "
                              "check the API reference: https://platform.openai.com/docs/api-reference.",
                         param="input")
        items = [inp] if isinstance(inp, str) or isinstance(inp[0], int) else inp
        if bad := fault_response(state.take_fault(), body["model"], 0, None):
            return bad
        dims = body.get("dimensions") or 16
        data, total = [], 0
        for i, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            total += tokens(text) if isinstance(item, str) else len(item)
            vector = _vector(text, dims)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return JSONResponse({"object": "list", "data": data, "model": body["model"],
                             "usage": {"prompt_tokens": total, "total_tokens": total}}, headers=_headers())

    async def models(request: Request) -> Response:
        if bad := _auth(state, request):
            return bad
        cards = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "system"}
                 for m in LISTED + sorted(state.models)]
        model_id = request.path_params.get("model")
        if model_id is None:
            return JSONResponse({"object": "list", "data": cards}, headers=_headers())
        card = next((c for c in cards if c["id"] == model_id), None)
        if card is None and model_id.startswith(FAMILIES):
            card = {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "system"}
        return JSONResponse(card, headers=_headers()) if card else error(
            404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")

    return Starlette(routes=admin_routes(state) + [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models), Route("/v1/models/{model:path}", models),
    ])


def _vector(text: str, dims: int) -> list[float]:
    """Deterministic unit vector: equal texts embed equally, different ones differ."""
    raw = b""
    while len(raw) < dims * 4:
        raw += hashlib.sha256(text.encode() + len(raw).to_bytes(4, "little")).digest()
    values = [(int.from_bytes(raw[i * 4:i * 4 + 4], "little") / 2**32) * 2 - 1 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


if __name__ == "__main__":
    from tests.fakes import serve_main
    serve_main("openai")
