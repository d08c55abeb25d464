"""The fake providers, driven by the official openai and anthropic SDKs (and httpx for Gemini):
the SDKs must parse every reply and raise their own exception classes for every error."""
from __future__ import annotations

import base64
import json
import struct
import time

import anthropic
import httpx
import openai
import pytest

from server.translate import SSEDecoder
from tests.fakes import start_fake

# the anthropic SDK warns about model names it considers old; the fake does not care
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}]
CLAUDE_TOOLS = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
MSGS = [{"role": "user", "content": "hello there big world"}]


@pytest.fixture(scope="module")
def oai_fake():
    fake = start_fake("openai")
    yield fake
    fake.close()


@pytest.fixture
def oai(oai_fake):
    oai_fake.reset()
    yield openai.OpenAI(base_url=oai_fake.base_url, api_key=oai_fake.api_key, max_retries=0)
    oai_fake.reset()


@pytest.fixture(scope="module")
def claude_fake():
    fake = start_fake("anthropic")
    yield fake
    fake.close()


@pytest.fixture
def claude(claude_fake):
    claude_fake.reset()
    yield anthropic.Anthropic(base_url=claude_fake.base_url, api_key=claude_fake.api_key, max_retries=0)
    claude_fake.reset()


@pytest.fixture(scope="module")
def gemini():
    fake = start_fake("gemini")
    yield fake
    fake.close()


# ---------------------------------------------------------------- OpenAI
def test_openai_chat(oai, oai_fake):
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
    r = raw.parse()
    assert r.choices[0].message.content == "Echo: hello there big world"
    assert r.choices[0].finish_reason == "stop" and r.object == "chat.completion"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (4, 5, 9)
    assert raw.headers["x-ratelimit-remaining-requests"] and raw.headers["x-request-id"].startswith("req_")
    assert oai_fake.stats()["by_path"] == {"/v1/chat/completions": 1}
    assert oai_fake.last_request()["json"]["messages"] == MSGS


def test_openai_stream_bytes_and_usage(oai, oai_fake):
    body = {"model": "gpt-4o", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    resp = httpx.post(oai_fake.base_url + "/chat/completions", json=body,
                      headers={"authorization": f"Bearer {oai_fake.api_key}"})
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = resp.text.split("\n\n")
    assert frames[-2:] == ["data: [DONE]", ""] and all(f.startswith("data: {") for f in frames[:-2])
    chunks = [json.loads(f[6:]) for f in frames[:-2]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 9
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

    stream = oai.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
    parts = [c.choices[0].delta.content for c in stream]
    assert len(parts) > 3 and "".join(p or "" for p in parts) == "Echo: hello there big world"
    assert oai_fake.stats()["streams_completed"] == 2


def test_openai_tools_sync_stream_and_result(oai):
    msgs = [{"role": "user", "content": 'call get_weather city=Oslo days=3'}]
    r = oai.chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo", "days": 3}
    with oai.chat.completions.stream(model="gpt-4o", messages=msgs, tools=TOOLS) as s:
        final = s.get_final_completion()
    assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo", "days": 3}
    msgs += [r.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r2 = oai.chat.completions.create(model="gpt-4o", messages=msgs, tools=TOOLS)
    assert r2.choices[0].message.content == "Tool result: sunny"
    assert oai.chat.completions.create(model="gpt-4o", messages=msgs[:1], tools=TOOLS,
                                       tool_choice="none").choices[0].message.content.startswith("Echo:")


def test_openai_limits_stop_and_n(oai):
    r = oai.chat.completions.create(model="gpt-4o", messages=MSGS, max_completion_tokens=2, n=2)
    assert [c.message.content for c in r.choices] == ["Echo: hello"] * 2 and r.choices[0].finish_reason == "length"
    r = oai.chat.completions.create(model="gpt-4o", messages=MSGS, stop=[" big"])
    assert r.choices[0].message.content == "Echo: hello there" and r.choices[0].finish_reason == "stop"


def test_openai_request_errors(oai, oai_fake):
    bad = openai.OpenAI(base_url=oai_fake.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="no-such-model", messages=MSGS)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError, match="preceeding message with 'tool_calls'"):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "tool", "tool_call_id": "x", "content": "y"}])
    with pytest.raises(openai.BadRequestError, match="call_9"):
        oai.chat.completions.create(model="gpt-4o", messages=MSGS + [{"role": "assistant", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        oai.chat.completions.create(model="gpt-4o", messages=MSGS, stream_options={"include_usage": True})


def test_openai_faults(oai, oai_fake):
    oai_fake.set_fault("rate_limit", times=1, retry_after=3)
    with pytest.raises(openai.RateLimitError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    headers = e.value.response.headers
    assert headers["retry-after"] == "3" and headers["x-ratelimit-remaining-requests"] == "0"
    assert e.value.code == "rate_limit_exceeded"
    assert oai.chat.completions.create(model="gpt-4o", messages=MSGS).choices[0].message.content   # times=1 used up
    oai_fake.set_fault("error_500")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    oai_fake.set_fault("context_window", times=1)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert e.value.code == "context_length_exceeded"
    oai_fake.configure(context_window=3)
    with pytest.raises(openai.BadRequestError, match="maximum context length is 3 tokens"):
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    oai_fake.configure(context_window=None)
    assert oai_fake.stats()["requests"] == 6


def test_openai_down_refused_and_slow(oai, oai_fake):
    oai_fake.set_fault("down", times=1)
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert oai_fake.stats()["requests"] == 1
    oai_fake.set_fault("down", refuse=True)
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    with pytest.raises(httpx.ConnectError):
        httpx.get(oai_fake.url + "/_stats")
    oai_fake.clear_fault()
    assert oai.chat.completions.create(model="gpt-4o", messages=MSGS).choices[0].message.content
    oai_fake.set_fault("slow_first_token", delay=0.5, times=1)
    with pytest.raises(openai.APITimeoutError):
        oai.with_options(timeout=0.2).chat.completions.create(model="gpt-4o", messages=MSGS)
    oai_fake.set_fault("slow_first_token", delay=0.3, times=1)
    start = time.monotonic()
    next(iter(oai.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)))
    assert time.monotonic() - start >= 0.3


def test_openai_broken_streams(oai, oai_fake):
    oai_fake.set_fault("drop_mid_stream", times=1)
    with httpx.stream("POST", oai_fake.base_url + "/chat/completions", headers={
            "authorization": f"Bearer {oai_fake.api_key}"}, json={"model": "gpt-4o", "messages": MSGS,
                                                                   "stream": True}) as resp:
        got = b""
        with pytest.raises(httpx.RemoteProtocolError):
            for part in resp.iter_bytes():
                got += part
    events = SSEDecoder().feed(got)
    assert 1 <= len(events) < 5 and all(d != "[DONE]" for _, d in events)
    oai_fake.set_fault("stream_error", times=1)
    with pytest.raises(openai.APIError, match="had an error"):
        list(oai.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True))
    oai_fake.set_fault("drop_mid_stream", times=1)
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o", messages=MSGS)
    assert oai_fake.stats()["streams_aborted"] == 1


def test_openai_token_delay(oai, oai_fake):
    oai_fake.configure(token_delay=0.05)
    try:
        start = time.monotonic()
        stream = oai.chat.completions.create(model="gpt-4o", messages=MSGS, stream=True)
        first = next(c for c in stream if c.choices and c.choices[0].delta.content)
        ttft = time.monotonic() - start
        list(stream)
        assert first.choices[0].delta.content == "Echo:" and ttft >= 0.05
        assert time.monotonic() - start >= 0.25
    finally:
        oai_fake.configure(token_delay=0.0)


def test_openai_completions_embeddings_models(oai):
    r = oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="say this", max_tokens=10)
    assert r.choices[0].text == "Echo: say this" and r.usage.prompt_tokens == 2
    parts = [c.choices[0].text for c in oai.completions.create(model="gpt-3.5-turbo-instruct", prompt="a b",
                                                                 stream=True) if c.choices]
    assert "".join(parts) == "Echo: a b"
    e = oai.embeddings.create(model="text-embedding-3-small", input=["one", "two words"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 16 and e.usage.prompt_tokens == 3
    again = oai.embeddings.create(model="text-embedding-3-small", input="one", dimensions=16)
    assert again.data[0].embedding == e.data[0].embedding
    b64 = oai.embeddings.with_raw_response.create(model="text-embedding-3-small", input="one",
                                                  encoding_format="base64")
    vec = struct.unpack("<16f", base64.b64decode(json.loads(b64.text)["data"][0]["embedding"]))
    assert vec == pytest.approx(e.data[0].embedding, abs=1e-6)
    ids = [m.id for m in oai.models.list()]
    assert "gpt-4o" in ids and oai.models.retrieve("gpt-4o").id == "gpt-4o"


def test_openai_fake_in_a_process():
    fake = start_fake("openai", process=True, token_delay=0.0)
    try:
        client = openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0)
        assert client.chat.completions.create(model="gpt-4o", messages=MSGS).choices[0].message.content
        fake.set_fault("rate_limit", times=1)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o", messages=MSGS)
        assert fake.stats()["requests"] == 2 and fake.last_request()["path"] == "/v1/chat/completions"
    finally:
        fake.close()


# ---------------------------------------------------------------- Anthropic
def test_anthropic_message(claude, claude_fake):
    m = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, system="Be brief.", messages=MSGS)
    assert m.content[0].text == "Echo: hello there big world" and m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (6, 5)
    m = claude.messages.create(model="claude-sonnet-4-5", max_tokens=2, messages=MSGS)
    assert m.content[0].text == "Echo: hello" and m.stop_reason == "max_tokens"
    m = claude.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MSGS, stop_sequences=["big"])
    assert (m.stop_reason, m.stop_sequence, m.content[0].text) == ("stop_sequence", "big", "Echo: hello there")
    assert claude_fake.stats()["by_path"] == {"/v1/messages": 3}


def test_anthropic_stream_event_sequence(claude, claude_fake):
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=MSGS) as s:
        assert "".join(s.text_stream) == "Echo: hello there big world"
        final = s.get_final_message()
    assert final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
    resp = httpx.post(claude_fake.url + "/v1/messages", json={"model": "claude-x", "max_tokens": 9, "stream": True,
                                                              "messages": MSGS},
                      headers={"x-api-key": claude_fake.api_key, "anthropic-version": "2023-06-01"})
    names = [e for e, _ in SSEDecoder().feed(resp.content)]
    assert names == ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * 5 + [
        "content_block_stop", "message_delta", "message_stop"]
    assert resp.content.startswith(b"event: message_start\ndata: {") and resp.content.endswith(b"}\n\n")


def test_anthropic_tools(claude):
    msgs = [{"role": "user", "content": "call get_weather city=Oslo"}]
    m = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=msgs, tools=CLAUDE_TOOLS)
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["text", "tool_use"]
    use = m.content[1]
    assert use.name == "get_weather" and use.input == {"city": "Oslo"}
    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=msgs, tools=CLAUDE_TOOLS) as s:
        assert s.get_final_message().content[1].input == {"city": "Oslo"}
    msgs += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}]
    m2 = claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=msgs, tools=CLAUDE_TOOLS)
    assert m2.content[0].text == "Tool result: sunny"
    with pytest.raises(anthropic.BadRequestError, match="without `tool_result`"):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=msgs[:2] + [
            {"role": "user", "content": "forgot"}], tools=CLAUDE_TOOLS)


def test_anthropic_cache_tokens(claude):
    system = [{"type": "text", "text": "a long shared system prompt", "cache_control": {"type": "ephemeral"}}]
    first = claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, system=system, messages=MSGS)
    second = claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, system=system, messages=MSGS)
    assert (first.usage.cache_creation_input_tokens, first.usage.cache_read_input_tokens) == (5, 0)
    assert (second.usage.cache_creation_input_tokens, second.usage.cache_read_input_tokens) == (0, 5)
    assert first.usage.input_tokens == second.usage.input_tokens == 4


def test_anthropic_errors(claude, claude_fake):
    bad = anthropic.Anthropic(base_url=claude_fake.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS)
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="gpt-4o", max_tokens=10, messages=MSGS)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError, match="Unexpected role"):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "system", "content": "x"}])
    resp = httpx.post(claude_fake.url + "/v1/messages", json={"model": "claude-x", "messages": MSGS},
                      headers={"x-api-key": claude_fake.api_key, "anthropic-version": "2023-06-01"})
    assert resp.status_code == 400 and resp.json()["error"] == {"type": "invalid_request_error",
                                                                "message": "max_tokens: Field required"}
    assert resp.json()["type"] == "error"
    resp = httpx.post(claude_fake.url + "/v1/messages", json={}, headers={"x-api-key": claude_fake.api_key})
    assert resp.status_code == 400 and "anthropic-version" in resp.json()["error"]["message"]


def test_anthropic_faults(claude, claude_fake):
    claude_fake.set_fault("overloaded", times=1)
    with pytest.raises(anthropic.APIStatusError) as e:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS)
    assert e.value.status_code == 529 and e.value.body["error"]["type"] == "overloaded_error"
    claude_fake.set_fault("rate_limit", times=1, retry_after=2)
    with pytest.raises(anthropic.RateLimitError) as e:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS)
    assert e.value.response.headers["retry-after"] == "2"
    assert e.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    claude_fake.set_fault("error_500", times=1)
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS)
    claude_fake.set_fault("context_window", times=1)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS)
    claude_fake.set_fault("stream_error", times=1)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS) as s:
            list(s.text_stream)
    claude_fake.set_fault("drop_mid_stream", times=1)
    with pytest.raises(Exception) as e:    # the SDK lets its HTTP library's error through mid-stream
        with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS) as s:
            list(s.text_stream)
    assert isinstance(e.value, anthropic.APIConnectionError) or "peer closed connection" in str(e.value)
    claude_fake.set_fault("down", times=1)
    with pytest.raises(anthropic.APIConnectionError):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MSGS)
    assert claude_fake.stats()["requests"] == 7


# ---------------------------------------------------------------- Gemini
def _gen(fake, model="gemini-2.5-flash", action="generateContent", body=None, key=None, query=""):
    headers = {"x-goog-api-key": key if key is not None else fake.api_key}
    return httpx.post(f"{fake.base_url}/models/{model}:{action}{query}", headers=headers,
                      json=body or {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]})


def test_gemini_generate(gemini):
    r = _gen(gemini).json()
    assert r["candidates"][0]["content"] == {"parts": [{"text": "Echo: hello there"}], "role": "model"}
    assert r["candidates"][0]["finishReason"] == "STOP"
    assert r["usageMetadata"]["promptTokenCount"] == 2 and r["usageMetadata"]["totalTokenCount"] == 5
    via_query = httpx.post(f"{gemini.base_url}/models/gemini-2.5-flash:generateContent?key={gemini.api_key}",
                           json={"contents": [{"parts": [{"text": "q"}]}], "generation_config": {"max_output_tokens": 1}})
    assert via_query.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert _gen(gemini, action="countTokens").json() == {"totalTokens": 2}


def test_gemini_stream_sse_and_json_array(gemini):
    resp = _gen(gemini, action="streamGenerateContent", query="?alt=sse")
    assert resp.headers["content-type"].startswith("text/event-stream") and resp.text.endswith("}\r\n\r\n")
    chunks = [json.loads(d) for _, d in SSEDecoder().feed(resp.content)]
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Echo: hello there"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP" and chunks[-1]["usageMetadata"]["totalTokenCount"] == 5
    array = _gen(gemini, action="streamGenerateContent").json()
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in array] == ["Echo:", " hello", " there"]


def test_gemini_tools(gemini):
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}]}]
    body = {"contents": [{"role": "user", "parts": [{"text": "call get_weather city=Oslo"}]}], "tools": tools}
    part = _gen(gemini, body=body).json()["candidates"][0]["content"]["parts"][0]
    assert part == {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
    body["contents"] += [{"role": "model", "parts": [part]}, {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather", "response": {"sky": "clear"}}}]}]
    r = _gen(gemini, body=body).json()
    assert r["candidates"][0]["content"]["parts"][0]["text"] == 'Tool result: {"sky": "clear"}'
    body["contents"][-1]["parts"] *= 2
    r = _gen(gemini, body=body)
    assert r.status_code == 400 and "number of function response parts" in r.json()["error"]["message"]


def test_gemini_errors_and_faults(gemini):
    r = _gen(gemini, key="wrong")
    assert r.status_code == 400 and r.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert _gen(gemini, key="").status_code == 403
    r = _gen(gemini, model="nope")
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    r = _gen(gemini, body={"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 5}})
    assert r.status_code == 400 and 'Unknown name "max_tokens"' in r.json()["error"]["message"]
    assert _gen(gemini, body={"contents": []}).status_code == 400
    gemini.set_fault("rate_limit", times=1, retry_after=4)
    r = _gen(gemini)
    assert r.status_code == 429 and r.headers["retry-after"] == "4"
    assert r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    gemini.set_fault("overloaded", times=1)
    assert _gen(gemini).json()["error"]["status"] == "UNAVAILABLE"
    gemini.set_fault("context_window", times=1)
    assert "input token count" in _gen(gemini).json()["error"]["message"]
    gemini.set_fault("stream_error", times=1)
    chunks = [json.loads(d) for _, d in SSEDecoder().feed(
        _gen(gemini, action="streamGenerateContent", query="?alt=sse").content)]
    assert chunks[-1]["error"]["code"] == 503
    gemini.set_fault("drop_mid_stream", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        _gen(gemini, action="streamGenerateContent", query="?alt=sse")
    before = gemini.stats()["requests"]
    assert _gen(gemini).status_code == 200 and gemini.stats()["requests"] == before + 1


def test_admin_endpoints_over_http(gemini):
    gemini.reset()
    assert httpx.post(gemini.url + "/_fault", json={"mode": "error_500", "times": 2}).json() == {"ok": True}
    assert httpx.post(gemini.url + "/_fault", json={"mode": "bogus"}).status_code == 400
    assert httpx.post(gemini.url + "/_fault", json={"mode": "error_500", "times": 2}).status_code == 200
    assert [_gen(gemini).status_code for _ in range(3)] == [500, 500, 200]
    stats = httpx.get(gemini.url + "/_stats").json()
    assert stats["requests"] == 3 and stats["by_path"] == {"/v1beta/models/gemini-2.5-flash:generateContent": 3}
    assert httpx.get(gemini.url + "/_requests").json()[-1]["json"]["contents"][0]["parts"][0]["text"] == "hello there"
    httpx.post(gemini.url + "/_reset")
    assert gemini.stats()["requests"] == 0
