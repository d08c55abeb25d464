"""Clients for a cogkit gateway's `/ai/run/{model}`: one call for any model.

    client = cogkit.Client("http://127.0.0.1:8080", api_key="ck-...")
    client.run("@acme/echo", {"prompt": "hi"})["output"]
    for event in client.run("openai/gpt-4o-mini", {"prompt": "hi"}, stream=True):
        print(event.event, event.data)

A streamed run survives a dropped connection: the client reconnects to
`GET /v1/streams/{id}?from=N` with N the events it already has, and carries on with exactly
the rest (the gateway kept reading the model meanwhile; nothing is asked or billed twice).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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


class _Events:
    """Server-sent events from lines; only complete events (ended by a blank line) come out."""

    def __init__(self) -> None:
        self.event, self.data, self.id = None, [], None

    def line(self, line: str) -> RunEvent | None:
        if line == "":
            if not self.data:
                self.event = None
                return None
            raw = "\n".join(self.data)
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw
            out = RunEvent(self.event or "message", data, int(self.id) if self.id and self.id.isdigit() else -1)
            self.event, self.data = None, []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            self.id = value
        return None


def _body(inputs: dict, metadata: dict | None, stream: bool) -> dict:
    body: dict[str, Any] = {"input": inputs}
    if metadata:
        body["metadata"] = metadata
    if stream:
        body["stream"] = True
    return body


def _check(resp: httpx.Response, text: bytes) -> None:
    if resp.status_code < 400:
        return
    try:
        body = json.loads(text)
        err = body.get("error", body) if isinstance(body, dict) else body
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        body, message = text.decode(errors="replace"), text.decode(errors="replace")
    raise GatewayError(f"HTTP {resp.status_code}: {message}", resp.status_code, body)


def _stream_id(event: RunEvent) -> str | None:
    """The id the first event carries (for when a proxy dropped the x-cogkit-stream-id header)."""
    return event.data.get("cogkit_stream_id") if event.index == 0 and isinstance(event.data, dict) else None


def _finished(event: RunEvent) -> bool:
    if event.event == "error":
        data = event.data if isinstance(event.data, dict) else {"message": str(event.data)}
        raise GatewayError(data.get("message", "stream failed"), None, data)
    return event.event == "completed"


class Client:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 max_resumes: int = 5, resume_delay: float = 0.2) -> None:
        self.base_url = (base_url or os.environ.get("COGKIT_GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
        key = api_key or os.environ.get("COGKIT_API_KEY")
        self.max_resumes, self.resume_delay = max_resumes, resume_delay
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"authorization": f"Bearer {key}"} if key else {})

    def run(self, model: str, inputs: dict, metadata: dict | None = None, stream: bool = False):
        """The finished run ({"output", "usage", ...}); with stream=True an iterator of RunEvent."""
        if stream:
            return self._stream(model, inputs, metadata)
        resp = self._http.post(f"/ai/run/{model}", json=_body(inputs, metadata, False))
        _check(resp, resp.content)
        return resp.json()

    def _stream(self, model: str, inputs: dict, metadata: dict | None) -> Iterator[RunEvent]:
        request = self._http.build_request("POST", f"/ai/run/{model}", json=_body(inputs, metadata, True),
                                           headers={"accept": "text/event-stream"})
        stream_id, have, resumes = None, 0, 0
        while True:
            try:
                resp = self._http.send(request, stream=True)
                try:
                    if resp.status_code >= 400:
                        _check(resp, resp.read())
                    stream_id = resp.headers.get("x-cogkit-stream-id") or stream_id
                    parser = _Events()
                    for line in resp.iter_lines():
                        event = parser.line(line)
                        if event is None:
                            continue
                        have = event.index + 1 if event.index >= 0 else have + 1
                        stream_id = stream_id or _stream_id(event)
                        done = _finished(event)
                        yield event
                        if done:
                            return
                finally:
                    resp.close()
            except RESUMABLE:
                if stream_id is None or resumes >= self.max_resumes:
                    raise
            else:
                if stream_id is None or resumes >= self.max_resumes:
                    raise GatewayError("stream ended before it completed")
            resumes += 1
            time.sleep(self.resume_delay * resumes)
            request = self._http.build_request("GET", f"/v1/streams/{stream_id}", params={"from": have})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = 600.0,
                 max_resumes: int = 5, resume_delay: float = 0.2) -> None:
        self.base_url = (base_url or os.environ.get("COGKIT_GATEWAY_URL") or "http://127.0.0.1:8080").rstrip("/")
        key = api_key or os.environ.get("COGKIT_API_KEY")
        self.max_resumes, self.resume_delay = max_resumes, resume_delay
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       headers={"authorization": f"Bearer {key}"} if key else {})

    async def run(self, model: str, inputs: dict, metadata: dict | None = None, stream: bool = False):
        """`await client.run(...)` -> the finished run; with stream=True an async iterator of RunEvent."""
        if stream:
            return self._stream(model, inputs, metadata)
        resp = await self._http.post(f"/ai/run/{model}", json=_body(inputs, metadata, False))
        _check(resp, resp.content)
        return resp.json()

    async def _stream(self, model: str, inputs: dict, metadata: dict | None) -> AsyncIterator[RunEvent]:
        request = self._http.build_request("POST", f"/ai/run/{model}", json=_body(inputs, metadata, True),
                                           headers={"accept": "text/event-stream"})
        stream_id, have, resumes = None, 0, 0
        while True:
            try:
                resp = await self._http.send(request, stream=True)
                try:
                    if resp.status_code >= 400:
                        _check(resp, await resp.aread())
                    stream_id = resp.headers.get("x-cogkit-stream-id") or stream_id
                    parser = _Events()
                    async for line in resp.aiter_lines():
                        event = parser.line(line)
                        if event is None:
                            continue
                        have = event.index + 1 if event.index >= 0 else have + 1
                        stream_id = stream_id or _stream_id(event)
                        done = _finished(event)
                        yield event
                        if done:
                            return
                finally:
                    await resp.aclose()
            except RESUMABLE:
                if stream_id is None or resumes >= self.max_resumes:
                    raise
            else:
                if stream_id is None or resumes >= self.max_resumes:
                    raise GatewayError("stream ended before it completed")
            resumes += 1
            await asyncio.sleep(self.resume_delay * resumes)
            request = self._http.build_request("GET", f"/v1/streams/{stream_id}", params={"from": have})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
