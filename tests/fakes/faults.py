"""What the three fakes share: run-time state (faults, settings, counters, request log), the
admin endpoints, the deterministic reply plan, and the socket-level tricks for faults that no
HTTP response can express ("down": close the connection without answering; "drop_mid_stream").

Admin endpoints (on every fake, never faulted, never counted):
  POST /_fault  {"mode": "down"|"slow_first_token"|"error_500"|"overloaded"|"rate_limit"|
                 "drop_mid_stream"|"stream_error"|"context_window"|null, "delay": s, "times": n,
                 "retry_after": s}         times: the fault hits the next n requests, then clears
  POST /_config {"api_key", "token_delay", "context_window", "models"}
  GET  /_stats   {"requests", "by_path", "in_flight", "streams_completed", "streams_aborted"}
  GET  /_requests  the last 200 requests: method, path, query, headers, json
  POST /_reset   clear fault, counters and log
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.auto import AutoHTTPProtocol

MODES = {"down", "slow_first_token", "error_500", "overloaded", "rate_limit", "drop_mid_stream",
         "stream_error", "context_window"}


class DropConnection(Exception):
    """Raised inside a response to make uvicorn close the socket mid-body (no terminator)."""


class _QuietDrops(logging.Filter):
    # uvicorn logs every exception out of the app; a deliberate drop is not worth a traceback.
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _is_drop(exc) and "without completing response" not in record.getMessage()


def _is_drop(exc) -> bool:
    if isinstance(exc, DropConnection):
        return True
    return isinstance(exc, BaseExceptionGroup) and any(_is_drop(e) for e in exc.exceptions)


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


@dataclass
class Fault:
    mode: str | None = None
    delay: float = 0.0
    times: int | None = None          # None: until cleared
    retry_after: float = 1.0


@dataclass
class FakeState:
    kind: str
    api_key: str | None = "test-key"  # None: any non-empty key is accepted
    token_delay: float = 0.0          # seconds before each streamed token (TTFT / throughput runs)
    context_window: int | None = None  # prompt tokens above this -> the provider's context error
    models: set[str] = field(default_factory=set)    # accepted besides the kind's model families
    fault: Fault = field(default_factory=Fault)
    requests: int = 0
    by_path: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    streams_completed: int = 0
    streams_aborted: int = 0
    log: deque = field(default_factory=lambda: deque(maxlen=200))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_fault(self, mode: str | None = None, delay: float = 0.0, times: int | None = None,
                  retry_after: float = 1.0) -> None:
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown fault mode {mode!r}; one of {sorted(MODES)}")
        with self.lock:
            self.fault = Fault(mode, float(delay or 0), times, float(retry_after))

    def take_fault(self) -> Fault | None:
        """The fault for this request (consuming one of `times`), or None."""
        with self.lock:
            f = self.fault
            if f.mode is None:
                return None
            if f.times is not None:
                f.times -= 1
                if f.times <= 0:
                    self.fault = Fault()
            return Fault(f.mode, f.delay, None, f.retry_after)

    def count(self, path: str) -> None:
        with self.lock:
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1

    def stats(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "by_path": dict(self.by_path), "in_flight": self.in_flight,
                    "streams_completed": self.streams_completed, "streams_aborted": self.streams_aborted,
                    "fault": self.fault.mode}

    def reset(self) -> None:
        with self.lock:
            self.fault = Fault()
            self.requests, self.by_path, self.in_flight = 0, {}, 0
            self.streams_completed = self.streams_aborted = 0
            self.log.clear()

    def configure(self, **settings) -> None:
        for key, value in settings.items():
            if key not in ("api_key", "token_delay", "context_window", "models"):
                raise ValueError(f"unknown setting {key!r}")
            setattr(self, key, set(value or ()) if key == "models" else value)

    def key_ok(self, key: str | None) -> bool:
        return bool(key) and (self.api_key is None or key == self.api_key)


async def begin_reply(state: FakeState, refusal: Callable[[Fault | None], Response | None]
                      ) -> tuple[Fault | None, Response | None]:
    """The prelude every fake's answering endpoint shares, once its own checks passed: take this request's
    fault; `refusal(fault)` is the error response it (or an over-long prompt) turns into, if any; else a
    slow_first_token fault is waited out here. Returns (fault, refusal or None)."""
    fault = state.take_fault()
    refused = refusal(fault)
    if refused is None and fault is not None and fault.mode == "slow_first_token":
        await asyncio.sleep(fault.delay)
    return fault, refused


async def record(state: FakeState, request: Request) -> dict | None:
    """Count and log a provider request; returns its JSON body (None when not JSON)."""
    state.count(request.url.path)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    state.log.append({"method": request.method, "path": request.url.path, "query": str(request.url.query),
                      "headers": dict(request.headers), "json": body, "time": time.time()})
    return body


async def stream_guard(state: FakeState, gen):
    """Wraps a streaming body to keep the in-flight / completed / aborted counters."""
    with state.lock:
        state.in_flight += 1
    done = False
    try:
        async for item in gen:
            yield item
        done = True
    finally:
        with state.lock:
            state.in_flight -= 1
            if done:
                state.streams_completed += 1
            else:
                state.streams_aborted += 1


async def token_pause(state: FakeState) -> None:
    if state.token_delay > 0:
        await asyncio.sleep(state.token_delay)


def admin_routes(state: FakeState) -> list[Route]:
    async def fault(request: Request) -> Response:
        body = await request.json() if await request.body() else {}
        try:
            state.set_fault(body.get("mode"), body.get("delay", 0), body.get("times"), body.get("retry_after", 1))
        except ValueError as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"ok": True})

    async def config(request: Request) -> Response:
        try:
            state.configure(**(await request.json()))
        except (ValueError, TypeError) as e:
            return JSONResponse({"error": str(e)}, 400)
        return JSONResponse({"ok": True})

    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    async def requests(request: Request) -> Response:
        return JSONResponse(list(state.log))

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    return [Route("/_fault", fault, methods=["POST"]), Route("/_config", config, methods=["POST"]),
            Route("/_stats", stats), Route("/_requests", requests), Route("/_reset", reset, methods=["POST"])]


def protocol_for(state: FakeState) -> type:
    """uvicorn's HTTP protocol, except that under the "down" fault a provider request's
    connection is closed before any response byte (what a crashed upstream looks like)."""

    class FaultyProtocol(AutoHTTPProtocol):
        def data_received(self, data: bytes) -> None:
            if state.fault.mode == "down":
                head = data[:200].split(b" ", 2)
                if len(head) > 2 and head[0].isalpha() and head[0].isupper() and not head[1].startswith(b"/_"):
                    if state.take_fault() is not None:
                        state.count(head[1].split(b"?")[0].decode("latin-1"))
                        self.transport.abort()
                        return
            super().data_received(data)

    return FaultyProtocol


# ---------------------------------------------------------------- the deterministic reply
WORD = re.compile(r"\s*\S+")
CALL = re.compile(r"\bcall\s+([A-Za-z_][\w.-]*)")
ARG = re.compile(r"(\w+)=(\"[^\"]*\"|\S+)")


def tokens(text: str) -> int:
    return len(text.split())


@dataclass
class Plan:
    pieces: list[str]                  # the reply text, one whitespace token per piece
    calls: list[tuple[str, dict]]      # (tool name, arguments)
    finish: str                        # "stop" | "length" | "tool_calls" | "stop_sequence"
    stop_sequence: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces) + sum(tokens(name) + tokens(json.dumps(args)) for name, args in self.calls)


def plan_reply(user_text: str, tool_names: list[str], tool_result: str | None = None,
               max_tokens: int | None = None, stop: list[str] | None = None) -> Plan:
    """The reply every fake gives: a tool call when the request has tools and the last user
    text says "call <toolname>" (arguments from key=value pairs in that text); after a tool
    result "Tool result: <result>"; otherwise "Echo: <last user text>". Then stop sequences
    and max_tokens cut it, as a model would."""
    if tool_result is None and tool_names:
        calls = []
        for name in CALL.findall(user_text):
            if name in tool_names and name not in [c[0] for c in calls]:
                args = {}
                for key, value in ARG.findall(user_text):
                    try:
                        args[key] = json.loads(value)
                    except ValueError:
                        args[key] = value
                calls.append((name, args))
        if calls:
            return Plan([], calls, "tool_calls")
    text = f"Tool result: {tool_result}" if tool_result is not None else f"Echo: {user_text}"
    finish, matched = "stop", None
    cut = min(((text.find(s), s) for s in (stop or []) if s and s in text), default=None)
    if cut is not None:
        text, finish, matched = text[:cut[0]], "stop_sequence", cut[1]
    pieces = WORD.findall(text)
    if max_tokens is not None and len(pieces) > max_tokens:
        pieces, finish, matched = pieces[:max_tokens], "length", None
    return Plan(pieces, [], finish, matched)


def split_json(args: dict, parts: int = 3) -> list[str]:
    """Tool arguments as a JSON string cut in a few pieces, as models stream them."""
    text = json.dumps(args)
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)]
