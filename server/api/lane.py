"""The fast lane: the client-format POSTs (chat completions, messages, responses...) go from the
server straight to their handlers, past Starlette's middleware stack, when their body declares a
length within the limit. Everything else takes the full stack.

Why: a streamed chat completion crossed nine ASGI layers on its way in (server errors, telemetry,
two body limits, exceptions, exit stacks, the router, the route, its exception wrapper), and every
message out crossed their send wrappers. Measured on benchmarks/gateway_vs_litellm.py with the
lane against without it, in one session: ~0.1 ms of CPU per streamed request at one stream, where
the whole request takes ~1 ms.

What the stack did for these requests, the lane does the same way: a body over
limits.max_body_bytes (or of no declared length, which is counted as it arrives) goes to the full
stack, whose BodyLimit refuses it; an exception a handler was registered for gets that handler's
answer; any other gets the app's 500 (a plain one, as from Starlette's ServerErrorMiddleware) and
goes on up to the server, which logs it. Middleware added to the app later does not see these requests: add it
here too, or take the route out of the lane.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from server.api.body import limits_of

Endpoint = Callable[[Request], Awaitable[Response]]


class FastLane:
    def __init__(self, app: FastAPI, routes: Iterable[Route]) -> None:
        self.app = app
        self.endpoints: dict[str, Endpoint] = {}
        for route in routes:
            if "POST" in (route.methods or ()) and "{" not in route.path:
                self.endpoints[route.path] = route.endpoint

    def endpoint_for(self, scope: Scope) -> Endpoint | None:
        """The handler, for a request the lane may take; None: the full stack takes it."""
        if scope["method"] != "POST":
            return None
        endpoint = self.endpoints.get(scope["path"])
        if endpoint is None:
            return None
        for name, value in scope["headers"]:
            if name == b"content-length":
                ok = value.isdigit() and int(value) <= limits_of(self.app).max_body_bytes
                return endpoint if ok else None
        return None

    async def serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self.app                  # (as Starlette sets it: request.app)
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            handler = self.handler_for(exc)
            if handler is None:
                last: Any = self.app.exception_handlers.get(Exception) or self.app.exception_handlers.get(500)
                failed = (await last(request, exc) if last is not None
                          else PlainTextResponse("Internal Server Error", status_code=500))
                await failed(scope, receive, send)
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def handler_for(self, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
        """The app's exception handler for `exc`, looked up as Starlette's ExceptionMiddleware does."""
        handlers = self.app.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]  # type: ignore[return-value]
        for cls in type(exc).__mro__:
            if cls in handlers and cls is not Exception:
                return handlers[cls]  # type: ignore[return-value]
        return None
