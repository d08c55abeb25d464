"""The gateway's client APIs through the official SDKs, on fake upstreams: OpenAI- and
Anthropic-format clients to models of either kind (text, tools, streaming), /ai/run,
/v1/models, unknown models, /metrics."""
from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.gateway_harness import provider

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


@pytest.fixture
def gw(fakes, gateway):
    oa, an, ge = fakes("openai"), fakes("anthropic"), fakes("gemini")
    g = gateway({
        "providers": [provider("openai", oa), provider("anthropic", an), provider("google", ge)],
        "models": [
            {"name": "gpt-4o-mini", "aliases": ["mini"], "input_price": 0.15, "output_price": 0.6,
             "context_window": 128000, "deployments": [{"provider": "openai"}]},
            {"name": "claude-sonnet", "input_price": 3, "output_price": 15,
             "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}]},
            {"name": "gemini-flash", "deployments": [{"provider": "google", "model": "gemini-2.0-flash"}]},
            {"name": "text-embedding-3-small", "kind": "embedding", "deployments": [{"provider": "openai"}]},
        ]})
    g.fakes = {"openai": oa, "anthropic": an, "google": ge}
    return g


def test_openai_sdk_chat_to_each_provider(gw):
    client = gw.openai(gw.admin_key)
    for model, served_by in (("gpt-4o-mini", "openai"), ("claude-sonnet", "anthropic"), ("gemini-flash", "google")):
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
        resp = raw.parse()
        assert resp.choices[0].message.content == "Echo: hello there", model
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
        assert raw.headers["x-cogkit-provider"] == served_by
        assert raw.headers["x-cogkit-attempted"] == served_by
        assert float(raw.headers["x-cogkit-overhead-ms"]) >= 0


def test_openai_sdk_streams_from_anthropic_with_tools(gw):
    client = gw.openai(gw.admin_key)
    stream = client.chat.completions.create(
        model="claude-sonnet", stream=True, stream_options={"include_usage": True}, tools=[TOOL],
        messages=[{"role": "user", "content": "call get_weather city=Paris"}])
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].function.name == "get_weather"
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Paris"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # Text, streamed, without include_usage: no `choices: []` chunk to trip over.
    text = client.chat.completions.create(model="claude-sonnet", stream=True,
                                          messages=[{"role": "user", "content": "one two three"}])
    parts = [c.choices[0].delta.content or "" for c in text]
    assert "".join(parts) == "Echo: one two three"


def test_anthropic_sdk_to_openai_model(gw):
    client = gw.anthropic(gw.admin_key)
    msg = client.messages.create(model="gpt-4o-mini", max_tokens=100, system="be brief",
                                 messages=[{"role": "user", "content": "hi you"}])
    assert msg.content[0].text == "Echo: hi you" and msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    with client.messages.stream(model="gpt-4o-mini", max_tokens=100,
                                tools=[{"name": "get_weather", "description": "w",
                                        "input_schema": TOOL["function"]["parameters"]}],
                                messages=[{"role": "user", "content": "call get_weather city=Rome"}]) as s:
        final = s.get_final_message()
    tool = [b for b in final.content if b.type == "tool_use"][0]
    assert tool.name == "get_weather" and tool.input == {"city": "Rome"} and final.stop_reason == "tool_use"
    with client.messages.stream(model="gpt-4o-mini", max_tokens=100,
                                messages=[{"role": "user", "content": "stream me"}]) as s:
        assert "".join(s.text_stream) == "Echo: stream me"


def test_anthropic_sdk_to_anthropic_model_and_auth_header(gw):
    msg = gw.anthropic(gw.admin_key).messages.create(model="claude-sonnet", max_tokens=50,
                                                     messages=[{"role": "user", "content": "ping"}])
    assert msg.content[0].text == "Echo: ping"
    with pytest.raises(anthropic.AuthenticationError):
        gw.anthropic("ck-wrong").messages.create(model="claude-sonnet", max_tokens=5,
                                                 messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        gw.openai("ck-wrong").chat.completions.create(model="mini", messages=[{"role": "user", "content": "x"}])


def test_embeddings_completions_and_models(gw):
    client = gw.openai(gw.admin_key)
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    comp = client.completions.create(model="gpt-4o-mini", prompt="say this")
    assert "say this" in comp.choices[0].text
    ids = [m.id for m in client.models.list()]
    assert {"gpt-4o-mini", "claude-sonnet", "gemini-flash"} <= set(ids)
    with gw.http(gw.admin_key) as c:
        listing = c.get("/v1/models").json()["data"]
    mini = [m for m in listing if m["id"] == "gpt-4o-mini"][0]
    assert mini["context_window"] == 128000 and mini["pricing"]["input_per_million"] == 0.15
    assert mini["aliases"] == ["mini"]


def test_unknown_model_404_with_suggestions(gw):
    client = gw.openai(gw.admin_key)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o-minii", messages=[{"role": "user", "content": "x"}])
    assert "gpt-4o-mini" in e.value.body["suggestions"]
    assert "did you mean" in e.value.message
    with pytest.raises(anthropic.NotFoundError):
        gw.anthropic(gw.admin_key).messages.create(model="claude-sonet", max_tokens=5,
                                                   messages=[{"role": "user", "content": "x"}])
    with gw.http(gw.admin_key) as c:
        r = c.post("/ai/run/@nobody/nothing", json={"prompt": "x"})
    assert r.status_code == 404


def test_ai_run_chat_model(gw):
    with gw.http(gw.admin_key) as c:
        r = c.post("/ai/run/claude-sonnet", json={"prompt": "run me", "max_tokens": 20})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["output"] == "Echo: run me" and body["provider"] == "anthropic" and body["usage"]
        with c.stream("POST", "/ai/run/gpt-4o-mini", json={"input": {"prompt": "a b c"}, "stream": True}) as s:
            assert s.headers["x-cogkit-stream-id"]
            text = s.read().decode()
    outputs = [json.loads(line[6:]) for block in text.split("\n\n") for line in block.split("\n")
               if line.startswith("data: ") and "event: output" in block]
    assert "".join(outputs) == "Echo: a b c"
    assert "event: completed" in text


def test_validation_errors_name_the_field(gw):
    with gw.http(gw.admin_key) as c:
        r = c.post("/v1/chat/completions", json={"model": "mini", "messages": "nope"})
        assert r.status_code == 422 and "messages" in r.json()["error"]["message"]
        r = c.post("/v1/messages", json={"model": "mini", "messages": [], "max_tokens": "x"},
                   headers={"x-api-key": gw.admin_key})
        assert r.status_code == 422 and r.json()["type"] == "error"


def test_metrics_endpoint(gw):
    gw.openai(gw.admin_key).chat.completions.create(model="mini", messages=[{"role": "user", "content": "m"}])
    text = httpx.get(gw.url + "/metrics").text
    assert 'cogkit_gateway_requests_total{endpoint="chat",model="mini",provider="openai",status="ok"} 1.0' in text
    for name in ("cogkit_gateway_request_seconds_bucket", "cogkit_gateway_tokens_total",
                 "cogkit_gateway_overhead_seconds_bucket"):
        assert name in text


def test_gemini_streaming_and_completions_streaming(gw):
    client = gw.openai(gw.admin_key)
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gemini-flash", stream=True, messages=[{"role": "user", "content": "from gemini"}]) if c.choices]
    assert "".join(parts) == "Echo: from gemini"
    text = "".join(c.choices[0].text for c in client.completions.create(model="gpt-4o-mini", prompt="abc def",
                                                                         stream=True) if c.choices)
    assert "abc def" in text
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        client.embeddings.create(model="claude-sonnet", input="x")


def test_first_start_prints_the_admin_key_once(gw, gateway):
    assert gw.admin_key and gw.admin_key.startswith("ck-")
    gw.close()
    again = gateway({"providers": [], "models": []}, name="again")   # same state dir, same store
    assert again.admin_key is None and any("cogkit gateway on" in line for line in again.stdout)
    assert again.http(gw.admin_key).get("/v1/models").status_code == 200


def test_embedded_default_reaches_official_providers_from_environment(fakes, gateway):
    """No config file: `openai/...`, `anthropic/...`, `google/...` go to the official APIs with keys
    (and base URLs) from the usual environment variables. Here those point at the fakes."""
    oa, an, ge = fakes("openai"), fakes("anthropic"), fakes("gemini")
    g = gateway(None, env={"OPENAI_BASE_URL": oa.base_url, "OPENAI_API_KEY": oa.api_key,
                           "ANTHROPIC_BASE_URL": an.base_url, "ANTHROPIC_API_KEY": an.api_key,
                           "GEMINI_BASE_URL": ge.base_url, "GEMINI_API_KEY": ge.api_key})
    client = g.openai(g.admin_key)
    for model in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "google/gemini-2.0-flash"):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi there"}])
        assert "hi there" in reply.choices[0].message.content
        assert reply.usage.completion_tokens > 0
    assert oa.stats()["requests"] and an.stats()["requests"] and ge.stats()["requests"]
