"""Admin and spend HTTP APIs, errors in the caller's format, and the admin CLI,
against real uvicorn servers over a real SQLite file and a real PostgreSQL."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from cryptography.fernet import Fernet
from fastapi import Depends, FastAPI, Request
from sqlalchemy import select
from typer.testing import CliRunner

from server.admin_cli import keys_app, providers_app, tenants_app
from server.api import admin, spend
from server.api.deps import install_error_handlers, require_key
from server.auth import Auth, KeyInfo
from server.ledger import Ledger, UsageRecord
from server.store import Store
from server.store.tables import api_keys, provider_secrets
from tests.net import free_port


def make_app(store_url: str, master_key: bytes) -> FastAPI:
    """A small gateway: the shared objects, our routers, and a stand-in chat endpoint
    that rate-limits, reserves credits and records usage the way the real one does."""
    store = Store(store_url)
    auth, ledger = Auth(store, master_key), Ledger(store)
    app = FastAPI()
    app.state.gateway = SimpleNamespace(store=store, auth=auth, ledger=ledger)
    install_error_handlers(app)
    app.include_router(admin.router)
    app.include_router(spend.router)

    @app.post("/v1/chat/completions")
    @app.post("/v1/messages")
    def chat(body: dict, request: Request, key: KeyInfo = Depends(require_key)) -> dict:
        ledger.check_rate(key, 10)
        reservation = ledger.reserve(key.tenant_id, 0.5)
        ledger.settle(reservation, 0.2)
        ledger.record(UsageRecord(request_id=uuid.uuid4().hex, tenant_id=key.tenant_id, key_id=key.id,
                                  model=body.get("model", "m"), provider="p", input_tokens=10, output_tokens=5,
                                  cost=0.2, metadata=body.get("metadata") or {}))
        return {"ok": True}

    return app


class Server:
    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        self.seen: list[str] = []   # every response body this client got
        self.client = httpx.Client(base_url=self.url, timeout=30,
                                   event_hooks={"response": [lambda r: (r.read(), self.seen.append(r.text))]})

    def close(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.gateway.store.close()


@pytest.fixture
def servers(request):
    started: list[Server] = []

    def start(store_url: str, master_key: bytes) -> Server:
        started.append(Server(make_app(store_url, master_key)))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def gw(servers, tmp_path: Path):
    """One server on a fresh SQLite file, and its first-start admin key."""
    server = servers(f"sqlite:///{tmp_path / 'gw.db'}", Fernet.generate_key())
    server.admin = server.app.state.gateway.auth.first_start_admin_key()
    return server


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_shown_once_and_stored_hashed(gw: Server) -> None:
    c, h = gw.client, bearer(gw.admin)
    assert c.post("/admin/tenants", json={"id": "acme", "name": "Acme"}, headers=h).status_code == 201
    assert c.post("/admin/tenants", json={"id": "acme"}, headers=h).status_code == 409
    created = c.post("/admin/keys", json={"tenant_id": "acme", "name": "ci", "rpm": 100}, headers=h)
    assert created.status_code == 201
    plaintext, key_id = created.json()["key"], created.json()["id"]
    assert plaintext.startswith("ck-") and created.json()["rpm"] == 100
    listed = c.get("/admin/keys", params={"tenant_id": "acme"}, headers=h)
    assert [k["id"] for k in listed.json()["data"]] == [key_id]
    assert plaintext not in listed.text and "hash" not in listed.text
    assert plaintext not in c.get(f"/admin/keys/{key_id}", headers=h).text
    with gw.app.state.gateway.store.engine.connect() as conn:
        rows = conn.execute(select(api_keys)).mappings().all()
    assert all(plaintext not in repr(dict(r)) for r in rows)
    assert c.post("/admin/keys", json={"tenant_id": "nobody"}, headers=h).status_code == 404
    assert c.post("/admin/keys", json={"tenant_id": "acme", "rpm": 0}, headers=h).status_code == 422

    # The new key works, but is not an admin key; x-api-key works as well as Bearer.
    assert c.post("/v1/chat/completions", json={}, headers=bearer(plaintext)).json() == {"ok": True}
    assert c.post("/v1/messages", json={}, headers={"x-api-key": plaintext}).status_code == 200
    forbidden = c.get("/admin/keys", headers=bearer(plaintext))
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["error"]["message"]

    # Revoked: refused at once by this process.
    assert c.post(f"/admin/keys/{key_id}/revoke", headers=h).json()["revoked"] is True
    assert c.post("/v1/chat/completions", json={}, headers=bearer(plaintext)).status_code == 401
    assert c.delete("/admin/keys/key_nope", headers=h).status_code == 404


def test_401_in_the_callers_format(gw: Server) -> None:
    c = gw.client
    missing = c.post("/v1/chat/completions", json={})
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert missing.json()["error"]["code"] == "invalid_api_key"
    bad = c.post("/v1/messages", json={}, headers={"x-api-key": "ck-nope"})
    assert bad.status_code == 401
    assert bad.json() == {"type": "error", "error": {"type": "authentication_error", "message": "Invalid API key."}}
    assert c.get("/admin/tenants").status_code == 401
    assert c.get("/v1/spend", headers=bearer("sk-not-ours")).json()["error"]["code"] == "invalid_api_key"


def test_provider_secrets_never_come_back(gw: Server) -> None:
    c, h = gw.client, bearer(gw.admin)
    secret, own = "sk-proj-" + uuid.uuid4().hex, "sk-ant-" + uuid.uuid4().hex
    c.post("/admin/tenants", json={"id": "acme"}, headers=h)
    put = c.put("/admin/providers/openai", json={"value": secret}, headers=h)
    assert put.status_code == 200 and put.json()["last4"] == secret[-4:]
    assert c.put("/admin/providers/anthropic", json={"value": own, "tenant_id": "acme"}, headers=h).status_code == 200
    assert c.put("/admin/providers/x", json={"value": "v", "tenant_id": "nobody"}, headers=h).status_code == 404
    everything = c.get("/admin/providers", headers=h).json()["data"]
    assert {(r["name"], r["tenant_id"], r["last4"]) for r in everything} == \
        {("openai", None, secret[-4:]), ("anthropic", "acme", own[-4:])}
    scoped = c.get("/admin/providers", params={"tenant_id": "acme"}, headers=h).json()["data"]
    assert len(scoped) == 2
    auth = gw.app.state.gateway.auth
    assert auth.get_provider_secret("acme", "openai") == secret and auth.get_provider_secret("acme", "anthropic") == own
    with gw.app.state.gateway.store.engine.connect() as conn:
        stored = conn.execute(select(provider_secrets)).mappings().all()
    assert len(stored) == 2 and all(secret not in repr(dict(r)) and own not in repr(dict(r)) for r in stored)
    assert c.delete("/admin/providers/anthropic", params={"tenant_id": "acme"}, headers=h).json()["deleted"]
    assert c.delete("/admin/providers/anthropic", params={"tenant_id": "acme"}, headers=h).status_code == 404
    assert not any(secret in body or own in body for body in gw.seen)


def test_402_when_credits_run_out(gw: Server) -> None:
    c, h = gw.client, bearer(gw.admin)
    assert c.post("/admin/tenants", json={"id": "poor", "credits": 0.6}, headers=h).json()["credits"]["balance"] == 0.6
    key = c.post("/admin/keys", json={"tenant_id": "poor"}, headers=h).json()["key"]
    assert c.post("/v1/chat/completions", json={}, headers=bearer(key)).status_code == 200   # 0.2 charged
    refused = c.post("/v1/chat/completions", json={}, headers=bearer(key))
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "insufficient_quota"
    anthropic = c.post("/v1/messages", json={}, headers={"x-api-key": key})
    assert anthropic.status_code == 402 and anthropic.json()["error"]["type"] == "billing_error"
    credits = c.get("/admin/tenants/poor", headers=h).json()["credits"]
    assert credits == {"balance": pytest.approx(0.4), "reserved": 0.0, "available": pytest.approx(0.4), "spent": 0.2}
    assert c.post("/admin/tenants/poor/credits", json={"amount": 1}, headers=h).json()["available"] == \
        pytest.approx(1.4)
    assert c.post("/v1/chat/completions", json={}, headers=bearer(key)).status_code == 200
    assert c.put("/admin/tenants/poor/credits", json={"balance": None}, headers=h).json()["balance"] is None
    assert c.put("/admin/tenants/nobody/credits", json={"balance": 1}, headers=h).status_code == 404


def test_429_with_retry_after_across_two_gateways(servers, pg_url: str) -> None:  # noqa: F811
    master = Fernet.generate_key()
    a, b = servers(pg_url, master), servers(pg_url, master)      # two engines on one PostgreSQL DB
    auth = a.app.state.gateway.auth
    tenant = auth.create_tenant(f"t-{uuid.uuid4().hex[:8]}").id
    _, key = auth.create_key(tenant, rpm=3)
    if int(time.time()) % 60 > 55:                                # stay inside one window
        time.sleep(61 - time.time() % 60)
    for server in (a, b, a):
        assert server.client.post("/v1/chat/completions", json={}, headers=bearer(key)).status_code == 200
    for server in (b, a):
        limited = server.client.post("/v1/chat/completions", json={}, headers=bearer(key))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    limited = b.client.post("/v1/messages", json={}, headers={"x-api-key": key})
    assert limited.status_code == 429 and limited.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in limited.headers


def test_spend_by_metadata_and_tenant_isolation(gw: Server) -> None:
    c, h = gw.client, bearer(gw.admin)
    for tid in ("blue", "red"):
        c.post("/admin/tenants", json={"id": tid}, headers=h)
    blue = c.post("/admin/keys", json={"tenant_id": "blue"}, headers=h).json()["key"]
    blue2 = c.post("/admin/keys", json={"tenant_id": "blue"}, headers=h).json()["key"]
    red = c.post("/admin/keys", json={"tenant_id": "red"}, headers=h).json()["key"]
    for key, model, team in ((blue, "gpt-x", "search"), (blue, "gpt-x", "ads"), (blue2, "claude", "search"),
                             (red, "gpt-x", "search"), (red, "llama", "secret-team")):
        c.post("/v1/chat/completions", json={"model": model, "metadata": {"team": team}}, headers=bearer(key))

    by_team = c.get("/v1/spend", params={"group_by": "metadata.team"}, headers=bearer(blue2)).json()
    assert by_team["tenant_id"] == "blue"
    assert {r["group"]: r["requests"] for r in by_team["data"]} == {"search": 2, "ads": 1}
    assert by_team["total"]["requests"] == 3 and by_team["total"]["cost"] == pytest.approx(0.6)
    by_model = c.get("/v1/spend", headers=bearer(red)).json()
    assert {r["group"] for r in by_model["data"]} == {"gpt-x", "llama"} and by_model["group_by"] == "model"
    assert {r["group"] for r in c.get("/v1/spend?group_by=model", headers=bearer(blue)).json()["data"]} == \
        {"gpt-x", "claude"}
    assert "secret-team" not in c.get("/v1/spend?group_by=metadata.team", headers=bearer(blue)).text
    future = c.get("/v1/spend", params={"start": "2999-01-01", "group_by": "key"}, headers=bearer(blue)).json()
    assert future["data"] == [] and future["start"] == "2999-01-01T00:00:00+00:00"
    window = c.get("/v1/spend", params={"start": "2020-01-01T00:00:00+02:00", "end": str(time.time() + 60)},
                   headers=bearer(blue)).json()
    assert window["total"]["requests"] == 3

    recent = c.get("/v1/spend/requests", params={"limit": 2}, headers=bearer(blue)).json()["data"]
    assert len(recent) == 2 and all(r["tenant_id"] == "blue" for r in recent)
    assert recent[0]["metadata"] == {"team": "search"} and recent[0]["model"] == "claude"
    assert len(c.get("/v1/spend/requests", headers=bearer(red)).json()["data"]) == 2

    for path, param in (("/v1/spend?group_by=tenant", "group_by"), ("/v1/spend?group_by=metadata.", "group_by"),
                        ("/v1/spend?start=yesterday", "start"), ("/v1/spend?end=2020-13-01", "end"),
                        ("/v1/spend?start=2024-02-01&end=2024-01-01", "end"),
                        ("/v1/spend/requests?limit=abc", "limit"), ("/v1/spend/requests?limit=0", "limit")):
        bad = c.get(path, headers=bearer(blue))
        assert bad.status_code == 422, path
        assert bad.json()["error"]["param"] == param and param in bad.json()["error"]["message"]


def test_admin_cli(gw: Server, monkeypatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("COGKIT_GATEWAY_URL", gw.url)
    monkeypatch.setenv("COGKIT_ADMIN_KEY", gw.admin)

    def run(app, *args, input=None):
        result = runner.invoke(app, list(args), input=input)
        assert result.exit_code == 0, result.output
        return result.output

    assert "Created tenant acme" in run(tenants_app, "create", "acme", "--credits", "5")
    assert "acme" in run(tenants_app, "list")
    assert '"balance": 7.5' in run(tenants_app, "credits", "acme", "--add", "2.5")
    created = runner.invoke(keys_app, ["create", "--tenant", "acme", "--name", "ci", "--rpm", "60"])
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip().splitlines()[-1]
    assert gw.app.state.gateway.auth.authenticate(plaintext).tenant_id == "acme"
    listing = run(keys_app, "list", "--tenant", "acme")
    assert plaintext[:10] in listing and plaintext not in listing
    key_id = gw.app.state.gateway.auth.authenticate(plaintext).id
    assert f"Revoked {key_id}" in run(keys_app, "revoke", key_id)

    secret = "sk-cli-" + uuid.uuid4().hex
    out = run(providers_app, "set", "openai", "--tenant", "acme", input=secret + "\n")
    assert secret not in out and secret[-4:] in out
    assert gw.app.state.gateway.auth.get_provider_secret("acme", "openai") == secret
    listed = run(providers_app, "list")
    assert "openai" in listed and secret not in listed
    assert "Deleted" in run(providers_app, "delete", "openai", "--tenant", "acme")

    wrong = runner.invoke(keys_app, ["list", "--admin-key", "ck-wrong"])
    assert wrong.exit_code == 1 and "401" in wrong.output
    unreachable = runner.invoke(keys_app, ["list", "--url", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output
    monkeypatch.delenv("COGKIT_ADMIN_KEY")
    assert "no admin key" in runner.invoke(keys_app, ["list"]).output
