"""The client APIs added in issue 8, each with its official SDK as the client, on fake upstreams of
every kind: OpenAI's Responses API (openai), Anthropic's count_tokens (anthropic), Gemini's
generateContent / streamGenerateContent (google-genai)."""
from __future__ import annotations

import json

import httpx
import pytest
from google import genai
from google.genai import types

from tests.gateway_harness import provider

MODELS = (("gpt-4o-mini", "openai"), ("claude-sonnet", "anthropic"), ("gemini-flash", "google"))
TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture
def gw(fakes, gateway):
    oa, an, ge, down = fakes("openai"), fakes("anthropic"), fakes("gemini"), fakes("openai")
    down.set_fault("down")
    g = gateway({
        "providers": [provider("openai", oa), provider("anthropic", an), provider("google", ge),
                      provider("down", down)],
        "models": [
            {"name": "gpt-4o-mini", "input_price": 0.15, "output_price": 0.6,
             "deployments": [{"provider": "down", "priority": 0}, {"provider": "openai", "priority": 1}]},
            {"name": "claude-sonnet", "input_price": 3, "output_price": 15,
             "deployments": [{"provider": "anthropic", "model": "claude-sonnet-4-5"}]},
            {"name": "gemini-flash", "deployments": [{"provider": "google", "model": "gemini-2.0-flash"}]},
        ]})
    g.fakes = {"openai": oa, "anthropic": an, "google": ge}
    g.key = g.new_key("acme", credits=50.0)
    return g


# ---------------------------------------------------------------- OpenAI Responses API
def test_responses_plain_to_every_provider_with_instructions_usage_and_metadata(gw):
    client = gw.openai(gw.key)
    for model, served_by in MODELS:
        raw = client.responses.with_raw_response.create(model=model, instructions="be brief", input="hello there",
                                                        metadata={"team": "search"})
        resp = raw.parse()
        assert resp.object == "response" and resp.status == "completed", model
        assert resp.output_text == "Echo: hello there", model
        assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
        assert resp.instructions == "be brief" and resp.metadata == {"team": "search"}
        assert raw.headers["x-cogkit-provider"] == served_by
    assert gw.fakes["openai"].stats()["requests"] == 1          # after failing over from `down`
    rows = gw.usage(gw.key, 3)
    assert {r["model"] for r in rows} == {m for m, _ in MODELS}
    assert all(r["metadata"] == {"team": "search"} and r["cost"] >= 0 for r in rows)
    assert [r for r in rows if r["model"] == "gpt-4o-mini"][0]["attempted"] == ["down", "openai"]


def test_responses_streamed_typed_events_resumable(gw):
    client = gw.openai(gw.key)
    for model, _served_by in MODELS:
        with client.responses.stream(model=model, input="hello there") as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed", (model, kinds)
        assert "response.output_text.delta" in kinds and final.output_text == "Echo: hello there"
        assert final.usage.total_tokens > 0
    with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {gw.key}"}, timeout=30) as c:
        with c.stream("POST", "/v1/responses", json={"model": "gpt-4o-mini", "input": "hi", "stream": True}) as r:
            stream_id = r.headers["x-cogkit-stream-id"]
            first = r.read()
        again = c.get(f"/v1/streams/{stream_id}", params={"from": 0}).content
    assert again == first and b"event: response.completed" in again


def test_responses_tools_tool_outputs_and_previous_response_id(gw):
    client = gw.openai(gw.key)
    for model, served_by in MODELS:
        first = client.responses.create(model=model, tools=[TOOL], input="call get_weather city=Paris")
        call = [item for item in first.output if item.type == "function_call"][0]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}, model
        second = client.responses.create(model=model, previous_response_id=first.id, tools=[TOOL], input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
        # (Gemini takes a function's result as an object: {"content": "sunny"} is what its fake echoes)
        assert second.output_text.startswith("Tool result:") and "sunny" in second.output_text, model
        assert second.previous_response_id == first.id
        # streamed, the same turn
        with client.responses.stream(model=model, tools=[TOOL], input="call get_weather city=Oslo") as stream:
            final = stream.get_final_response()
        streamed_call = [item for item in final.output if item.type == "function_call"][0]
        assert json.loads(streamed_call.arguments) == {"city": "Oslo"}
        third = client.responses.create(model=model, previous_response_id=final.id, tools=[TOOL], input=[
            {"type": "function_call_output", "call_id": streamed_call.call_id, "output": "cold"}])
        assert third.output_text.startswith("Tool result:") and "cold" in third.output_text
    # the conversation reached the upstream: the first user message is in the second turn's request
    sent = httpx.get(gw.fakes["openai"].url + "/_requests").json()
    turns = [r["json"]["messages"] for r in sent if r["path"].endswith("/chat/completions")]
    assert any(m.get("content") == "call get_weather city=Paris" for m in turns[-1] + turns[1])


def test_responses_refusals_name_the_field(gw):
    client = gw.openai(gw.key)
    import openai
    with pytest.raises(openai.NotFoundError, match="previous_response_id"):
        client.responses.create(model="gpt-4o-mini", previous_response_id="resp_nope", input="x")
    with pytest.raises(openai.BadRequestError, match="tools.0"):
        client.responses.create(model="gpt-4o-mini", input="x", tools=[{"type": "web_search"}])
    other = gw.openai(gw.new_key("other"))
    mine = client.responses.create(model="gpt-4o-mini", input="x")
    with pytest.raises(openai.NotFoundError):                   # another tenant's conversation
        other.responses.create(model="gpt-4o-mini", previous_response_id=mine.id, input="y")


# ---------------------------------------------------------------- Anthropic count_tokens
def test_count_tokens_passthrough_provider_count_or_estimate(gw):
    client = gw.anthropic(gw.key)
    msgs = [{"role": "user", "content": "one two three four"}]
    for model, how in (("claude-sonnet", "provider"), ("gemini-flash", "provider"), ("gpt-4o-mini", "estimate")):
        raw = client.messages.with_raw_response.count_tokens(model=model, messages=msgs, system="be brief")
        assert raw.parse().input_tokens > 0, model
        assert raw.headers["x-cogkit-token-count"] == how, model
    assert gw.fakes["anthropic"].stats()["by_path"].get("/v1/messages/count_tokens") == 1
    assert gw.usage(gw.key, 1, timeout=0.5) == []              # counting is not billed


# ---------------------------------------------------------------- Gemini as a client format
def _genai(gw) -> genai.Client:
    return genai.Client(api_key=gw.key, http_options=types.HttpOptions(base_url=gw.url, api_version="v1beta"))


def test_gemini_sdk_to_every_provider_plain_and_streamed(gw):
    client = _genai(gw)
    for model, _served_by in MODELS:
        resp = client.models.generate_content(model=model, contents="hello there",
                                              config=types.GenerateContentConfig(system_instruction="be brief"))
        assert resp.text == "Echo: hello there", model
        assert resp.usage_metadata.prompt_token_count > 0
        chunks = list(client.models.generate_content_stream(model=model, contents="hello there"))
        assert "".join(c.text or "" for c in chunks) == "Echo: hello there", model
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_gemini_sdk_function_calling(gw):
    client = _genai(gw)
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", description="Weather", parameters={"type": "OBJECT", "properties": {
            "city": {"type": "STRING"}}})])
    config = types.GenerateContentConfig(tools=[tool], automatic_function_calling={"disable": True})
    for model, _served_by in MODELS:
        resp = client.models.generate_content(model=model, contents="call get_weather city=Paris", config=config)
        call = resp.function_calls[0]
        assert call.name == "get_weather" and call.args == {"city": "Paris"}, model


def test_gemini_errors_in_googles_format(gw):
    client = _genai(gw)
    from google.genai import errors
    with pytest.raises(errors.ClientError) as e:
        client.models.generate_content(model="no-such-model", contents="x")
    assert e.value.code == 404
    with httpx.Client(base_url=gw.url, timeout=30) as c:
        bad = c.post("/v1beta/models/gpt-4o-mini:generateContent", params={"key": "ck-wrong"}, json={"contents": []})
        assert bad.status_code == 401 and bad.json()["error"]["status"] == "UNAUTHENTICATED"
        bad = c.post("/v1beta/models/gpt-4o-mini:generateContent", headers={"x-goog-api-key": gw.key},
                     json={"contents": "nope"})
        assert bad.status_code == 422 and bad.json()["error"]["status"] == "INVALID_ARGUMENT", bad.text
