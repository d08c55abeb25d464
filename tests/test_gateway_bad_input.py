"""Regression tests for the gateway under bad input (issue 8), against the real app on fake upstreams:
every case answers a 4xx naming the field, in the caller's format, never a 500 or a traceback;
size limits answer 413 with a sentence naming the limit; unknown routes answer in the client's format."""
from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway_harness import one_model_gateway, provider

LIMITS = {"max_body_bytes": 2_000_000, "max_name_chars": 64, "max_file_bytes": 100_000}


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    """One gateway for the module: no case here may reach the upstream or change a balance."""
    from tests.fakes import start_fake
    oa = start_fake("openai")
    work = tmp_path_factory.mktemp("bad-input")
    g = one_model_gateway(work, oa, "acme", 10.0, limits=LIMITS)
    g.fake = oa
    yield g
    g.close()
    oa.close()


def post(gw, path: str, body, key: str | None = None, **headers) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with gw.http(key or gw.key) as c:
        return c.post(path, content=raw, headers={"content-type": "application/json", **headers})


def openai_error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["type"] and err["message"], err
    for word in words:
        assert word in err["message"], (word, err)
    return err


def anthropic_error(resp: httpx.Response, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"], body
    for word in words:
        assert word in body["error"]["message"], (word, body)
    return body["error"]


def chat(content="hi", **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


def deep(n: int) -> str:
    return "[" * n + "]" * n


# ---------------------------------------------------------------- 500s on bad input
def test_deeply_nested_json_is_a_400_in_each_format(gw):
    body = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": %s}]}' % deep(2000)
    openai_error(post(gw, "/v1/chat/completions", body.encode()), 400, "nest")
    anthropic_error(post(gw, "/v1/messages", body.encode()), 400, "nest")
    openai_error(post(gw, "/ai/run/gpt-4o-mini", ('{"prompt": %s}' % deep(2000)).encode()), 400, "nest")
    assert gw.fake.stats()["requests"] == 0


def test_lone_surrogate_is_a_400_naming_the_field(gw):
    escaped = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\\ud800b"}]}'
    err = openai_error(post(gw, "/v1/chat/completions", escaped), 400, "messages.0.content")
    assert err["param"] == "messages.0.content"
    raw = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}'
    openai_error(post(gw, "/v1/chat/completions", raw), 400)
    anthropic_error(post(gw, "/v1/messages", escaped.replace(b'"messages"', b'"max_tokens": 5, "messages"')),
                    400, "messages.0.content")
    openai_error(post(gw, "/ai/run/gpt-4o-mini", b'{"prompt": "\\udfff"}'), 400, "prompt")
    openai_error(post(gw, "/ai/run/gpt-4o-mini", b'{"prompt": "ok", "system": "\\uDBFF"}'), 400, "system")
    assert gw.fake.stats()["requests"] == 0


@pytest.mark.parametrize("value", ["abc", [1], 1.5, -3, True])
def test_run_max_tokens_of_the_wrong_type_is_a_422(gw, value):
    err = openai_error(post(gw, "/ai/run/gpt-4o-mini", {"prompt": "hi", "max_tokens": value}), 422, "max_tokens")
    assert err["param"] == "max_tokens"


@pytest.mark.parametrize("value", [1e30, 2 ** 63, 10 ** 40])
def test_huge_max_tokens_on_a_priced_model_is_a_4xx(gw, value):
    err = openai_error(post(gw, "/v1/chat/completions", chat(max_tokens=value)), 422, "max_tokens")
    assert err["param"] == "max_tokens"
    openai_error(post(gw, "/ai/run/gpt-4o-mini", {"prompt": "hi", "max_tokens": value}), 422, "max_tokens")
    openai_error(post(gw, "/v1/chat/completions", chat(max_completion_tokens=value)), 422, "max_completion_tokens")
    anthropic_error(post(gw, "/v1/messages", chat(max_tokens=value)), 422, "max_tokens")
    assert gw.fake.stats()["requests"] == 0
    assert gw.admin("GET", "/admin/tenants/acme")["credits"]["reserved"] == 0


@pytest.mark.parametrize("value", ["1e300", "-1.8e308", "1e16", "NaN"])
def test_huge_credits_in_the_admin_api_are_a_422(gw, value):
    resp = post(gw, "/admin/tenants", ('{"id": "big", "credits": %s}' % value).encode(), gw.admin_key)
    err = openai_error(resp, 422, "credits")
    assert err["param"] == "body.credits"
    openai_error(post(gw, "/admin/tenants/acme/credits", ('{"amount": %s}' % value).encode(), gw.admin_key),
                 422, "amount")
    with gw.http(gw.admin_key) as c:
        assert c.get("/admin/tenants/big").status_code == 404
        resp = c.put("/admin/tenants/acme/credits", content=('{"balance": %s}' % value).encode(),
                     headers={"content-type": "application/json"})
        openai_error(resp, 422, "balance")
        assert c.get("/admin/tenants/acme").json()["credits"]["balance"] == 10.0


@pytest.mark.parametrize("messages", ["abc", [1, 2], [{"role": "user", "content": 5}], [{"content": "x"}]])
def test_run_bad_messages_are_a_422_naming_the_field(gw, messages):
    err = openai_error(post(gw, "/ai/run/gpt-4o-mini", {"messages": messages}), 422, "messages")
    assert err["param"].startswith("messages")
    assert gw.fake.stats()["requests"] == 0


def test_content_part_whose_type_is_not_a_string_is_a_422(gw):
    parts = [{"type": {}, "text": "x"}]
    err = openai_error(post(gw, "/v1/chat/completions", chat(parts)), 422, "messages.0")
    assert err["param"].startswith("messages.0")
    anthropic_error(post(gw, "/v1/messages", chat([{"type": {}}], max_tokens=5)), 422, "messages.0")
    openai_error(post(gw, "/ai/run/gpt-4o-mini", {"messages": [{"role": "user", "content": parts}]}), 422,
                 "messages.0")


# ---------------------------------------------------------------- size limits
def test_a_body_over_the_limit_is_a_413_naming_it_and_never_forwarded(gw):
    big = chat("x" * 3_000_000)
    err = openai_error(post(gw, "/v1/chat/completions", big), 413, "2000000 bytes")
    assert "request body" in err["message"]
    anthropic_error(post(gw, "/v1/messages", {**big, "max_tokens": 5}), 413, "2000000 bytes")
    # chunked, with no content-length: counted as it arrives
    with gw.http(gw.key) as c:
        def chunks():
            yield json.dumps(big).encode()
        resp = c.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    openai_error(resp, 413, "2000000 bytes")
    assert gw.fake.stats()["requests"] == 0


def test_the_default_body_limit_refuses_50_mb(fakes, gateway):
    oa = fakes("openai")
    g = gateway({"providers": [provider("openai", oa)], "models": [{"name": "m", "deployments": [{"provider": "openai"}]}]})
    resp = post(g, "/v1/chat/completions", b"{" + b" " * 50_000_000 + b"}", g.admin_key)
    openai_error(resp, 413, "request body")
    assert oa.stats()["requests"] == 0


def test_a_tenant_name_over_the_limit_is_a_413(gw):
    resp = post(gw, "/admin/tenants", {"id": "named", "name": "n" * 5000}, gw.admin_key)
    openai_error(resp, 413, "name", "64")
    resp = post(gw, "/admin/keys", {"tenant_id": "acme", "name": "k" * 5000}, gw.admin_key)
    openai_error(resp, 413, "name", "64")


def test_a_file_input_over_the_limit_is_a_413(gw):
    data_url = "data:application/octet-stream;base64," + "A" * 200_000
    resp = post(gw, "/ai/run/gpt-4o-mini", {"prompt": "hi", "image": data_url})
    openai_error(resp, 413, "image", "100000 bytes")


# ---------------------------------------------------------------- unknown routes
def test_unknown_routes_answer_in_the_clients_format(gw):
    with gw.http(gw.key) as c:
        openai_error(c.get("/v1/nope"), 404, "/v1/nope")
        openai_error(c.post("/v1/chat/completion", json={}), 404)
        anthropic_error(c.post("/v1/messages/nope", json={}), 404, "/v1/messages/nope")
        anthropic_error(c.get("/v1/messages"), 405)
        gem = c.post("/v1beta/nope", json={})
        assert gem.status_code == 404 and gem.json()["error"]["status"] == "NOT_FOUND", gem.text
        assert gem.json()["error"]["code"] == 404
        openai_error(c.get("/nowhere"), 404)
