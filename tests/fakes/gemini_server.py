"""A local Gemini API: POST /v1beta/models/{model}:generateContent, :streamGenerateContent
(`?alt=sse`: `data: {...}\\r\\n\\r\\n` events; without it a streamed JSON array, as Google does),
:countTokens, GET /v1beta/models. Key in `x-goog-api-key` or `?key=`.

Like the real API it rejects unknown JSON field names (a 400 naming the field), checks that
function responses answer the preceding function-call turn, and answers errors with
`{"error": {"code", "message", "status"}}`: an invalid key is 400 INVALID_ARGUMENT
(API_KEY_INVALID) and a missing one 403 PERMISSION_DENIED, as Google does, not 401.
"""
from __future__ import annotations

import json
import math
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
    stream_guard,
    token_pause,
    tokens,
)

FAMILIES = ("gemini-", "gemma-", "text-embedding-", "fake-")
LISTED = ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.0-flash"]
STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 503: "UNAVAILABLE"}


def _names(*camel: str) -> set[str]:
    """Each camelCase field name and its snake_case twin: the API accepts both."""
    return set(camel) | {"".join("_" + c.lower() if c.isupper() else c for c in n) for n in camel}


TOP = _names("contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig",
             "cachedContent", "model", "labels")
CONFIG = _names("stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
                "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
                "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
                "thinkingConfig", "mediaResolution", "imageConfig")
PART = _names("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult", "thought", "thoughtSignature", "videoMetadata", "partMetadata")


def _get(d: dict, camel: str, default=None):
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return d.get(camel, d.get(snake, default))


def error(code: int, message: str, details: list | None = None, headers: dict | None = None) -> JSONResponse:
    err = {"code": code, "message": message, "status": STATUS.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return JSONResponse({"error": err}, code, headers=headers)


def fault_response(fault, prompt_tokens: int, limit: int | None) -> Response | None:
    mode = fault.mode if fault else None
    if mode == "error_500":
        return error(500, "An internal error has occurred. Please retry or report in "
                          "https://developers.generativeai.google/guide/troubleshooting")
    if mode == "overloaded":
        return error(503, "The model is overloaded. Please try again later.")
    if mode == "rate_limit":
        wait = fault.retry_after
        return error(429, "You exceeded your current quota, please check your plan and billing details.",
                     [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{math.ceil(wait)}s"}],
                     {"retry-after": str(math.ceil(wait))})
    if mode == "context_window" or (limit is not None and prompt_tokens > limit):
        limit = limit or 1048576
        return error(400, f"The input token count ({max(prompt_tokens, limit + 1)}) exceeds the maximum number of "
                          f"tokens allowed ({limit}).")
    return None


def _unknown(obj: dict, allowed: set[str], where: str | None) -> Response | None:
    for key in obj:
        if key not in allowed:
            at = f" at '{where}'" if where else ""
            return error(400, f'Invalid JSON payload received. Unknown name "{key}"{at}: Cannot find field.',
                         [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
                             {"field": f"{where + '.' if where else ''}{key}",
                              "description": f'Invalid JSON payload received. Unknown name "{key}"{at}: '
                                             f'Cannot find field.'}]}])
    return None


def _check(state: FakeState, request: Request, body, model: str) -> Response | None:
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        return error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                          "Please use API Key or other form of API consumer identity to call this API.")
    if not state.key_ok(key):
        return error(400, "API key not valid. Please pass a valid API key.", [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}])
    if not (model in state.models or model.startswith(FAMILIES)):
        return error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                          f"generateContent. Call ListModels to see the list of available models and their "
                          f"supported methods.")
    if not isinstance(body, dict):
        return error(400, "Invalid JSON payload received. Expected an object.")
    if bad := _unknown(body, TOP, None) or _unknown(_get(body, "generationConfig") or {}, CONFIG, "generation_config"):
        return bad
    contents = body.get("contents")
    if not contents:
        return error(400, "* GenerateContentRequest.contents: contents is not specified\n")
    calls = 0                         # function calls in the previous model turn still unanswered
    for i, content in enumerate(contents):
        if bad := _unknown(content, {"role", "parts"}, f"contents[{i}]"):
            return bad
        if content.get("role", "user") not in ("user", "model"):
            return error(400, "Please use a valid role: user, model.")
        parts = content.get("parts") or []
        if not parts:
            return error(400, f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
        for j, part in enumerate(parts):
            if bad := _unknown(part, PART, f"contents[{i}].parts[{j}]"):
                return bad
        responses = sum(1 for p in parts if _get(p, "functionResponse"))
        if responses and not calls:
            return error(400, "Please ensure that function response turn comes immediately after a function call "
                              "turn.")
        if calls and responses != calls:
            return error(400, "Please ensure that the number of function response parts is equal to the number of "
                              "function call parts of the function call turn.")
        calls = sum(1 for p in parts if _get(p, "functionCall")) if content.get("role") == "model" else 0
    return None


def _part_text(part: dict) -> str:
    if "text" in part:
        return part["text"]
    fr = _get(part, "functionResponse")
    return json.dumps(fr.get("response")) if fr else ""


def create_app(state: FakeState) -> Starlette:
    async def generate(request: Request) -> Response:
        target = request.path_params["target"]
        model, _, action = target.partition(":")
        body = await record(state, request)
        if action not in ("generateContent", "streamGenerateContent", "countTokens"):
            return error(404, f"Method not found: {action}")
        if bad := _check(state, request, body, model):
            return bad
        system = _get(body, "systemInstruction") or {}
        prompt_tokens = sum(tokens(_part_text(p)) for c in [system] + body["contents"] for p in c.get("parts", []))
        if action == "countTokens":
            return JSONResponse({"totalTokens": prompt_tokens})
        fault, bad = await begin_reply(state, lambda f: fault_response(f, prompt_tokens, state.context_window))
        if bad:
            return bad
        last = body["contents"][-1].get("parts", [])
        results = [_part_text(p) for p in last if _get(p, "functionResponse")]
        user_text = " ".join(p["text"] for p in last if "text" in p)
        names = [d["name"] for t in body.get("tools") or [] for d in _get(t, "functionDeclarations") or []]
        calling = _get(_get(body, "toolConfig") or {}, "functionCallingConfig") or {}
        if calling.get("mode") == "NONE":
            names = []
        config = _get(body, "generationConfig") or {}
        plan = plan_reply(user_text, names, "; ".join(results) if results else None,
                          _get(config, "maxOutputTokens"), _get(config, "stopSequences"))
        reason = "MAX_TOKENS" if plan.finish == "length" else "STOP"
        completion = plan.completion_tokens
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": completion,
                 "totalTokenCount": prompt_tokens + completion,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]}
        meta = {"modelVersion": model, "responseId": uuid.uuid4().hex[:22]}
        calls = [{"functionCall": {"name": name, "args": args}} for name, args in plan.calls]

        def response(parts: list[dict], finish: str | None, use: dict) -> dict:
            cand: dict = {"content": {"parts": parts, "role": "model"}}
            if finish:
                cand["finishReason"] = finish
            cand["index"] = 0
            return {"candidates": [cand], "usageMetadata": use, **meta}

        if action == "generateContent":
            parts = calls or [{"text": plan.text}]
            return JSONResponse(response(parts, reason, usage))

        mode = fault.mode if fault else None
        alt_sse = request.query_params.get("alt") == "sse"
        # Every chunk carries the usage so far; the last one the full usage and the finishReason.
        steps: list[tuple[list[dict], str | None, dict]] = []
        pieces = plan.pieces if not calls else []
        for i, piece in enumerate(pieces):
            done = i == len(pieces) - 1
            steps.append(([{"text": piece}], reason if done else None,
                          usage if done else {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens}))
        if calls or not pieces:
            steps.append((calls or [{"text": ""}], reason, usage))

        def frame(obj: dict, first: bool) -> bytes:
            data = json.dumps(obj, separators=(",", ":"))
            return f"data: {data}\r\n\r\n".encode() if alt_sse else (("[" if first else "\n,\r\n") + data).encode()

        async def gen():
            for i, (parts, finish, use) in enumerate(steps):
                await token_pause(state)
                if mode in ("drop_mid_stream", "stream_error") and (i >= 2 or i == len(steps) - 1):
                    if mode == "drop_mid_stream":
                        raise DropConnection()
                    err = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                     "status": "UNAVAILABLE"}}
                    yield frame(err, i == 0)
                    if not alt_sse:
                        yield b"]"
                    return
                yield frame(response(parts, finish, use), i == 0)
            if not alt_sse:
                yield b"]"

        media = "text/event-stream" if alt_sse else "application/json; charset=UTF-8"
        return StreamingResponse(stream_guard(state, gen()), media_type=media)

    async def models(request: Request) -> Response:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not state.key_ok(key):
            return error(400, "API key not valid. Please pass a valid API key.")
        return JSONResponse({"models": [
            {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": [
                "generateContent", "countTokens"]} for m in LISTED + sorted(state.models)]})

    return Starlette(routes=admin_routes(state) + [
        Route("/{version}/models", models),
        Route("/{version}/models/{target}", generate, methods=["POST"]),
    ])


if __name__ == "__main__":
    from tests.fakes import serve_main
    serve_main("gemini")
