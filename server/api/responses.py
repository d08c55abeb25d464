"""OpenAI Responses API: POST /v1/responses (streamed too), for any chat model in the catalog, through
the canonical format (server/translate/responses.py): failover, resumable streams, spend and metadata
as for chat completions. `previous_response_id` continues a conversation the gateway stored (unless
the request said `"store": false`); built-in tools (web_search, file_search, ...) are refused by name."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from server.api.body import read_body, validate
from server.api.deps import api_error
from server.relays import ResponsesRelay
from server.translate.responses import Untranslatable, conversation, from_chat_response, to_chat_request
from server.wire.responses import ResponsesRequest

if TYPE_CHECKING:
    from server.gateway import Gateway

router = APIRouter()


@router.post("/v1/responses", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}})
async def create_response(request: Request) -> Response:
    gw: Gateway = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await read_body(request)
    validate(request, ResponsesRequest, body)
    history = None
    if body.get("previous_response_id"):
        history = await gw.conversations.get(body["previous_response_id"], key.tenant_id)
        if history is None:
            raise api_error(request, 404, f"previous_response_id: no stored response {body['previous_response_id']!r}",
                            param="previous_response_id", code="previous_response_not_found")
    try:
        canonical = to_chat_request(body, history)
    except Untranslatable as e:
        raise api_error(request, 400, str(e), param=str(e).split(":")[0]) from None
    echo: dict[str, Any] = dict(body)          # new_call takes `metadata` out of the body: the answer echoes it
    stream = bool(body.get("stream"))
    call = gw.new_call(request, "responses", body["model"], key, body, stream)
    if call.resolved is not None and call.resolved.kind == "platform":
        raise api_error(request, 400, f"{call.model} is a platform model: call POST /ai/run/{call.model}")
    response_id = "resp_" + uuid.uuid4().hex
    keep = body.get("store") is not False

    def remember(output: list[dict[str, Any]]) -> None:
        if keep:
            gw.conversations.remember(response_id, key.tenant_id, conversation(canonical, output))

    if stream:
        return await gw.serve(request, key, call, "chat", canonical,
                              relay=lambda: ResponsesRelay(echo, response_id, body["model"], remember))

    def shape(result: Any) -> dict[str, Any]:
        out = from_chat_response(result, echo, response_id)
        remember(out["output"])
        return out
    return await gw.serve(request, key, call, "chat", canonical, shape=shape)
