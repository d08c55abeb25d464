"""A local Anthropic Messages API: POST /v1/messages (JSON and SSE), /v1/messages/count_tokens,
GET /v1/models.

Streams are the real event sequence: message_start, content_block_start, ping,
content_block_delta (text_delta / input_json_delta), content_block_stop, message_delta (stop
reason + cumulative usage), message_stop. Errors are `{"type":"error","error":{...}}` with the
real status codes (529 overloaded) and anthropic-ratelimit-* headers. Prompt blocks marked
`cache_control` are reported as cache_creation_input_tokens the first time and
cache_read_input_tokens after, so cache accounting can be tested end to end.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from datetime import UTC, datetime, timedelta

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.faults import (
    WORD,
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

FAMILIES = ("claude-", "fake-")
LISTED = ["claude-sonnet-4-5", "claude-opus-4-1", "claude-3-5-haiku-latest"]
MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _rid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _reset(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _headers(remaining: int = 3999, wait: float = 1) -> dict:
    h = {"request-id": _rid("req_"), "anthropic-organization-id": "00000000-0000-0000-0000-000000000000"}
    for name, limit in (("requests", 4000), ("tokens", 2000000), ("input-tokens", 1600000),
                        ("output-tokens", 400000)):
        h[f"anthropic-ratelimit-{name}-limit"] = str(limit)
        h[f"anthropic-ratelimit-{name}-remaining"] = str(remaining and limit - 1)
        h[f"anthropic-ratelimit-{name}-reset"] = _reset(wait)
    return h


def error(status: int, type: str, message: str, headers: dict | None = None) -> JSONResponse:
    base = _headers()
    return JSONResponse({"type": "error", "error": {"type": type, "message": message},
                         "request_id": base["request-id"]}, status, headers={**base, **(headers or {})})


def fault_response(fault, prompt_tokens: int, limit: int | None) -> Response | None:
    mode = fault.mode if fault else None
    if mode == "error_500":
        return error(500, "api_error", "Internal server error")
    if mode == "overloaded":
        return error(529, "overloaded_error", "Overloaded")
    if mode == "rate_limit":
        wait = fault.retry_after
        return error(429, "rate_limit_error", "This request would exceed the rate limit for your organization "
                                              "of 4,000 requests per minute. Please try again later.",
                     {**_headers(0, wait), "retry-after": str(math.ceil(wait))})
    if mode == "context_window" or (limit is not None and prompt_tokens > limit):
        limit = limit or 200000
        return error(400, "invalid_request_error",
                     f"prompt is too long: {max(prompt_tokens, limit + 1)} tokens > {limit} maximum")
    return None


def _blocks(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])


def _block_text(block: dict) -> str:
    if block.get("type") == "text":
        return block.get("text", "")
    if block.get("type") == "tool_result":
        inner = block.get("content")
        return inner if isinstance(inner, str) else " ".join(b.get("text", "") for b in inner or []
                                                              if b.get("type") == "text")
    if block.get("type") == "tool_use":
        return json.dumps(block.get("input", {}))
    return ""


def _key(request: Request) -> str | None:
    # x-api-key is the classic header; current SDKs send the key as `Authorization: Bearer`.
    auth = request.headers.get("authorization", "")
    return request.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else None)


def _check(state: FakeState, request: Request, body) -> Response | None:
    key = _key(request)
    if not key:
        return error(401, "authentication_error", "x-api-key header is required")
    if not state.key_ok(key):
        return error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    if not isinstance(body, dict):
        return error(400, "invalid_request_error", "There was an issue with the request body: invalid JSON")
    for name in ("model", "messages") + (("max_tokens",) if request.url.path == "/v1/messages" else ()):
        if name not in body:
            return error(400, "invalid_request_error", f"{name}: Field required")
    model = body["model"]
    if not (model in state.models or str(model).startswith(FAMILIES)):
        return error(404, "not_found_error", f"model: {model}")
    t = body.get("temperature")
    if isinstance(t, (int, float)) and not 0 <= t <= 1:
        return error(400, "invalid_request_error", "temperature: Input should be less than or equal to 1")
    for i, tool in enumerate(body.get("tools") or []):
        if "type" not in tool and "input_schema" not in tool:
            return error(400, "invalid_request_error", f"tools.{i}.custom.input_schema: Field required")
    pending: list[str] = []           # tool_use ids the next user message must answer
    for i, m in enumerate(body["messages"]):
        role = m.get("role")
        if role not in ("user", "assistant"):
            return error(400, "invalid_request_error",
                         f'messages.{i}.role: Input should be \'user\' or \'assistant\'' if role != "system" else
                         'messages: Unexpected role "system". The Messages API accepts a top-level `system` '
                         'parameter, not "system" as an input message role.')
        blocks = _blocks(m.get("content"))
        if not blocks and i < len(body["messages"]) - 1:
            return error(400, "invalid_request_error", f"messages.{i}: all messages must have non-empty content "
                                                       "except for the optional final assistant message")
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        if pending and set(pending) - set(results):
            return error(400, "invalid_request_error", f"messages.{i - 1}: `tool_use` ids were found without "
                         f"`tool_result` blocks immediately after: {', '.join(sorted(set(pending) - set(results)))}. "
                         "Each `tool_use` block must have a corresponding `tool_result` block in the next message.")
        if set(results) - set(pending):
            return error(400, "invalid_request_error", f"messages.{i}.content.0: unexpected `tool_use_id` found in "
                         f"`tool_result` blocks: {', '.join(sorted(set(results) - set(pending)))}. Each `tool_result` "
                         "block must have a corresponding `tool_use` block in the previous message.")
        pending = [b.get("id") for b in blocks if b.get("type") == "tool_use"] if role == "assistant" else []
        for j, b in enumerate(blocks):
            kind = b.get("type")
            if kind not in ("text", "image", "tool_use", "tool_result", "document", "thinking", "redacted_thinking"):
                return error(400, "invalid_request_error", f"messages.{i}.content.{j}.type: Input tag '{kind}' found "
                             "using 'type' does not match any of the expected tags")
            if kind == "text" and not b.get("text"):
                return error(400, "invalid_request_error", "messages: text content blocks must be non-empty")
            if kind == "image":
                src = b.get("source") or {}
                if src.get("type") == "base64" and src.get("media_type") not in MEDIA_TYPES:
                    return error(400, "invalid_request_error", f"messages.{i}.content.{j}.image.source.base64."
                                 "media_type: Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'")
                if src.get("type") not in ("base64", "url", "file"):
                    return error(400, "invalid_request_error", f"messages.{i}.content.{j}.image.source: Input tag "
                                 f"'{src.get('type')}' found using 'type' does not match any of the expected tags")
    return None


def create_app(state: FakeState) -> Starlette:
    cached: set[str] = set()          # prompt-cache prefixes seen (per fake instance)

    def count_prompt(body: dict) -> tuple[int, int, int]:
        """(input_tokens, cache_creation_input_tokens, cache_read_input_tokens)."""
        seq = [(json.dumps(t), t.get("cache_control")) for t in body.get("tools") or []]
        system = body.get("system")
        seq += [(b.get("text", ""), b.get("cache_control")) for b in _blocks(system)] if system else []
        for m in body["messages"]:
            seq += [(_block_text(b), b.get("cache_control")) for b in _blocks(m.get("content"))]
        total = sum(tokens(text) for text, _ in seq)
        marks = [i for i, (_, cc) in enumerate(seq) if cc]
        if not marks:
            return total, 0, 0
        prefix = seq[: marks[-1] + 1]
        n = sum(tokens(text) for text, _ in prefix)
        key = hashlib.sha256(json.dumps([t for t, _ in prefix]).encode()).hexdigest()
        if key in cached:
            return total - n, 0, n
        cached.add(key)
        return total - n, n, 0

    async def messages(request: Request) -> Response:
        body = await record(state, request)
        if bad := _check(state, request, body):
            return bad
        inp, created, read = count_prompt(body)
        fault, bad = await begin_reply(state, lambda f: fault_response(f, inp + created + read, state.context_window))
        if bad:
            return bad
        last = _blocks(body["messages"][-1].get("content"))
        results = [_block_text(b) for b in last if b.get("type") == "tool_result"]
        user_text = " ".join(b.get("text", "") for b in last if b.get("type") == "text")
        names = [t["name"] for t in body.get("tools") or [] if "name" in t]
        if (body.get("tool_choice") or {}).get("type") == "none":
            names = []
        plan = plan_reply(user_text, names, "; ".join(results) if results else None, body["max_tokens"],
                          body.get("stop_sequences"))
        # Claude says what it is about to do before a tool call: a text block, then tool_use blocks.
        text = plan.text if not plan.calls else f"I'll call {', '.join(n for n, _ in plan.calls)}."
        pieces = plan.pieces if not plan.calls else WORD.findall(text)
        calls = [(_rid("toolu_"), name, args) for name, args in plan.calls]
        reason = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}.get(plan.finish, plan.finish)
        out_tokens = plan.completion_tokens + (tokens(text) if plan.calls else 0)
        usage = {"input_tokens": inp, "cache_creation_input_tokens": created, "cache_read_input_tokens": read,
                 "output_tokens": out_tokens, "service_tier": "standard"}
        msg = {"id": _rid("msg_"), "type": "message", "role": "assistant", "model": body["model"]}
        if not body.get("stream"):
            content = [{"type": "text", "text": text}] if text else []
            content += [{"type": "tool_use", "id": cid, "name": name, "input": args} for cid, name, args in calls]
            return JSONResponse({**msg, "content": content, "stop_reason": reason, "stop_sequence": plan.stop_sequence,
                                 "usage": usage}, headers=_headers())
        mode = fault.mode if fault else None

        def ev(name: str, data: dict) -> bytes:
            return f"event: {name}\ndata: ".encode() + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

        async def gen():
            yield ev("message_start", {"type": "message_start", "message": {
                **msg, "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {**usage, "output_tokens": 1}}})
            index, sent = 0, 0
            broken = mode in ("drop_mid_stream", "stream_error")
            if pieces:
                yield ev("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})
                yield ev("ping", {"type": "ping"})
                for piece in pieces:
                    await token_pause(state)
                    if broken and sent >= 2:
                        break
                    yield ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                     "delta": {"type": "text_delta", "text": piece}})
                    sent += 1
                if not (broken and sent >= 2):
                    yield ev("content_block_stop", {"type": "content_block_stop", "index": 0})
                index = 1
            for cid, name, args in calls:
                if broken and sent >= 2:
                    break
                yield ev("content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": cid, "name": name, "input": {}}})
                for piece in [""] + split_json(args):
                    await token_pause(state)
                    yield ev("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "input_json_delta", "partial_json": piece}})
                yield ev("content_block_stop", {"type": "content_block_stop", "index": index})
                index += 1
            if mode == "drop_mid_stream":
                raise DropConnection()
            if mode == "stream_error":
                yield ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                return
            yield ev("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": reason, "stop_sequence": plan.stop_sequence},
                                       "usage": {"output_tokens": out_tokens}})
            yield ev("message_stop", {"type": "message_stop"})

        return StreamingResponse(stream_guard(state, gen()), headers={**_headers(), "cache-control": "no-cache"},
                                 media_type="text/event-stream; charset=utf-8")

    async def count_tokens(request: Request) -> Response:
        body = await record(state, request)
        if bad := _check(state, request, body):
            return bad
        return JSONResponse({"input_tokens": sum(count_prompt(body))}, headers=_headers())

    async def models(request: Request) -> Response:
        if not state.key_ok(_key(request)):
            return error(401, "authentication_error", "invalid x-api-key")
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in LISTED + sorted(state.models)]
        return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]},
                            headers=_headers())

    return Starlette(routes=admin_routes(state) + [
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/models", models),
    ])


if __name__ == "__main__":
    from tests.fakes import serve_main
    serve_main("anthropic")
