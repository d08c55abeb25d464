"""Buffered resumable streams: resume after a client disconnect (one upstream call, one bill),
from a second gateway process sharing the store, DELETE, tenant isolation, and cogkit.Client
resuming by itself through a connection that breaks."""
from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

import cogkit
from tests.gateway_harness import provider

LONG = " ".join(f"w{i}" for i in range(30))     # 30 words -> a ~32-event stream


def chat_body(stream: bool = True) -> dict:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": LONG}]}


def read_events(resp: httpx.Response, n: int) -> bytes:
    """The first n complete SSE events, as bytes."""
    buf = b""
    for chunk in resp.iter_raw():
        buf += chunk
        if buf.count(b"\n\n") >= n:
            break
    cut = 0
    for _ in range(n):
        cut = buf.index(b"\n\n", cut) + 2
    return buf[:cut]


def wait_finished(g, key: str, stream_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = g.http(key).get(f"/v1/streams/{stream_id}/status").json()
        if status["status"] != "running":
            return
        time.sleep(0.05)
    raise AssertionError("stream never finished")


@pytest.fixture
def slow(fakes, gateway):
    fake = fakes("openai", token_delay=0.03)

    def start(name: str = "gw", **extra) -> object:
        g = gateway({"providers": [provider("openai", fake)],
                     "models": [{"name": "m", "input_price": 1, "output_price": 1,
                                 "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}], **extra}, name)
        g.fake = fake
        return g
    return start


def test_resume_after_disconnect_is_byte_identical_one_upstream_call_one_bill(slow):
    g = slow()
    key = g.new_key("acme")
    with g.http(key) as c:
        with c.stream("POST", "/v1/chat/completions", json=chat_body()) as resp:
            stream_id = resp.headers["x-cogkit-stream-id"]
            head = read_events(resp, 5)
        # The client is gone; the gateway keeps reading the upstream to its end.
        rest = c.get(f"/v1/streams/{stream_id}", params={"from": 5}).content
        wait_finished(g, key, stream_id)
        full = c.get(f"/v1/streams/{stream_id}", params={"from": 0}).content
        by_header = c.get(f"/v1/streams/{stream_id}", headers={"last-event-id": "4"}).content
    assert head.startswith(f": stream {stream_id}\nid: 0\n".encode())
    first = json.loads(head.split(b"\n\n")[0].split(b"data: ", 1)[1])
    assert first["cogkit_stream_id"] == stream_id and first["object"] == "chat.completion.chunk"
    assert b"cogkit_stream_id" not in rest                     # the first event only
    assert head + rest == full and by_header == rest
    assert rest.endswith(b"data: [DONE]\n\n") and b"id: 5\n" in rest
    assert g.fake.stats()["requests"] == 1 and g.fake.stats()["streams_completed"] == 1
    rows = g.usage(key, 1)
    time.sleep(0.3)
    assert len(g.usage(key, 1)) == 1 and rows[0]["status"] == "ok" and rows[0]["output_tokens"] > 30
    assert 'cogkit_gateway_stream_resumes_total{source="memory"} 3.0' in g.metrics()


def test_anthropic_format_stream_resumes_too(slow):
    g = slow()
    headers = {"x-api-key": g.admin_key, "anthropic-version": "2023-06-01"}
    with httpx.Client(base_url=g.url, headers=headers, timeout=30) as c:
        body = {"model": "m", "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": LONG}]}
        with c.stream("POST", "/v1/messages", json=body) as resp:
            stream_id = resp.headers["x-cogkit-stream-id"]
            head = read_events(resp, 4)
        rest = c.get(f"/v1/streams/{stream_id}", params={"from": 4}).content
    assert b"event: message_start" in head and rest.rstrip().endswith(b'{"type":"message_stop"}')
    first = json.loads(head.split(b"\n\n")[0].split(b"data: ", 1)[1])    # the id, where the SDKs keep it
    assert first["type"] == "message_start" and first["message"]["cogkit_stream_id"] == stream_id
    assert "cogkit_stream_id" not in first


def test_sdk_users_see_the_stream_id_in_the_first_event(slow):
    g = slow()
    g.fake.configure(token_delay=0)
    msgs = [{"role": "user", "content": "a b"}]
    raw = g.openai(g.admin_key).chat.completions.with_raw_response.create(model="m", messages=msgs, stream=True)
    chunks = list(raw.parse())
    assert chunks[0].model_extra["cogkit_stream_id"] == raw.headers["x-cogkit-stream-id"]
    assert all("cogkit_stream_id" not in c.model_extra for c in chunks[1:])
    with g.anthropic(g.admin_key).messages.stream(model="m", max_tokens=10, messages=msgs) as s:
        events = list(s)
    assert events[0].type == "message_start" and events[0].message.model_extra["cogkit_stream_id"].startswith("strm_")


def test_tenants_only_see_their_own_streams(slow):
    g = slow()
    alice, bob = g.new_key("alice"), g.new_key("bob")
    with g.http(alice) as c, c.stream("POST", "/v1/chat/completions", json=chat_body()) as resp:
        stream_id = resp.headers["x-cogkit-stream-id"]
        read_events(resp, 2)
    with g.http(bob) as c:
        assert c.get(f"/v1/streams/{stream_id}").status_code == 404
        assert c.delete(f"/v1/streams/{stream_id}").status_code == 404
    assert g.http(alice).get(f"/v1/streams/{stream_id}", params={"from": 2}).status_code == 200


def test_delete_aborts_the_upstream(slow):
    g = slow()
    g.fake.configure(token_delay=0.2)
    with g.http(g.admin_key) as c:
        with c.stream("POST", "/v1/chat/completions", json=chat_body()) as resp:
            stream_id = resp.headers["x-cogkit-stream-id"]
            read_events(resp, 2)
        assert c.delete(f"/v1/streams/{stream_id}").json()["deleted"] is True
        rest = c.get(f"/v1/streams/{stream_id}", params={"from": 2}).content
    assert b'"finish_reason":"error"' in rest and rest.endswith(b"data: [DONE]\n\n")
    deadline = time.monotonic() + 5
    while g.fake.stats()["streams_aborted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert g.fake.stats()["streams_aborted"] == 1
    assert g.usage(g.admin_key, 1)[0]["status"] == "canceled"


def resumes(g, source: str) -> float:
    """How many resumes this gateway served from `source` (memory | store), from its metrics."""
    prefix = f'cogkit_gateway_stream_resumes_total{{source="{source}"}} '
    return sum(float(line[len(prefix):]) for line in g.metrics().splitlines() if line.startswith(prefix))


def test_finished_streams_past_the_memory_budget_are_resumed_from_the_store(slow):
    # About two finished ~32-event streams fit in 20 kB (Buffer.footprint): the older ones leave
    # memory well before memory_retention, and the store serves their resume, byte for byte.
    g = slow(streams={"memory_max_bytes": 20_000, "memory_retention": 600})
    g.fake.configure(token_delay=0)
    alice, bob = g.new_key("alice"), g.new_key("bob")
    bodies = {}
    with g.http(alice) as c:
        for _ in range(5):
            with c.stream("POST", "/v1/chat/completions", json=chat_body()) as resp:
                stream_id = resp.headers["x-cogkit-stream-id"]
                bodies[stream_id] = resp.read()
            wait_finished(g, alice, stream_id)
        first, last = list(bodies)[0], list(bodies)[-1]
        # The newest is kept in memory once stored; wait for the oldest to have left it.
        deadline = time.monotonic() + 20
        while resumes(g, "store") < 1:
            assert time.monotonic() < deadline, "the oldest finished stream never left memory"
            assert c.get(f"/v1/streams/{first}").content == bodies[first]
            time.sleep(0.1)
        for stream_id, body in bodies.items():
            assert c.get(f"/v1/streams/{stream_id}").content == body
        in_memory = resumes(g, "memory")
        assert c.get(f"/v1/streams/{last}").content == bodies[last]
        assert resumes(g, "memory") == in_memory + 1       # the newest: still in memory
        assert c.get(f"/v1/streams/{first}", params={"from": 5}).content == \
            b"".join(e + b"\n\n" for e in body_events(bodies[first])[5:])
    assert resumes(g, "store") >= 4             # the oldest three, past the budget (the first twice)
    assert g.http(bob).get(f"/v1/streams/{first}").status_code == 404
    assert g.fake.stats()["requests"] == 5 and len(g.usage(alice, 10)) == 5


def body_events(body: bytes) -> list[bytes]:
    """The SSE events of a stream's body (without their blank-line ends), the stream comment kept."""
    return [e for e in body.split(b"\n\n") if e]


def test_a_second_gateway_process_sharing_the_store_serves_the_resume(slow, pg_url):
    first = slow("gw1", database_url=pg_url)
    second = slow("gw2", database_url=pg_url)
    key = first.new_key("shared")
    with first.http(key) as c, c.stream("POST", "/v1/chat/completions", json=chat_body()) as resp:
        stream_id = resp.headers["x-cogkit-stream-id"]
        head = read_events(resp, 3)
    # Served from the store while the first process is still pumping, then to the end.
    rest = second.http(key).get(f"/v1/streams/{stream_id}", params={"from": 3}).content
    full = first.http(key).get(f"/v1/streams/{stream_id}").content
    assert head + rest == full and rest.endswith(b"data: [DONE]\n\n")
    assert first.fake.stats()["requests"] == 1
    other = first.new_key("other")             # same store: keys work on both processes
    assert second.http(other).get(f"/v1/streams/{stream_id}").status_code == 404
    assert len(first.usage(key, 1)) == 1
    assert 'cogkit_gateway_stream_resumes_total{source="store"} 1.0' in second.metrics()


class CutProxy:
    """127.0.0.1 TCP proxy to `port`; the first connection is cut after `cut_after` response bytes."""

    def __init__(self, port: int, cut_after: int) -> None:
        self.target, self.cut_after, self.connections = port, cut_after, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            limit = self.cut_after if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_cogkit_client_resumes_by_itself(slow):
    g = slow()
    proxy = CutProxy(g.port, cut_after=1500)      # the first connection breaks mid-stream
    try:
        with cogkit.Client(f"http://127.0.0.1:{proxy.port}", api_key=g.admin_key) as client:
            events = list(client.run("m", {"prompt": LONG}, metadata={"app": "test"}, stream=True))
    finally:
        proxy.close()
    assert proxy.connections >= 2
    outputs = "".join(e.data for e in events if e.event == "output")
    assert outputs == "Echo: " + LONG
    assert events[0].event == "start" and events[0].data["cogkit_stream_id"].startswith("strm_")
    assert events[0].data["provider"] == "openai" and events[0].data["model"] == "m"
    assert [e.index for e in events] == list(range(len(events)))     # nothing lost, nothing twice
    assert events[-1].event == "completed" and events[-1].data["output"] == outputs
    assert g.fake.stats()["requests"] == 1
    assert len(g.usage(g.admin_key, 1)) == 1


def test_async_client_runs_and_streams(slow):
    import asyncio
    g = slow()

    async def main():
        async with cogkit.AsyncClient(g.url, api_key=g.admin_key) as client:
            result = await client.run("m", {"prompt": "hello async"})
            events = [e async for e in await client.run("m", {"prompt": "x y"}, stream=True)]
        return result, events
    result, events = asyncio.run(main())
    assert result["output"] == "Echo: hello async"
    assert "".join(e.data for e in events if e.event == "output") == "Echo: x y"
    with pytest.raises(cogkit.client.GatewayError) as e:
        cogkit.Client(g.url, api_key=g.admin_key).run("nope", {"prompt": "x"})
    assert e.value.status == 404
