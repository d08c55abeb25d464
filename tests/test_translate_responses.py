"""server/translate/responses.py on recorded canonical chunks: requests, responses and stream events,
each checked against the official openai SDK's own types (pydantic models of the Responses API)."""
from __future__ import annotations

import typing

import pytest
from openai.types.responses import Response, ResponseStreamEvent

from server.translate.responses import ToResponsesStream, Untranslatable, conversation, from_chat_response, to_chat_request

# The SDK's event union, by its `type` (the SDK discriminates on it; a TypeAdapter of the bare union would not).
EVENTS = {cls.model_fields["type"].annotation.__args__[0]: cls
          for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}

# What the fake OpenAI upstream streams for "call get_weather city=Paris" with tools, then a text answer.
TOOL_CHUNKS = [
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                        "function": {"name": "get_weather", "arguments": ""}}]},
                  "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
                  "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]},
                  "finish_reason": None}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}},
]
TEXT_CHUNKS = [
    {"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Echo:"}, "finish_reason": None}]},
    {"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": " hi"}, "finish_reason": "stop"}]},
    {"id": "c2", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
     "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}},
]


def test_request_items_tools_and_instructions_become_a_chat_request():
    req = {"model": "m", "instructions": "be brief", "max_output_tokens": 50, "tools": [TOOL],
           "tool_choice": {"type": "function", "name": "get_weather"},
           "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
           "input": [{"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
                     {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                     {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]}
    chat = to_chat_request(req, history=[{"role": "user", "content": "earlier"},
                                         {"role": "assistant", "content": "ok"}])
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "earlier"},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    assert chat["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["max_tokens"] == 50
    assert chat["response_format"]["json_schema"] == {"name": "w", "schema": {"type": "object"}}


def test_builtin_tools_and_unknown_items_are_refused_by_name():
    with pytest.raises(Untranslatable, match="tools.0"):
        to_chat_request({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})
    with pytest.raises(Untranslatable, match="input.1"):
        to_chat_request({"model": "m", "input": [{"role": "user", "content": "x"}, {"type": "computer_call"}]})


def test_a_chat_completion_becomes_a_response_the_sdk_parses():
    result = {"id": "c", "model": "m", "created": 5, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}}
    out = from_chat_response(result, {"model": "m", "input": "x", "tools": [TOOL]}, "resp_1")
    parsed = Response.model_validate(out)
    assert parsed.id == "resp_1" and parsed.status == "completed" and parsed.output_text == "Let me look."
    assert parsed.output[1].type == "function_call" and parsed.output[1].call_id == "call_9"
    assert parsed.usage.input_tokens == 11 and parsed.usage.output_tokens == 4 and parsed.usage.total_tokens == 15
    history = conversation(to_chat_request({"model": "m", "instructions": "sys", "input": "x"}), out["output"])
    assert history[0] == {"role": "user", "content": "x"}
    assert history[1]["content"] == "Let me look." and history[1]["tool_calls"][0]["id"] == "call_9"


def _run(chunks, error=None):
    stream = ToResponsesStream({"model": "m", "input": "x"}, "resp_s", "m")
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
    events += stream.finish(error)
    for name, data in events:
        assert name == data["type"]
        EVENTS[name].model_validate(data)                # every event is one the SDK knows, complete
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    return [d for _, d in events], stream


def test_a_streamed_tool_call_becomes_typed_events():
    events, stream = _run(TOOL_CHUNKS)
    kinds = [e["type"] for e in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = Response.model_validate(events[-1]["response"])
    assert final.output[0].arguments == '{"city": "Paris"}' and final.output[0].name == "get_weather"
    assert final.usage.total_tokens == 10 and final.id == events[0]["response"]["id"]


def test_a_streamed_text_becomes_typed_events_and_a_failure_ends_in_response_failed():
    events, _ = _run(TEXT_CHUNKS)
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["Echo:", " hi"]
    assert Response.model_validate(events[-1]["response"]).output_text == "Echo: hi"
    events, _ = _run(TEXT_CHUNKS[:1], {"code": "stream", "message": "upstream broke"})
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error.message == "upstream broke" and failed.output_text == "Echo:"


def test_length_finish_is_an_incomplete_response():
    chunks = [dict(TEXT_CHUNKS[0]), {**TEXT_CHUNKS[1], "choices": [{"index": 0, "delta": {"content": "x"},
                                                                    "finish_reason": "length"}]}]
    events, _ = _run(chunks)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
