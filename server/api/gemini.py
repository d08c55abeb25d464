"""Gemini API as a client format: POST /v1beta/models/{model}:generateContent and
:streamGenerateContent?alt=sse, for any chat model in the catalog (the google-genai SDK as client).
The key comes as `x-goog-api-key` (what the SDK sends) or `?key=`; errors in Google's format."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import read_body, validate
from server.api.deps import api_error
from server.relays import GeminiRelay
from server.translate.gemini import gemini_to_openai_request, openai_to_gemini_response
from server.wire.gemini import GenerateContentRequest

if TYPE_CHECKING:
    from server.gateway import Gateway

router = APIRouter()
ACTIONS = ("generateContent", "streamGenerateContent")


@router.post("/v1beta/models/{target:path}", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": GenerateContentRequest.model_json_schema(
        ref_template="#/components/schemas/{model}")}}}})
async def generate(request: Request, target: str) -> Response:
    """`target` is `<model>:<action>`; the model may hold slashes (`openai/gpt-4o-mini`)."""
    gw: Gateway = request.app.state.gateway
    model, sep, action = target.rpartition(":")
    if not sep or action not in ACTIONS or not model:
        raise api_error(request, 404, f"No such method: {target!r} (expected <model>:generateContent or "
                                      "<model>:streamGenerateContent)")
    key = await gw.authenticate(request)
    body = await read_body(request)
    validate(request, GenerateContentRequest, body)
    if not body.get("contents"):
        raise api_error(request, 400, "contents: at least one content is required", param="contents")
    stream = action == "streamGenerateContent"
    canonical: dict[str, Any] = gemini_to_openai_request(body, model)
    if stream:
        canonical["stream"] = True
    call = gw.new_call(request, "gemini", model, key, body, stream)
    if call.resolved is not None and call.resolved.kind == "platform":
        raise api_error(request, 400, f"{call.model} is a platform model: call POST /ai/run/{call.model}")
    if stream:
        return await gw.serve(request, key, call, "chat", canonical, relay=lambda: GeminiRelay(model))
    return await gw.serve(request, key, call, "chat", canonical,
                          shape=lambda result: openai_to_gemini_response(result, model))
