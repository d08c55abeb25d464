"""Request authentication and errors in the caller's own format.

Anthropic-format paths (/v1/messages...) get Anthropic's error body, Gemini-format
paths (/v1beta/...) Google's, everything else OpenAI's. The app must call
`install_error_handlers(app)` so that ApiError, RateLimited (429 + Retry-After),
InsufficientCredits (402), unknown routes (404/405), FastAPI's own validation
errors and a body over the size limit (413, server/api/body.py) turn into those bodies.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..auth import KeyInfo
from ..ledger import InsufficientCredits, RateLimited

ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   422: "invalid_request_error", 429: "rate_limit_error", 529: "overloaded_error"}
OPENAI_TYPES = {402: "insufficient_quota", 429: "rate_limit_error"}
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION",
                   403: "PERMISSION_DENIED", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ABORTED",
                   413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                   499: "CANCELLED", 500: "INTERNAL", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
                   504: "DEADLINE_EXCEEDED"}


def is_anthropic(request: Request) -> bool:
    path = request.url.path
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def is_gemini(request: Request) -> bool:
    return request.url.path.startswith("/v1beta/")


def error_body(request: Request, status: int, message: str, type_: str | None = None,
               code: str | None = None, param: str | None = None) -> dict:
    """The error body for this request's format. type_ None: the usual type for the status."""
    if is_anthropic(request):
        kind = type_ or ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if is_gemini(request):
        name = GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return {"error": {"code": status, "message": message, "status": name}}
    kind = type_ or OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(request: Request, status: int, message: str, type_: str | None = None, *,
                   code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(request, status, message, type_, code, param), status_code=status,
                        headers=headers)


class ApiError(HTTPException):
    """An HTTPException carrying a ready body. Without install_error_handlers FastAPI
    still answers, as {"detail": message}."""

    def __init__(self, status: int, body: dict, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.body = body


def api_error(request: Request, status: int, message: str, type_: str | None = None, *,
              code: str | None = None, param: str | None = None,
              headers: dict[str, str] | None = None) -> ApiError:
    """An ApiError to raise: `raise api_error(request, 404, "no such key")`."""
    return ApiError(status, error_body(request, status, message, type_, code, param), message, headers)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body, status_code=exc.status_code, headers=exc.headers)

    async def on_rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return error_response(request, 429, str(exc), code="rate_limit_exceeded",
                              headers={"Retry-After": str(exc.retry_after)})

    async def on_no_credits(request: Request, exc: InsufficientCredits) -> JSONResponse:
        return error_response(request, 402, str(exc), code="insufficient_quota")

    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own 404/405 (no such route, wrong method), in the client's format."""
        if exc.status_code == 404:
            message = f"No such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.url.path} does not accept {request.method}"
        else:
            message = str(exc.detail)
        return error_response(request, exc.status_code, message, headers=getattr(exc, "headers", None))

    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """A body or parameter FastAPI validated (the admin API): 422 naming the field."""
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in err["loc"]) or "body"
        return error_response(request, 422, f"{field}: {err['msg']}", param=field)

    async def on_too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # The JSON parsers give up on a body nested this deep before any handler sees it.
        return error_response(request, 400, "The request body is nested too deeply (limits.max_json_depth).")

    async def on_not_unicode(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        # A lone surrogate ("\\ud800") that reached a field checked nowhere else, refused by the store.
        return error_response(request, 400, "The request contains a lone UTF-16 surrogate, which is not valid "
                                            "Unicode.")

    from server.api.body import BodyLimit  # (body imports this module)
    app.add_middleware(BodyLimit)           # its 413 is an error in the caller's format too
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RateLimited, on_rate_limited)
    app.add_exception_handler(InsufficientCredits, on_no_credits)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(RecursionError, on_too_deep)
    app.add_exception_handler(UnicodeEncodeError, on_not_unicode)


def presented_key(request: Request) -> str | None:
    """Bearer (OpenAI SDKs), x-api-key (Anthropic's), x-goog-api-key or ?key= (Google's)."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    for header in ("x-api-key", "x-goog-api-key"):
        if request.headers.get(header, "").strip():
            return request.headers[header].strip()
    return (request.query_params.get("key") or "").strip() or None if is_gemini(request) else None


def _unauthorized(request: Request, message: str) -> ApiError:
    if is_anthropic(request):
        return api_error(request, 401, message, "authentication_error")
    return api_error(request, 401, message, "invalid_request_error", code="invalid_api_key")


def require_key(request: Request) -> KeyInfo:
    """The caller's key (also left on request.state.key), or 401 in the caller's format.
    Usable as a FastAPI dependency or called directly."""
    plaintext = presented_key(request)
    if plaintext is None:
        raise _unauthorized(request, "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'.")
    info = request.app.state.gateway.auth.authenticate(plaintext)
    if info is None:
        raise _unauthorized(request, "Invalid API key.")
    request.state.key = info
    return info


def require_admin(request: Request) -> KeyInfo:
    """An admin key, else 401 (no/bad key) or 403."""
    info = require_key(request)
    if not info.admin:
        raise api_error(request, 403, "This endpoint needs an admin key.", code="insufficient_permissions")
    return info
