"""Clients for a cogkit gateway's `/ai/run/{model}`: one call for any model.

    client = cogkit.Client("http://127.0.0.1:8080", api_key="ck-...")
    client.run("@acme/echo", {"prompt": "hi"})["output"]
    for event in client.run("openai/gpt-4o-mini", {"prompt": "hi"}, stream=True):
        print(event.event, event.data)

A streamed run survives a dropped connection: the client reconnects to
`GET /v1/streams/{id}?from=N` with N the events it already has, and carries on with exactly
the rest (the gateway kept reading the model meanwhile; nothing is asked or billed twice).

Layout (as httpx shares `BaseClient` between its two clients): everything that decides anything
lives in `RunStream`, which does no I/O; `Client` and `AsyncClient` are thin loops that make the
request it asks for, feed it the bytes, and sleep as long as it says. `SSEDecoder` is the one
server-sent-events parser of the project (the gateway imports it from here; this module never
imports the gateway).
"""
from __future__ import annotations

import asyncio
import codecs
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

RESUMABLE = (httpx.TransportError,)          # dropped connection, read timeout, refused reconnect


@dataclass
class RunEvent:
    event: str          # "start" (data: id, model, provider, cogkit_stream_id) | "output" | "logs" | "completed"
    data: Any
    index: int


class GatewayError(Exception):
    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.body = status, body


# ---------------------------------------------------------------- server-sent events (no I/O)
class SSEDecoder:
    """feed(bytes) -> [(event or None, data_str)] for every event completed so far.

    Follows the WHATWG event-stream rules that matter for LLM APIs: `\\n`, `\\r\\n` and `\\r` line
    ends (Gemini uses `\\r\\n`), comments (`: ping` keep-alives), multi-line `data:`, `id:` (kept in
    `last_event_id`) and input split at any byte, even inside a UTF-8 character or between `\\r`
    and `\\n`."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._skip_lf = False       # the last chunk ended in "\r": a leading "\n" belongs to it
        self._started = False
        self._event: str | None = None
        self._data: list[str] = []
        self.last_event_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        return [(event, data) for event, data, _id in self.feed_with_ids(chunk)]

    def feed_with_ids(self, chunk: bytes) -> list[tuple[str | None, str, str | None]]:
        """feed(), each event with the last event id as of that event (SSE ids carry over)."""
        text = self._utf8.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            if text.startswith("\n"):
                text = text[1:]
            self._skip_lf = False
        self._buf += text
        if "\r" not in self._buf:      # "\n" line ends only (nearly every API): one split, not a copy per line
            *lines, self._buf = self._buf.split("\n")
            return [done for line in lines if (done := self._line(line)) is not None]
        events: list[tuple[str | None, str, str | None]] = []
        while True:
            cut = _line_end(self._buf)
            if cut is None:
                break
            line, end = self._buf[:cut], cut + 1
            if self._buf[cut] == "\r":
                if end < len(self._buf):
                    if self._buf[end] == "\n":
                        end += 1
                else:
                    self._skip_lf = True
            self._buf = self._buf[end:]
            done = self._line(line)
            if done is not None:
                events.append(done)
        return events

    def flush(self) -> list[tuple[str | None, str]]:
        """End of stream: a last event without its blank line is still returned (lenient)."""
        self._buf += self._utf8.decode(b"", final=True)
        events = []
        if self._buf:
            done = self._line(self._buf)
            self._buf = ""
            if done is not None:
                events.append(done[:2])
        done = self._line("")
        if done is not None:
            events.append(done[:2])
        return events

    def _line(self, line: str) -> tuple[str | None, str, str | None] | None:
        if line == "":
            if not self._data:
                self._event = None
                return None
            out = (self._event, "\n".join(self._data), self.last_event_id)
            self._event, self._data = None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value or None
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None


def _line_end(buf: str) -> int | None:
    r, n = buf.find("\r"), buf.find("\n")
    if r < 0:
        return n if n >= 0 else None
    return r if n < 0 or r < n else n


# ---------------------------------------------------------------- the resume state machine (no I/O)
@dataclass
class Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None


class RunStream:
    """One streamed run, with its resumes, as a state machine: `request()` says what to send,
    `opened()` takes the response's status and headers, `feed()` its bytes (-> the complete events),
    `ended()` that it ended (or broke, with the error), and says how long to wait before the next
    `request()`, or raises when the run cannot go on."""

    def __init__(self, model: str, inputs: dict[str, Any], metadata: dict[str, Any] | None, max_resumes: int,
                 resume_delay: float) -> None:
        self.model, self.body = model, run_body(inputs, metadata, True)
        self.max_resumes, self.resume_delay = max_resumes, resume_delay
        self.stream_id: str | None = None
        self.have = 0                   # events received: a resume asks for the ones after them
        self.resumes = 0
        self.done = False
        self.error: GatewayError | None = None     # how the run ended in-band, if it failed
        self._decoder = SSEDecoder()

    def request(self) -> Request:
        if self.resumes == 0:
            return Request("POST", f"/ai/run/{self.model}", json=self.body)
        return Request("GET", f"/v1/streams/{self.stream_id}", params={"from": self.have})

    def opened(self, status: int, stream_id: str | None, error_body: bytes = b"") -> None:
        """A response began; for a status >= 400 pass its body (-> GatewayError)."""
        check(status, error_body)
        self.stream_id = stream_id or self.stream_id
        self._decoder = SSEDecoder()

    def feed(self, data: bytes) -> list[RunEvent]:
        """The events these bytes complete, up to the run's last one (`done` is then True; call
        `finish()` once they are handed on)."""
        out = []
        for name, raw, last_id in self._decoder.feed_with_ids(data):
            if self.done:
                break
            event = self._event(name, raw, last_id)
            self.have = event.index + 1 if event.index >= 0 else self.have + 1
            if self.stream_id is None and event.index == 0 and isinstance(event.data, dict):
                self.stream_id = event.data.get("cogkit_stream_id")   # a proxy dropped the header
            if event.event == "error":
                info = event.data if isinstance(event.data, dict) else {"message": str(event.data)}
                self.error, self.done = GatewayError(info.get("message", "stream failed"), None, info), True
                break
            self.done = event.event == "completed"
            out.append(event)
        return out

    def finish(self) -> None:
        """The run is done: raises its in-band error, if that is how it ended."""
        if self.error is not None:
            raise self.error

    def ended(self, error: BaseException | None = None) -> float:
        """The response ended before the run did (`error`: how it broke). Returns the seconds to wait
        before resuming; raises when it cannot (no stream id yet, or too many resumes)."""
        if self.stream_id is None or self.resumes >= self.max_resumes:
            if error is not None:
                raise error
            raise GatewayError("stream ended before it completed")
        self.resumes += 1
        return self.resume_delay * self.resumes

    def _event(self, name: str | None, raw: str, last_id: str | None) -> RunEvent:
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw
        return RunEvent(name or "message", data, int(last_id) if last_id and last_id.isdigit() else -1)


def run_body(inputs: dict[str, Any], metadata: dict[str, Any] | None, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"input": inputs}
    if metadata:
        body["metadata"] = metadata
    if stream:
        body["stream"] = True
    return body


def check(status: int, text: bytes) -> None:
    """GatewayError for an error response, with the gateway's message."""
    if status < 400:
        return
    body: Any
    try:
        body = json.loads(text)
        err = body.get("error", body) if isinstance(body, dict) else body
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        body = message = text.decode(errors="replace")
    raise GatewayError(f"HTTP {status}: {message}", status, body)


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = (base_url or os.environ.get("COGKIT_GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
    key = api_key or os.environ.get("COGKIT_API_KEY")
    return url, {"authorization": f"Bearer {key}"} if key else {}


STREAM_HEADERS = {"accept": "text/event-stream"}


# ---------------------------------------------------------------- the two thin clients
class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 max_resumes: int = 5, resume_delay: float = 0.2) -> None:
        self.base_url, headers = _settings(base_url, api_key)
        self.max_resumes, self.resume_delay = max_resumes, resume_delay
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def run(self, model: str, inputs: dict[str, Any], metadata: dict[str, Any] | None = None, stream: bool = False) -> Any:
        """The finished run ({"output", "usage", ...}); with stream=True an iterator of RunEvent."""
        if stream:
            return self._stream(RunStream(model, inputs, metadata, self.max_resumes, self.resume_delay))
        resp = self._http.post(f"/ai/run/{model}", json=run_body(inputs, metadata, False))
        check(resp.status_code, resp.content)
        return resp.json()

    def _stream(self, run: RunStream) -> Iterator[RunEvent]:
        while True:
            req = run.request()
            try:
                with self._http.stream(req.method, req.path, params=req.params, json=req.json,
                                       headers=STREAM_HEADERS) as resp:
                    run.opened(resp.status_code, resp.headers.get("x-cogkit-stream-id"),
                               resp.read() if resp.status_code >= 400 else b"")
                    for data in resp.iter_bytes():
                        yield from run.feed(data)
                        if run.done:
                            run.finish()
                            return
                delay = run.ended()
            except RESUMABLE as e:
                delay = run.ended(e)
            time.sleep(delay)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 max_resumes: int = 5, resume_delay: float = 0.2) -> None:
        self.base_url, headers = _settings(base_url, api_key)
        self.max_resumes, self.resume_delay = max_resumes, resume_delay
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers)

    async def run(self, model: str, inputs: dict[str, Any], metadata: dict[str, Any] | None = None, stream: bool = False) -> Any:
        """`await client.run(...)` -> the finished run; with stream=True an async iterator of RunEvent."""
        if stream:
            return self._stream(RunStream(model, inputs, metadata, self.max_resumes, self.resume_delay))
        resp = await self._http.post(f"/ai/run/{model}", json=run_body(inputs, metadata, False))
        check(resp.status_code, resp.content)
        return resp.json()

    async def _stream(self, run: RunStream) -> AsyncIterator[RunEvent]:
        while True:
            req = run.request()
            try:
                async with self._http.stream(req.method, req.path, params=req.params, json=req.json,
                                             headers=STREAM_HEADERS) as resp:
                    run.opened(resp.status_code, resp.headers.get("x-cogkit-stream-id"),
                               await resp.aread() if resp.status_code >= 400 else b"")
                    async for data in resp.aiter_bytes():
                        for event in run.feed(data):
                            yield event
                        if run.done:
                            run.finish()
                            return
                delay = run.ended()
            except RESUMABLE as e:
                delay = run.ended(e)
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
