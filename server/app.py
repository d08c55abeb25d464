"""The app factory: builds the FastAPI app around one Gateway (server/gateway.py) and mounts the
routes of server/api/*. Nothing here runs per request."""
from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.api import admin, anthropic, gemini, openai, responses, run, spend, streams
from server.api.deps import install_error_handlers
from server.api.lane import FastLane
from server.catalog import UnknownModel
from server.config import GatewayConfig
from server.gateway import Gateway
from server.platform import api_deployments, api_models, api_replicate


def create_app(config: GatewayConfig) -> FastAPI:
    gateway = Gateway(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    # FastAPI's own OpenTelemetry hooks off: the gateway has its metrics (/metrics) and log lines, and
    # the hooks ask the OpenTelemetry globals (environment lookups) on every request: about 3 % of the
    # gateway's CPU under streaming load, for nothing when no provider is configured.
    app = GatewayApp(title="cogkit gateway", lifespan=lifespan, docs_url=None, redoc_url=None,
                     telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.gateway = gateway
    install_error_handlers(app)
    # The client-format routes first: Starlette tries the routes in order, and behind the platform's
    # 30-odd routes a chat completion cost ~28 route matches (a quarter of the request's CPU in FastAPI).
    # None of their paths overlaps another router's.
    for module in (openai, anthropic, responses, gemini, run, streams):
        app.include_router(module.router)
    for platform_module in (api_models, api_deployments, api_replicate):   # before openai's /v1/models/{model}
        app.include_router(platform_module.router)
    for router in (openai.models_router, spend.router, admin.router):
        app.include_router(router)
    # ...and the client-format POSTs that take only the request once more, in front, as plain Starlette
    # routes: the same handlers and error handlers, without FastAPI's per-request dependency solving
    # and exit stacks (~10 % of the gateway's CPU per streamed request). FastAPI's copies are never
    # reached; they stay for the OpenAPI document.
    hot = plain_routes(openai.router, anthropic.router, responses.router)
    app.router.routes[:0] = hot
    app.lane = FastLane(app, hot)       # and, with a body of declared length, straight from the server

    @app.exception_handler(UnknownModel)
    async def on_unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
        return gateway.serving.unknown_model(request, exc)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type=gateway.metrics.content_type)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "cooling": gateway.router.cooling()}

    logging.getLogger("uvicorn.error").propagate = False
    return app


class GatewayApp(FastAPI):
    """FastAPI, but for the requests its fast lane takes (server/api/lane.py)."""
    lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.lane is not None:
            endpoint = self.lane.endpoint_for(scope)
            if endpoint is not None:
                await self.lane.serve(endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def plain_routes(*routers: APIRouter) -> list[Route]:
    """Starlette routes for the routers' endpoints whose only parameter is the request."""
    return [Route(route.path, route.endpoint, methods=sorted(route.methods or ()), name=route.name)
            for router in routers for route in router.routes
            if isinstance(route, APIRoute) and list(inspect.signature(route.endpoint).parameters) == ["request"]]
