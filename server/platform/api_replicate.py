"""Replicate's HTTP API for platform models, so the `replicate` client (base_url = this
gateway) and anything written for Replicate work against one's own platform:

    POST /v1/models/{owner}/{name}/predictions     {"input", "webhook", "webhook_events_filter", "stream"}
    POST /v1/predictions                           the same with "version": an id, or "owner/name[:ref]"
    POST /v1/deployments/{owner}/{name}/predictions  the version that deployment runs
    GET  /v1/predictions                           {"next", "previous", "results"}
    GET  /v1/predictions/{id}
    POST /v1/predictions/{id}/cancel
    GET  /v1/predictions/{id}/stream               SSE: output, logs, error, done
    POST /v1/files                                 upload a file input (multipart `content`)
    GET  /v1/files/{name}                          file inputs and outputs

`Prefer: wait` (or `wait=N`, at most 60 s) answers once the prediction ends or N seconds pass,
with the prediction as it stands. Errors are Replicate's {"detail", "status", "title"}; a bad
input is a 422 with its `invalid_fields`, before any replica is touched.
"""
from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import re
import time
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from server.api.deps import ApiError
from server.status import CANCELED, ERROR, OK, Status
from server.usage import of_metrics
from server.catalog import Target, UnknownModel
from server.platform.api_models import json_body, problem
from server.platform.predictions import TERMINAL, WEBHOOK_EVENTS, Prediction, new_id
from server.platform.service import PROVIDER, InputError

router = APIRouter()
WAIT_DEFAULT, WAIT_MAX = 60.0, 60.0
MAX_UPLOAD = 100_000_000     # bytes of one uploaded file
PREFER_WAIT = re.compile(r"\bwait(?:\s*=\s*(\d+(?:\.\d+)?))?\b")


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _wait_seconds(request: Request) -> float | None:
    prefer = request.headers.get("prefer", "")
    m = PREFER_WAIT.search(prefer)
    if not m:
        return None
    return min(WAIT_MAX, float(m.group(1))) if m.group(1) else WAIT_DEFAULT


async def _create(request: Request, model_string: str) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        return problem(400, "the body must be a JSON object with `input`")
    inputs = body.get("input", {})
    webhook = body.get("webhook")
    if webhook is not None and (not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))):
        return problem(422, "webhook: expected an http(s) URL")
    events = body.get("webhook_events_filter") or list(WEBHOOK_EVENTS)
    if not isinstance(events, list) or any(e not in WEBHOOK_EVENTS for e in events):
        return problem(422, f"webhook_events_filter: expected a list of {', '.join(WEBHOOK_EVENTS)}")
    try:
        call = gw.new_call(request, "run", model_string, key, {}, bool(body.get("stream")))
    except ApiError as e:
        return problem(e.status_code, str(e.detail))
    except UnknownModel:
        return problem(404, f"there is no model {model_string.lstrip('@')} (or it is private to another tenant)")
    if call.resolved is None or call.resolved.kind != "platform" or call.resolved.version is None:
        return problem(404, f"{model_string.lstrip('@')} is not a model of this platform")
    version = gw.platform.version(call.resolved.version)
    try:
        inputs = gw.platform.validate(version, await asyncio.to_thread(gw.platform.files.inline, inputs,
                                                                       _base_url(request)))
    except InputError as e:
        return JSONResponse({"detail": e.message, "status": 422, "title": "Input validation failed",
                             "invalid_fields": [{"type": "invalid", "field": e.field or "input",
                                                 "description": e.message}]}, status_code=422)
    await gw.admission.admit(call, key, inputs)
    call.target = Target(PROVIDER, call.resolved.targets[0].upstream_model)
    call.attempted.append(PROVIDER)
    p = Prediction(new_id(), key.tenant_id, version.model_name, version.id, call.resolved.targets[0].upstream_model,
                   inputs, webhook, tuple(events), bool(body.get("stream")))
    call.metadata["prediction_id"] = p.id

    def on_end(done: Prediction) -> None:
        call.input_tokens, call.output_tokens = of_metrics(done.metrics) or (0, 0)
        if done.metrics.get("predict_time") is not None:
            call.metadata["predict_time"] = done.metrics["predict_time"]
        if done.metrics.get("cold_start_time") is not None:
            call.metadata["cold_start_ms"] = round(done.metrics["cold_start_time"] * 1000)
        status: Status = {"succeeded": OK, "canceled": CANCELED}.get(done.status, ERROR)
        gw.billing.finish(call, key, status, done.error)

    base = _base_url(request)
    runner = gw.platform.predictions
    runner.start(p, base, on_end)
    wait = _wait_seconds(request)
    if wait:
        await runner.wait(p, wait)
    headers = {"x-cogkit-request-id": call.request_id}
    if p.metrics.get("cold_start_time"):
        headers["x-cogkit-cold-start-ms"] = f"{p.metrics['cold_start_time'] * 1000:.0f}"
    return JSONResponse(p.view(base), status_code=201, headers=headers)


@router.post("/v1/models/{owner}/{name}/predictions")
async def create_model_prediction(request: Request, owner: str, name: str) -> Response:
    return await _create(request, f"@{owner}/{name}")


@router.post("/v1/deployments/{owner}/{name}/predictions")
async def create_deployment_prediction(request: Request, owner: str, name: str) -> Response:
    """Replicate's call of a deployment by its name: the version it runs."""
    gw = request.app.state.gateway
    d = await asyncio.to_thread(gw.platform.deployments.get, f"{owner}/{name}")
    if d is None:
        return problem(404, f"there is no deployment {owner}/{name}")
    model = f"@{d.model_name}" + (f":{d.version_id}" if d.version_id else "")
    return await _create(request, model)


@router.post("/v1/predictions")
async def create_prediction(request: Request) -> Response:
    gw = request.app.state.gateway
    body = await json_body(request)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str) or not version:
        return problem(422, "version: expected a version id, or owner/name[:version]")
    if "/" in version:
        return await _create(request, "@" + version.lstrip("@"))
    found = await asyncio.to_thread(gw.platform.registry.get_version_by_id, version)
    if found is None:
        return problem(404, f"version: there is no version {version!r}")
    return await _create(request, f"@{found.model_name}:{found.id}")


async def _find(request: Request, pid: str) -> Prediction | JSONResponse:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    p = await asyncio.to_thread(gw.platform.predictions.get, pid, None if key.admin else key.tenant_id)
    return p if p is not None else problem(404, f"there is no prediction {pid}")


@router.get("/v1/predictions")
async def list_predictions(request: Request) -> Response:
    gw = request.app.state.gateway
    key = await gw.authenticate(request)
    runner = gw.platform.predictions
    ids = await asyncio.to_thread(runner.list, None if key.admin else key.tenant_id)
    base = _base_url(request)
    results = []
    for item in ids:
        p = await asyncio.to_thread(runner.get, item["id"], None)
        if p is not None:
            results.append(p.view(base))
    return JSONResponse({"next": None, "previous": None, "results": results})


@router.get("/v1/predictions/{pid}")
async def get_prediction(request: Request, pid: str) -> Response:
    p = await _find(request, pid)
    return p if isinstance(p, JSONResponse) else JSONResponse(p.view(_base_url(request)))


@router.post("/v1/predictions/{pid}/cancel")
async def cancel_prediction(request: Request, pid: str) -> Response:
    p = await _find(request, pid)
    if isinstance(p, JSONResponse):
        return p
    await request.app.state.gateway.platform.predictions.cancel(p)
    return JSONResponse(p.view(_base_url(request)))


@router.get("/v1/predictions/{pid}/stream")
async def stream_prediction(request: Request, pid: str) -> Response:
    p = await _find(request, pid)
    if isinstance(p, JSONResponse):
        return p
    if not p.stream:
        return problem(404, f"prediction {pid} was not created with \"stream\": true")

    async def events(p: Prediction) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            while sent < len(p.events):
                event, data = p.events[sent]
                sent += 1
                lines = "".join(f"data: {line}\n" for line in (data.split("\n") if data else [""]))
                yield f"event: {event}\nid: {sent}\n{lines}\n".encode()
                if event == "done":
                    return
            if p.status in TERMINAL and sent >= len(p.events):
                return
            await p.changed.wait()
    return StreamingResponse(events(p), media_type="text/event-stream", headers={"cache-control": "no-store"})


@router.post("/v1/files")
async def upload_file(request: Request) -> Response:
    """Replicate's file upload (multipart, field `content`), as the replicate client sends file inputs."""
    gw = request.app.state.gateway
    await gw.authenticate(request)
    body = await request.body()
    if len(body) > MAX_UPLOAD:
        return problem(413, f"the file is larger than {MAX_UPLOAD // 1_000_000} MB")
    part = _multipart_file(request.headers.get("content-type", ""), body)
    if part is None:
        return problem(422, "content: expected a multipart/form-data body with a file in `content`")
    filename, mime, data = part
    if mime == "application/octet-stream":
        mime = mimetypes.guess_type(filename)[0] or sniff(data) or mime
    name = await asyncio.to_thread(gw.platform.files.save, data, mime)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return JSONResponse({"id": name, "name": filename, "content_type": mime, "size": len(data),
                         "etag": hashlib.sha256(data).hexdigest(),
                         "checksums": {"sha256": hashlib.sha256(data).hexdigest()}, "metadata": {},
                         "created_at": now, "expires_at": None,
                         "urls": {"get": f"{_base_url(request)}/v1/files/{name}"}}, status_code=201)


MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
         (b"%PDF", "application/pdf"), (b"RIFF", "audio/wav"))


def sniff(data: bytes) -> str | None:
    """A file's type from its first bytes, when the upload said only octet-stream."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in MAGIC if data.startswith(magic)), None)


def _multipart_file(content_type: str, body: bytes) -> tuple[str, str, bytes] | None:
    """(filename, content type, bytes) of the `content` part (the standard library's MIME parser)."""
    if not content_type.startswith("multipart/form-data"):
        return None
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "content":
            data = part.get_payload(decode=True)
            if isinstance(data, bytes):
                return part.get_filename() or "file", part.get_content_type(), data
    return None


@router.get("/v1/files/{name}")
async def get_file(request: Request, name: str) -> Response:
    gw = request.app.state.gateway
    await gw.authenticate(request)
    path = gw.platform.files.path(name)
    if path is None:
        return problem(404, f"there is no file {name}")
    return FileResponse(path)

