"""Routes of the in-container HTTP server, compatible with Cog's on port 5000.
Parsing and formatting only: the lifecycle lives in runner.py."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from cogkit import __version__
from cogkit.inputs import InputRules, InputValidationError
from cogkit.runtime.runner import Busy, NotReady, Prediction, Runner
from cogkit.runtime.webhooks import EVENTS

MODES = {"predictions": "predict", "trainings": "train"}
# Cog 0.23's answers (406) to an SSE request the entry point cannot serve.
NOT_STREAMING = ("This model does not support streaming responses. "
                 "Add @cog.streaming to predict() to enable SSE.")
TRAINING_NOT_STREAMING = "Training endpoints do not support streaming responses."


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _invalid(loc: list[Any], msg: str, kind: str = "value_error") -> JSONResponse:
    return _error(422, [{"loc": loc, "msg": msg, "type": kind}])


def create_app(runner: Runner, openapi: dict[str, Any], request_shutdown: Callable[[], None]) -> FastAPI:
    app = FastAPI(title="Cog", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.runner = runner
    app.state.post_routes = {}  # path -> handler, for FastPath
    # A model with only a train entry point has no predictions surface (and no Input schema to read).
    surfaces = (["predictions"] if runner.predict_ref else []) + (["trainings"] if runner.train_ref else [])

    @app.get("/")
    async def discovery() -> dict[str, Any]:
        links = {"cog_version": __version__, "openapi_url": "/openapi.json", "shutdown_url": "/shutdown",
                 "healthcheck_url": "/health-check"}
        for surface in surfaces:
            links[f"{surface}_url"] = f"/{surface}"
            links[f"{surface}_idempotent_url"] = f"/{surface}/{{{surface[:-1]}_id}}"
            links[f"{surface}_cancel_url"] = f"/{surface}/{{{surface[:-1]}_id}}/cancel"
        return links

    @app.get("/health-check")
    async def health_check() -> dict[str, Any]:
        status = await runner.check_health()
        setup = runner.setup
        health: dict[str, Any] = {
            "status": status, "error": runner.error if status not in ("READY", "BUSY") else None,
            "setup": {"started_at": setup.started_at, "completed_at": setup.completed_at,
                      "logs": setup.logs, "status": setup.status},
            "concurrency": {"max": runner.slots, "current": len(runner.running)}}
        if status == "UNHEALTHY":  # as Cog: only present when the model's own healthcheck() failed
            health["user_healthcheck_error"] = runner.error
        return health

    @app.get("/openapi.json")
    async def openapi_document() -> Response:
        # As Cog: the schema is served once setup has succeeded (503 while starting or after a failure).
        if runner.setup.status != "succeeded":
            return JSONResponse({"error": "OpenAPI schema not available"}, status_code=503)
        return JSONResponse(openapi)

    @app.post("/shutdown")
    async def shutdown() -> dict[str, Any]:
        # After this response is sent: a graceful stop, which stops the worker too.
        asyncio.get_running_loop().call_later(0.1, request_shutdown)
        return {}

    for surface in surfaces:
        _add_prediction_routes(app, runner, openapi, surface)
    return app


def _add_prediction_routes(app: FastAPI, runner: Runner, openapi: dict[str, Any], surface: str) -> None:
    mode = MODES[surface]
    streams = mode == "predict" and bool(
        openapi.get("paths", {}).get("/predictions", {}).get("post", {}).get("x-cog-streaming"))
    rules = InputRules(openapi, mode)  # read once: validating an input is on every request's path

    async def create(request: Request) -> Response:
        prediction_id: str | None = request.path_params.get("prediction_id")
        try:
            body = await request.json()
        except ValueError:
            return _invalid(["body"], "request body must be a JSON object", "json_invalid")
        if not isinstance(body, dict):
            return _invalid(["body"], "request body must be a JSON object", "dict_type")
        if _wants_events(request) and not streams:  # checked first, as Cog does
            return JSONResponse({"error": NOT_STREAMING if mode == "predict" else TRAINING_NOT_STREAMING},
                                status_code=406)
        if prediction_id is not None:
            if body.get("id") not in (None, prediction_id):
                return _invalid(["body", "id"], f"id in the body ({body['id']!r}) differs from the URL ({prediction_id!r})")
            existing = runner.predictions.get(prediction_id)
            if existing is not None:  # idempotent: same id, same prediction
                return await _respond(request, existing, runner)
        prediction_or_error = _parse_request(body, rules, mode, prediction_id or runner.new_id())
        if isinstance(prediction_or_error, JSONResponse):
            return prediction_or_error
        try:
            prediction = await runner.submit(prediction_or_error)
        except NotReady as e:
            return _error(503, f"Model is not ready: {e}")
        except Busy as e:
            return _error(409, str(e))
        return await _respond(request, prediction, runner)

    async def cancel(request: Request) -> Response:
        prediction_id = request.path_params["prediction_id"]
        if not runner.cancel(prediction_id):
            return _error(404, f"no {surface[:-1]} with id {prediction_id!r}")
        return JSONResponse({})

    # Plain Starlette routes, not FastAPI's: these handlers read the request themselves, and
    # FastAPI's per-request dependency solving was a fifth of the server's time per prediction.
    app.add_route(f"/{surface}", create, methods=["POST"])
    app.state.post_routes[f"/{surface}"] = create
    app.add_route(f"/{surface}/{{prediction_id}}", create, methods=["PUT"])
    app.add_route(f"/{surface}/{{prediction_id}}/cancel", cancel, methods=["POST"])


class FastPath:
    """ASGI in front of the app: POST /predictions (and /trainings) go straight to their
    handler, past Starlette's middleware and route matching, which were about a third of
    the server's CPU per prediction; everything else (and lifespan) goes to the app."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.routes: dict[str, Callable[[Request], Any]] = app.state.post_routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        response = await handler(Request(scope, receive))
        await response(scope, receive, send)


def _parse_request(body: dict[str, Any], rules: InputRules, mode: str, prediction_id: str) -> Prediction | JSONResponse:
    errors: list[dict[str, Any]] = []
    raw_input = body.get("input") or {}
    try:
        # Cog's HTTP API drops fields the model does not declare (its CLI rejects them).
        clean_input = rules.validate(raw_input, ignore_undeclared=True)
    except InputValidationError as e:
        errors += e.errors
    events_filter = body.get("webhook_events_filter")
    if events_filter is not None and (not isinstance(events_filter, list) or any(e not in EVENTS for e in events_filter)):
        errors.append({"loc": ["body", "webhook_events_filter"], "msg": f"must be a list of {', '.join(EVENTS)}",
                       "type": "enum"})
    for key in ("webhook", "output_file_prefix"):
        if body.get(key) is not None and not str(body[key]).startswith(("http://", "https://")):
            errors.append({"loc": ["body", key], "msg": "must be an http(s) URL", "type": "url_type"})
    context = body.get("context") or {}
    if not isinstance(context, dict):
        errors.append({"loc": ["body", "context"], "msg": "must be an object", "type": "dict_type"})
    if errors:
        return JSONResponse({"detail": errors}, status_code=422)
    ignored = rules.undeclared(raw_input)
    logs = f"Ignored input fields the model does not declare: {', '.join(ignored)}\n" if ignored else ""
    return Prediction(id=prediction_id, input=clean_input, mode=mode, webhook=body.get("webhook"), logs=logs,
                      webhook_events_filter=events_filter, output_file_prefix=body.get("output_file_prefix"),
                      context=context, secret_inputs=rules.secrets)


def _wants_events(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


async def _respond(request: Request, prediction: Prediction, runner: Runner) -> Response:
    if _wants_events(request):
        return StreamingResponse(_event_stream(prediction), media_type="text/event-stream")
    if request.headers.get("prefer") == "respond-async":
        body = prediction.response()
        if not prediction.done.is_set():
            body["status"] = "starting"  # as Cog: accepted, not yet reported by the model
        return JSONResponse(body, status_code=202)
    await prediction.done.wait()
    return JSONResponse(prediction.response())


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _event_stream(prediction: Prediction) -> AsyncIterator[bytes]:
    """Cog's server-sent events: start, output {chunk, index}, log, metric, completed.
    A late subscriber first gets the events kept so far (COG_STREAM_HISTORY_CAPACITY of
    them); when some were already dropped it gets an error event instead, as Cog."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    if prediction.sse_skipped:
        yield _sse("error", {"error": "SSE stream replay truncated; events were dropped",
                             "skipped": prediction.sse_skipped})
        return
    for past in prediction.sse_history:
        queue.put_nowait(past)
    if prediction.done.is_set():
        if not any(name == "completed" for name, _ in prediction.sse_history):
            queue.put_nowait(("completed", prediction.response()))
    else:
        prediction.sse_listeners.append(queue.put_nowait)
    try:
        while True:
            event, data = await queue.get()
            yield _sse(event, data)
            if event == "completed":
                return
    finally:
        if queue.put_nowait in prediction.sse_listeners:
            prediction.sse_listeners.remove(queue.put_nowait)
