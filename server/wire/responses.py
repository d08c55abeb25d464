"""OpenAI Responses API wire format (POST /v1/responses): the request, as the OpenAI API reference names
its fields. Lenient like every wire model: input items and tools of kinds the gateway does not know pass
validation and are refused, by name, where they are translated (server/translate/responses.py)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from server.wire import TokenCount, Wire


class InputContentPart(Wire):                  # input_text, input_image, output_text, refusal, ...
    type: str


class InputItem(Wire):
    """A message ({"role", "content"}, `type` "message" or absent), a function_call, a
    function_call_output, or another kind (refused when translated)."""
    type: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputContentPart] | None = None


class FunctionTool(Wire):
    type: str                                  # "function"; built-in tools (web_search, ...) are refused
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(Wire):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(Wire):
    format: TextFormat | None = None


class ResponsesRequest(Wire):
    model: str
    input: str | list[InputItem] = Field(min_length=1)
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: TokenCount | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = None
    store: bool | None = None                  # default true: the conversation is kept for previous_response_id
    metadata: dict[str, str] | None = None
    text: TextConfig | None = None
    user: str | None = None
