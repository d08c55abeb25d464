"""Spend, credits, rate limits, tenants, secrets and platform models through the real gateway."""
from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.conftest import EXAMPLES
from tests.gateway_harness import provider

MSG = [{"role": "user", "content": "count these five words"}]


@pytest.fixture
def gw(fakes, gateway):
    fake = fakes("openai")
    g = gateway({"providers": [provider("openai", fake)],
                 "models": [{"name": "m", "input_price": 1000, "output_price": 2000,
                             "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}]})
    g.fake = fake
    return g


def test_spend_is_grouped_by_a_metadata_key(gw):
    key = gw.new_key("acme")
    client = gw.openai(key)
    for team in ("search", "search", "chat"):
        client.chat.completions.create(model="m", messages=MSG, extra_body={"metadata": {"team": team}})
    with gw.http(key) as c:   # the header form, on /ai/run, streamed
        with c.stream("POST", "/ai/run/m", json={"prompt": "x", "stream": True},
                      headers={"x-cogkit-metadata": json.dumps({"team": "batch"})}) as s:
            s.read()
    gw.usage(key, 4)
    with gw.http(key) as c:
        spend = c.get("/v1/spend", params={"group_by": "metadata.team"}).json()
    groups = {row["group"]: row for row in spend["data"]}
    assert groups["search"]["requests"] == 2 and groups["chat"]["requests"] == 1 and groups["batch"]["requests"] == 1
    assert groups["search"]["cost"] == pytest.approx(2 * groups["chat"]["cost"]) and groups["chat"]["cost"] > 0
    # `metadata` never reaches an upstream that doesn't take it.
    assert all("metadata" not in (r["json"] or {}) for r in gw.fake.requests())
    row = gw.usage(key, 4)[0]
    assert row["provider"] == "openai" and row["ttft_ms"] is not None and row["latency_ms"] > 0


def test_insufficient_credits_is_402_and_spend_is_settled(gw):
    key = gw.new_key("poor", credits=0.0)
    with pytest.raises(openai.APIStatusError) as e:
        gw.openai(key).chat.completions.create(model="m", messages=MSG, max_tokens=10)
    assert e.value.status_code == 402
    rich = gw.new_key("rich", credits=1.0)
    gw.openai(rich).chat.completions.create(model="m", messages=MSG, max_tokens=10)
    row = gw.usage(rich, 1)[0]
    deadline = time.monotonic() + 5
    while True:
        credits = gw.admin("GET", "/admin/tenants/rich")["credits"]
        if credits["reserved"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert credits["reserved"] == 0 and credits["spent"] == pytest.approx(row["cost"], abs=1e-6)
    assert credits["balance"] == pytest.approx(1.0 - row["cost"], abs=1e-6)


def test_rate_limit_is_429_with_retry_after(gw):
    key = gw.new_key("limited", rpm=2)
    client = gw.openai(key)
    client.chat.completions.create(model="m", messages=MSG)
    client.chat.completions.create(model="m", messages=MSG)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="m", messages=MSG)
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert gw.fake.stats()["requests"] == 2


def test_tenants_see_only_their_own_spend(gw):
    alice, bob = gw.new_key("alice"), gw.new_key("bob")
    gw.openai(alice).chat.completions.create(model="m", messages=MSG)
    assert len(gw.usage(alice, 1)) == 1
    assert gw.usage(bob, 1, timeout=0.5) == []
    with gw.http(bob) as c:
        assert c.get("/v1/spend").json()["data"] == []


def test_provider_keys_come_from_encrypted_secrets_and_never_show(fakes, gateway):
    secret_value = "sk-upstream-very-secret-123456"
    fake = fakes("openai", api_key=secret_value)
    g = gateway({"providers": [{"name": "openai", "kind": "openai", "base_url": fake.base_url,
                                "api_key_secret": "openai-key"}],
                 "models": [{"name": "m", "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}]})
    put = g.admin("PUT", "/admin/providers/openai-key", {"value": secret_value})
    assert secret_value not in json.dumps(put)
    resp = g.openai(g.admin_key).chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert resp.parse().choices[0].message.content.startswith("Echo:")
    assert fake.last_request()["headers"]["authorization"] == f"Bearer {secret_value}"
    with g.http(g.admin_key) as c:
        listed = c.get("/admin/providers").text + c.get("/v1/spend/requests").text + c.get("/v1/models").text
        listed += c.get("/metrics").text + c.get("/health").text
    assert secret_value not in listed
    g.close()
    logs = g.logs()
    assert '"event":"request"' in logs
    for secret in (secret_value, g.admin_key):
        assert secret not in logs and secret not in "".join(g.stdout[1:])
    assert MSG[0]["content"] not in logs          # no prompts unless logging.log_prompts


def test_response_cache_serves_repeats_when_enabled(fakes, gateway):
    fake = fakes("openai")
    g = gateway({"providers": [provider("openai", fake)], "cache": {"enabled": True, "ttl": 60},
                 "models": [{"name": "m", "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}]})
    client = g.openai(g.admin_key)
    first = client.chat.completions.create(model="m", messages=MSG)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=MSG)
    assert raw.headers["x-cogkit-cache"] == "hit" and raw.parse().choices[0].message.content == \
        first.choices[0].message.content
    assert fake.stats()["requests"] == 1


def test_platform_model_runs_on_a_cog_server(serve_project, gateway):
    cog = serve_project(EXAMPLES / "text-stream")
    g = gateway({"providers": [{"name": "local-cog", "kind": "platform", "base_url": cog.url}],
                 "models": [{"name": "@acme/echo", "deployments": [{"provider": "local-cog"}]}]})
    with g.http(g.admin_key) as c:
        r = c.post("/ai/run/@acme/echo", json={"prompt": "hello platform world"})
        assert r.status_code == 200, r.text
        assert "".join(r.json()["output"]) == "hello platform world"
        assert r.headers["x-cogkit-provider"] == "local-cog"
        r = c.post("/ai/run/@acme/echo:v1", json={"input": {"prompt": "one two three", "delay": 0.05}, "stream": True})
        events = [block for block in r.text.split("\n\n") if block.strip()]
        outputs = [json.loads(line[6:]) for b in events if "event: output" in b for line in b.split("\n")
                   if line.startswith("data: ")]
        assert outputs == ["one", " two", " three"] and "event: completed" in events[-1]
        bad = c.post("/ai/run/@acme/echo", json={"prompt": ""})
        assert bad.status_code == 422
        assert c.post("/v1/chat/completions", json={"model": "@acme/echo", "messages": MSG}).status_code == 400
    with pytest.raises(httpx.HTTPStatusError):
        httpx.post(g.url + "/ai/run/@acme/echo", json={"prompt": "no key"}).raise_for_status()


def test_streamed_call_to_a_non_streaming_cog_server_is_one_prediction_relayed(serve_project, gateway):
    # Cog 0.23 answers 406 to server-sent events for a model that is not @cog.streaming: the provider
    # asks it for one prediction and tells the result as the same events a streaming model would.
    cog = serve_project(EXAMPLES / "hello-world")
    g = gateway({"providers": [{"name": "local-cog", "kind": "platform", "base_url": cog.url}],
                 "models": [{"name": "@acme/hello", "deployments": [{"provider": "local-cog"}]}]})
    with g.http(g.admin_key) as c:
        r = c.post("/ai/run/@acme/hello", json={"input": {"name": "stream"}, "stream": True})
        assert r.status_code == 200, r.text
        events = [block for block in r.text.split("\n\n") if block.strip()]
        outputs = [json.loads(line[6:]) for b in events if "event: output" in b for line in b.split("\n")
                   if line.startswith("data: ")]
        assert outputs == ["hello stream"], r.text
        assert "event: logs" in r.text and "greeting stream" in r.text
        assert "event: completed" in events[-1] and '"succeeded"' in events[-1]
        assert c.post("/ai/run/@acme/hello", json={"input": {"name": "plain"}}).json()["output"] == "hello plain"
