"""Request bodies: the size limit (an ASGI middleware, for every route), JSON parsing that a hostile
body cannot turn into a 500 (nesting, lone surrogates), validation against a wire model with a
422 naming the field, and the per-field limits (names, file inputs). Every answer is a 4xx in the
caller's format; the limits are `limits:` in the gateway config."""
from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.deps import api_error, error_response
from server.config import LimitsConfig
from server.jsonio import loads

DRAIN_CAP = 256 * 1024 * 1024      # bytes of an over-long body read and dropped, so the client gets the 413


class _BodyTooLarge(Exception):
    pass


def limits_of(app: Any) -> LimitsConfig:
    """The app's configured limits (the defaults for an app mounted without a full gateway config)."""
    config = getattr(getattr(app.state, "gateway", None), "config", None)
    limits = getattr(config, "limits", None)
    return limits if isinstance(limits, LimitsConfig) else LimitsConfig()


def too_large_message(limit: int) -> str:
    return f"The request body is larger than the gateway's limit of {limit} bytes (limits.max_body_bytes)."


class BodyLimit:
    """Refuses a body over limits.max_body_bytes with a 413: at once when its content-length says so,
    else as soon as the chunks received pass it. Nothing over the limit is held in memory."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limits_of(scope["app"]).max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit():
            if int(declared) > limit:
                await self._drain(receive)
                await self._refuse(scope, receive, send, limit)
                return
            await self.app(scope, receive, send)   # the server holds the body to its content-length
            return
        seen, started, whole = 0, False, False

        async def counted() -> Message:
            nonlocal seen, whole
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                whole = not message.get("more_body")
                if seen > limit:
                    raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if started:
                raise
            if not whole:   # (after the body's last message, the server's receive waits for the client to leave)
                await self._drain(receive)
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _drain(receive: Receive) -> None:
        """Read (and drop) the rest of the body, so the client is not cut off mid-upload."""
        dropped = 0
        while dropped < DRAIN_CAP:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = error_response(Request(scope), 413, too_large_message(limit), code="request_too_large")
        await response(scope, receive, send)


async def read_body(request: Request, wire: type[BaseModel] | None = None) -> dict[str, Any]:
    """The JSON body as a dict, checked against its wire model (a bad field -> 422 naming it).
    The dict itself goes on, so fields the model doesn't know pass through untouched."""
    raw = await request.body()
    body = parse_json(request, raw)
    if not isinstance(body, dict):
        raise api_error(request, 400, "The request body must be a JSON object.")
    if wire is not None:
        validate(request, wire, body)
    return body


def parse_json(request: Request, raw: bytes) -> Any:
    limits = limits_of(request.app)
    try:
        # orjson first (server/jsonio.py: ~5x faster on every request body), the standard library for
        # what orjson refuses, so its answers (and the errors below) are the standard library's.
        value = loads(raw or b"null")
    except RecursionError:
        raise api_error(request, 400, f"The request body is nested more than {limits.max_json_depth} levels deep "
                                      "(limits.max_json_depth).") from None
    except ValueError:   # UnicodeDecodeError too: bytes that are not UTF-8 (a raw lone surrogate)
        raise api_error(request, 400, "The request body is not valid JSON in UTF-8.") from None
    # Cheap guards first: only a body with that many brackets can be that deep, only one with a
    # \\ud escape can hold a lone surrogate (raw ones are not UTF-8: refused above).
    surrogates = b"\\ud" in raw or b"\\uD" in raw
    if surrogates or raw.count(b"[") + raw.count(b"{") > limits.max_json_depth:
        check_tree(request, value, limits.max_json_depth, surrogates)
    return value


def check_tree(request: Request, value: Any, max_depth: int, surrogates: bool = True) -> None:
    """400 for nesting past max_depth or (with `surrogates`) a string that is not valid Unicode (a lone
    surrogate), naming where. Iterative: a deep body cannot exhaust the stack here."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            raise api_error(request, 400, f"The request body is nested more than {max_depth} levels deep "
                                          "(limits.max_json_depth).")
        if isinstance(item, str):
            if surrogates:
                _check_text(request, item, path)
        elif isinstance(item, dict):
            for k, v in item.items():
                if surrogates:
                    _check_text(request, k, path)
                stack.append((v, (*path, k)))
        elif isinstance(item, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(item))


def _check_text(request: Request, text: str, path: tuple[str | int, ...]) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        field = ".".join(map(str, path)) or "body"
        raise api_error(request, 400, f"{field}: contains a lone UTF-16 surrogate, which is not valid Unicode",
                        param=field) from None


def validate(request: Request, wire: type[BaseModel], body: Any, prefix: tuple[str | int, ...] = ()) -> None:
    """422 naming the first bad field, by its path in the body (pydantic's union labels left out)."""
    try:
        wire.model_validate(body)
    except ValidationError as e:
        paths = [(field_path(body, err["loc"]), err["msg"]) for err in e.errors()]
        path, msg = max(paths, key=lambda p: len(p[0]))   # the deepest: the most precise
        field = ".".join(map(str, (*prefix, *path))) or "body"
        raise api_error(request, 422, f"{field}: {msg}", param=field) from None


def field_path(body: Any, loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """pydantic's error location, keeping only the steps that exist in the body: a tagged union adds
    labels ('user', 'str', 'list[...]') that a client never wrote."""
    out: list[str | int] = []
    here = body
    for step in loc:
        if isinstance(step, int) and isinstance(here, list) and 0 <= step < len(here):
            here = here[step]
            out.append(step)
        elif isinstance(step, str) and isinstance(here, dict) and step in here:
            here = here[step]
            out.append(step)
        elif isinstance(step, str) and isinstance(here, dict) and step == loc[-1]:
            out.append(step)     # a required field that is missing: its name
    return tuple(out)


def check_name(request: Request, field: str, value: str | None) -> None:
    """413 for a name or id longer than limits.max_name_chars."""
    limit = limits_of(request.app).max_name_chars
    if value is not None and len(value) > limit:
        raise api_error(request, 413, f"{field}: longer than the gateway's limit of {limit} characters "
                                      "(limits.max_name_chars).", param=field)


def check_files(request: Request, inputs: dict[str, Any]) -> None:
    """413 for a file input (a data: URL) whose content is over limits.max_file_bytes."""
    limit = limits_of(request.app).max_file_bytes
    for name, value in inputs.items():
        if isinstance(value, str) and value.startswith("data:") and "," in value[:256]:
            header, _, data = value.partition(",")
            size = len(data) * 3 // 4 if header.endswith(";base64") else len(data.encode())
            if size > limit:
                raise api_error(request, 413, f"{name}: a file of about {size} bytes, over the gateway's limit of "
                                              f"{limit} bytes per file (limits.max_file_bytes).", param=name)


def openapi_body(wire: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (read_body): the wire model's JSON schema
    as the request body of the OpenAPI document, its $defs inlined (a route cannot add components), so
    clients and schemathesis see what the route takes."""
    schema = wire.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any, depth: int) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                # a recursive model ends, a few levels down, in "any JSON": still a valid schema
                return inline(defs[ref.rsplit("/", 1)[-1]], depth + 1) if depth < 6 else {}
            return {k: inline(v, depth) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v, depth) for v in node]
        return node
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema, 0)}}}}
