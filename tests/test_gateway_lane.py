"""The fast lane (server/api/lane.py) answers as the full stack does. Each request goes to a real
gateway process twice: with a declared length (the lane takes it) and chunked, with no length
(the full stack takes it: its size is counted as it arrives). Status, headers that matter and
body must agree, errors and successes alike."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway_harness import one_model_gateway

LIMIT = 50_000


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    from tests.fakes import start_fake
    oa = start_fake("openai")
    work = tmp_path_factory.mktemp("lane")
    g = one_model_gateway(work, oa, "acme", 10.0, limits={"max_body_bytes": LIMIT})
    yield g
    g.close()
    oa.close()


def both(gw, path: str, raw: bytes, key: str | None = "", **headers) -> tuple[httpx.Response, httpx.Response]:
    """(through the lane, through the full stack)"""
    sent = {"content-type": "application/json", **headers}
    with gw.http(gw.key if key == "" else key) as c:
        lane = c.post(path, content=raw, headers=sent)
        full = c.post(path, content=iter([raw]), headers=sent)        # chunked: no content-length
    return lane, full


def comparable(resp: httpx.Response) -> tuple[int, str, object]:
    body = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else resp.text
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("id", "created")}
    return resp.status_code, resp.headers.get("content-type", ""), body


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CASES = {
    "not json": ("/v1/chat/completions", b"{nope", {}),
    "no model": ("/v1/chat/completions", json.dumps({"messages": []}).encode(), {}),
    "a field of the wrong type": ("/v1/chat/completions", json.dumps({**CHAT, "temperature": "hot"}).encode(), {}),
    "an unknown model": ("/v1/chat/completions", json.dumps({**CHAT, "model": "gpt-4o-mimi"}).encode(), {}),
    "too deep": ("/v1/chat/completions", ("[" * 5000 + "]" * 5000).encode(), {}),
    "anthropic, no max_tokens": ("/v1/messages", json.dumps({"model": "gpt-4o-mini", "messages": []}).encode(),
                                 {"anthropic-version": "2023-06-01"}),
    "a completion": ("/v1/chat/completions", json.dumps(CHAT).encode(), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_lane_answers_as_the_full_stack(gw, case):
    path, raw, headers = CASES[case]
    lane, full = both(gw, path, raw, **headers)
    assert lane.status_code < 500, lane.text
    assert comparable(lane) == comparable(full)


def test_a_bad_key_is_refused_the_same_way(gw):
    lane, full = both(gw, "/v1/chat/completions", json.dumps(CHAT).encode(), key="sk-wrong")
    assert lane.status_code == 401 and comparable(lane) == comparable(full)


def test_a_declared_length_over_the_limit_goes_to_the_full_stack_and_its_413(gw):
    raw = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * LIMIT}]}).encode()
    lane, full = both(gw, "/v1/chat/completions", raw)
    assert lane.status_code == full.status_code == 413
    assert "limits.max_body_bytes" in lane.json()["error"]["message"]


def test_a_stream_through_the_lane_is_the_stream_of_the_full_stack(gw):
    raw = json.dumps({**CHAT, "stream": True}).encode()
    lane, full = both(gw, "/v1/chat/completions", raw)
    assert lane.status_code == full.status_code == 200
    assert lane.headers["content-type"] == full.headers["content-type"] == "text/event-stream; charset=utf-8"

    def texts(resp: httpx.Response) -> str:
        out = []
        for line in resp.text.splitlines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:]).get("choices") or ():
                    out.append((choice.get("delta") or {}).get("content") or "")
        return "".join(out)
    assert texts(lane) and texts(lane) == texts(full)
    assert lane.text.rstrip().endswith("data: [DONE]") and full.text.rstrip().endswith("data: [DONE]")


def test_the_lane_is_taken_only_with_a_declared_length(tmp_path):
    """Middleware added to the app sees the full stack's requests, not the lane's (as lane.py says)."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import load_config

    app = create_app(load_config(data={"state_dir": str(tmp_path / "state")}))
    seen: list[str] = []

    @app.middleware("http")
    async def note(request, call_next):
        seen.append(request.url.path)
        return await call_next(request)

    with TestClient(app) as client:
        by_lane = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
        by_stack = client.post("/v1/chat/completions", content=iter([b"{nope"]),
                               headers={"content-type": "application/json"})
    assert by_lane.status_code == by_stack.status_code == 401      # no key: the same refusal either way
    assert seen == ["/v1/chat/completions"]                          # the chunked one only


def test_a_chunked_body_over_the_limit_that_arrives_whole_is_refused_at_once(gw):
    """The whole chunked body in one write: the server hands it over in one message, its last; the
    refusal must not then wait to drain a body that has no more to give (it used to, until the
    client gave up)."""
    import socket
    from urllib.parse import urlsplit
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * LIMIT}]}).encode()
    url = urlsplit(gw.url)
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {url.netloc}\r\nauthorization: Bearer {gw.key}\r\n"
               f"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{len(body):x}\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=20) as s:
        s.sendall(request + body + b"\r\n0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = s.recv(65536)
            assert got, answer
            answer += got
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
