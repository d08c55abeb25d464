"""kill -9 in the middle of streams (issue 8): the gateway process dies with streams running in every
client format; a new process on the same store (SQLite and PostgreSQL) settles them: each ends with an
explicit in-band error in its own format (a resume from past what survived says how many survived), the
usage its events show is billed exactly once, and every credit hold is released."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import time

import httpx
import pytest
from cryptography.fernet import Fernet

from server.auth import Auth
from server.config import StreamsConfig
from server.ledger import Ledger
from server.recovery import Recovery
from server.store import Store
from server.store.streams import StreamRepo
from tests.gateway_harness import GatewayProc, provider
from tests.net import until

WORDS = " ".join(f"w{i}" for i in range(40))
SEEN = 4                       # events each client reads before the kill
PRICE = {"input_price": 1000.0, "output_price": 2000.0}      # USD per 1M tokens: a visible bill


def bodies() -> dict[str, tuple[str, dict]]:
    """format -> (path, streamed body), one per client format."""
    msgs = [{"role": "user", "content": WORDS}]
    return {
        "openai": ("/v1/chat/completions", {"model": "m", "stream": True, "messages": msgs,
                                            "stream_options": {"include_usage": True}}),
        "anthropic": ("/v1/messages", {"model": "m", "stream": True, "max_tokens": 200, "messages": msgs}),
        "run": ("/ai/run/m", {"stream": True, "prompt": WORDS, "max_tokens": 200}),
        "responses": ("/v1/responses", {"model": "m", "stream": True, "input": WORDS}),
        "gemini": ("/v1beta/models/m:streamGenerateContent?alt=sse", {"contents": [{"role": "user", "parts": [
            {"text": WORDS}]}]}),
    }


def events_of(raw: bytes) -> list[tuple[str | None, str, str]]:
    """(event, id, data) of every complete SSE event."""
    out = []
    for block in raw.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":") and ":" in line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
        if "data" in fields:
            out.append((fields.get("event"), fields.get("id", ""), fields["data"]))
    return out


def assert_ending(fmt: str, events: list[tuple[str | None, str, str]], survived: int) -> None:
    """The stream ends with its format's in-band error, which says how many events survived."""
    if fmt == "openai":
        (_e, _i, last), (_e2, _i2, done) = events[-2], events[-1]
        chunk = json.loads(last)
        assert done == "[DONE]" and chunk["choices"][0]["finish_reason"] == "error"
        assert chunk["error"]["code"] == "interrupted" and f"{survived} events survived" in chunk["error"]["message"]
    elif fmt == "anthropic":
        name, _i, data = events[-1]
        err = json.loads(data)
        assert name == "error" and err["error"]["type"] == "api_error"
        assert f"{survived} events survived" in err["error"]["message"]
    elif fmt == "responses":
        (name, _i, data), (name2, _i2, data2) = events[-2], events[-1]
        err, failed = json.loads(data), json.loads(data2)
        assert name == "error" and err["code"] == "interrupted" and f"{survived} events survived" in err["message"]
        assert name2 == "response.failed" and failed["response"]["status"] == "failed"
        assert failed["sequence_number"] == err["sequence_number"] + 1
    elif fmt == "gemini":
        _name, _i, data = events[-1]
        err = json.loads(data)["error"]
        assert err["status"] == "INTERNAL" and f"{survived} events survived" in err["message"]
    else:
        name, _i, data = events[-1]
        err = json.loads(data)
        assert name == "error" and err["code"] == "interrupted" and err["survived"] == survived


@pytest.fixture
def crashing(fakes, tmp_path, store_url):
    fake = fakes("openai", token_delay=0.15)        # 40 words: ~6 s per stream, killed long before its end
    config = {"database_url": store_url, "providers": [provider("openai", fake)],
              "streams": {"lease": 1.0, "flush_interval": 0.05}, "timeouts": {"idle": 30},
              "models": [{"name": "m", **PRICE, "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}]}
    procs: list[GatewayProc] = []

    def start() -> GatewayProc:
        procs.append(GatewayProc(config, tmp_path, "gw"))
        return procs[-1]
    yield start, StreamRepo(Store(store_url))
    for p in procs:
        p.close()


def test_kill_9_mid_stream_then_restart_settles_every_stream(crashing):
    start, repo = crashing
    first = start()
    admin = first.admin_key
    key = first.new_key("acme", credits=10.0)
    clients, streams, seen = [], {}, {}
    for fmt, (path, body) in bodies().items():
        c = httpx.Client(base_url=first.url, headers={"authorization": f"Bearer {key}"}, timeout=30)
        clients.append(c)
        resp = c.send(c.build_request("POST", path, json=body), stream=True)
        assert resp.status_code == 200, resp.read()
        streams[fmt] = (resp.headers["x-cogkit-stream-id"], resp)
    for fmt, (stream_id, resp) in streams.items():            # every client reads a few events
        buf = b""
        for chunk in resp.iter_raw():
            buf += chunk
            if len(events_of(buf)) >= SEEN:
                break
        seen[fmt] = len(events_of(buf))
    deadline = time.monotonic() + 10
    for stream_id, _resp in streams.values():                 # what the clients saw is in the store
        while (repo.get(stream_id) is None or repo.get(stream_id).next_index < SEEN) and time.monotonic() < deadline:
            time.sleep(0.02)
    with first.http(admin) as c:
        held = c.get("/admin/tenants/acme").json()["credits"]
    assert held["reserved"] > 0 and held["spent"] == 0

    first.proc.send_signal(signal.SIGKILL)                     # no shutdown, no final flush, no bills
    first.proc.wait(10)
    for c in clients:
        c.close()
    for stream_id, _resp in streams.values():
        assert repo.get(stream_id).status == "running"         # what the dead process left

    second = start()                                           # the same store: it settles them
    second.admin_key = admin
    for fmt, (stream_id, _resp) in streams.items():
        with second.http(key) as c:
            survived = repo.get(stream_id).next_index if repo.get(stream_id).status == "running" else None
            past = c.get(f"/v1/streams/{stream_id}", params={"from": 10_000}).content   # waits for the settling
            info = repo.get(stream_id)
            n = info.meta["survived"]
            assert info.status == "partial" and n >= SEEN and (survived is None or n >= survived)
            assert_ending(fmt, events_of(past), n)              # past what survived: the ending, with the count
            full = events_of(c.get(f"/v1/streams/{stream_id}", params={"from": 0}).content)
            if fmt != "gemini":                                 # (Gemini's events carry no id: line)
                assert [int(i) for _e, i, _d in full] == list(range(len(full)))
            assert_ending(fmt, full, n)
            assert len(full) > n >= seen[fmt]                  # nothing the client saw was lost

    rows = second.usage(key, len(streams))
    assert sorted(r["stream_id"] for r in rows) == sorted(s for s, _r in streams.values())
    assert all(r["status"] == "partial" and r["output_tokens"] > 0 and r["input_tokens"] > 0 for r in rows), rows
    with second.http(admin) as c:
        credits = c.get("/admin/tenants/acme").json()["credits"]
    cost = sum(r["cost"] for r in rows)
    assert cost > 0 and credits["reserved"] == 0
    assert credits["spent"] == pytest.approx(cost, abs=1e-6) and credits["balance"] == pytest.approx(10.0 - cost, abs=1e-6)
    # A later settling pass (another replica, or this one again) finds nothing left to bill.
    async def again() -> int:
        async def write(fn, *args):
            return fn(*args)
        recovery = Recovery(repo, Ledger(repo.store), StreamsConfig(lease=0.001), write, write, logging.getLogger("t"))
        return await recovery.settle_orphans()
    assert asyncio.run(again()) == 0
    assert len(second.usage(key, len(streams) + 1, timeout=0.5)) == len(streams)


def test_a_live_stream_longer_than_the_lease_is_never_settled(crashing):
    """The heartbeat keeps a running stream's row fresh however busy it is: only a dead process's
    streams are settled, never a live one that outlasts the lease."""
    start, repo = crashing
    g = start()
    # The key straight from the store (the module's PostgreSQL database printed its admin key to an
    # earlier test's gateway, once).
    auth = Auth(repo.store, master_key=Fernet.generate_key())
    auth.create_tenant("live")
    _info, key = auth.create_key("live")
    Ledger(repo.store).set_credits("live", 10.0)
    path, body = bodies()["openai"]
    started = time.monotonic()
    with g.http(key) as c, c.stream("POST", path, json=body) as resp:
        stream_id = resp.headers["x-cogkit-stream-id"]
        raw = resp.read()
    assert time.monotonic() - started > 3 * 1.0                 # it outlived the lease three times over
    events = events_of(raw)
    assert events[-1][2] == "[DONE]" and b"interrupted" not in raw
    text = "".join((json.loads(d)["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                   for _e, _i, d in events[:-1])
    assert text == "Echo: " + WORDS
    # The final write is batched: wait for it (generously, on loaded CI cores), then check what it says.
    info = until(lambda: (i := repo.get(stream_id)).status != "running" and i, what="the stream's final row")
    assert info.status == "ok" and "survived" not in info.meta
    [row] = until(lambda: g.usage(key, 1), what="the request's usage row")   # billing is batched too
    assert row["status"] == "ok"
